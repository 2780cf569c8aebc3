"""Widgets of the steerchat app: chat messages, the safety slider, the features panel."""
