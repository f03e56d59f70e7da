"""features application."""
