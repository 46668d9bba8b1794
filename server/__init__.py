"""Corral: an Ollama-compatible server on llama.cpp."""

__version__ = "0.1.0"

# The Ollama release whose API behaviour Corral implements (the wire facts in
# shared/reference/ollama-api.md were read from Ollama's v0.32.15 tree). `/api/version` reports this, not
# Corral's own version: clients gate features on it (GitHub Copilot Chat's Ollama provider refuses a
# server below 0.6.4). Corral's own version goes in /api/version's extra `corral` field, the
# `X-Corral-Version` response header and `corral --version`.
OLLAMA_API_VERSION = "0.32.15"
