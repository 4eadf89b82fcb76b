"""Thin entry points wiring configs to stages, pathoclip and evaluation. Nothing imports recipes."""
