"""Turn a GGUF file into a stored model: model blob, config blob, optional text layers, manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from . import manifest as mf
from .gguf import FILE_TYPES, GGUFInfo, read_info
from .store import Entry, Store


def format_count(n: int) -> str:
    """A parameter count the way Ollama prints it: 268.10M, 8.0B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "M" else f"{n / size:.1f}{unit}"
    return str(n)


def config_layer(store: Store, info: GGUFInfo, parent: str = "") -> mf.Layer:
    """Write the config blob describing a GGUF model."""
    arch = info.architecture
    config = mf.ModelConfig(
        model_format="gguf",
        model_family=arch,
        model_families=[arch] if arch else None,
        model_type=format_count(info.parameter_count),
        file_type=FILE_TYPES.get(info.kv.get("general.file_type", -1), ""),
        parent_model=parent,
    )
    return store.write_blob_bytes(msgspec.json.encode(config), mf.CONFIG_MEDIA_TYPE)


def register_gguf(
    store: Store,
    name: str,
    path: str | Path,
    *,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    messages: list[dict] | None = None,
    expected: str | None = None,
    move: bool = False,
) -> Entry:
    """Store a GGUF file as model `name` (checked to be a GGUF first; nothing written otherwise)."""
    info = read_info(str(path))
    model = store.import_file(path, expected=expected, move=move)
    layers = [mf.Layer(mediaType=mf.MODEL, digest=model.digest, size=model.size)]
    if template:
        layers.append(store.write_blob_bytes(template.encode(), mf.TEMPLATE))
    if system:
        layers.append(store.write_blob_bytes(system.encode(), mf.SYSTEM))
    if parameters:
        layers.append(store.write_blob_bytes(json.dumps(parameters).encode(), mf.PARAMS))
    if messages:
        layers.append(store.write_blob_bytes(json.dumps(messages).encode(), mf.MESSAGES))
    return store.write_manifest(name, mf.Manifest(config=config_layer(store, info), layers=layers))
