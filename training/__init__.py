"""training application."""
