"""Ranking metrics, off-policy estimators and the offline A/B report."""
