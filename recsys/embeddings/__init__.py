"""open_clip encoder, catalogue fine-tuning, fusion and the backfill of item vectors."""
