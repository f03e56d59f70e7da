"""recsys: multimodal recommendation system library."""
