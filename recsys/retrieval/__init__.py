"""Two-tower retrieval model, its training loop and the ANN index."""
