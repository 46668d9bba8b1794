"""Corral agents (later issues)."""
