"""Corral: an Ollama-compatible server on llama.cpp."""

__version__ = "0.1.0"
