"""Corral adapters (later issues)."""
