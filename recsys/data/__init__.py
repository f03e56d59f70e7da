"""Data contracts, readers and writers, the embedded world, imports and splits."""
