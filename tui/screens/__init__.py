"""Screens of the steerchat app: loading, chat list, why-refused, settings."""
