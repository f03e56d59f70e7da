"""Ranker feature assembly and LightGBM lambdarank."""
