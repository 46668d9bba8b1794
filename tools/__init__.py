"""Corral tools (later issues)."""
