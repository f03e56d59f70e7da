"""serving application."""
