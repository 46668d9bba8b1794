"""The adapters of a create request → checked GGUF LoRA blobs (what server/create.py calls).

Clients send an ADAPTER as uploaded blobs named by relative path (`adapters: {path: digest}`). Ollama's
CLI sends a GGUF file under its name, and a PEFT folder as its `*.safetensors` and `*.json` files under
their base names (`adapter_config.json`, `adapter_model.safetensors`, tokenizer files beside them);
`corral create` puts each of several folders under a directory of its own (`adapter1/…`). Files are
grouped by that directory: a group with `adapter_config.json` is one PEFT adapter, converted to a GGUF
LoRA for the base model; JSON files without it (a tokenizer beside a GGUF) are ignored; every GGUF
adapter, uploaded or converted, must fit the base model. Nothing is added to the store unless every
adapter of the request converts and fits.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

from .compat import check_adapter_fits
from .errors import AdapterError
from .peft_to_gguf import CONFIG_FILE, WEIGHTS_FILE, base_params, convert_peft_files

PeftGroups = dict[str, dict[str, str]]  # folder ("" at the top) → {file name: digest}


def split_peft(entries: dict[str, str], blob_path: Callable[[str], Path]) -> tuple[PeftGroups, dict[str, str]]:
    """(the PEFT folders' files grouped by folder, the other entries): a `.json` or `.safetensors`
    file that is not a GGUF belongs to a folder; anything else is taken for a GGUF adapter."""
    groups: PeftGroups = {}
    rest: dict[str, str] = {}
    for relpath, digest in entries.items():
        path = PurePosixPath(relpath)
        if path.suffix.lower() in (".json", ".safetensors") and not _is_gguf(blob_path(digest)):
            groups.setdefault(str(path.parent) if str(path.parent) != "." else "", {})[path.name] = digest
        else:
            rest[relpath] = digest
    return {k: v for k, v in groups.items() if _is_adapter_folder(k, v)}, rest


def settle(blobs_dir: Path, import_file: Callable[[Path], str], blob_path: Callable[[str], Path],
           gguf_adapters: list[tuple[str, str]], peft: PeftGroups, base_gguf: Path) -> list[tuple[str, str]]:
    """Check every GGUF adapter against the base and convert every PEFT folder (into temporary files
    in the store's blob directory, checked the same way); only then import the converted files
    (`import_file(path) → digest`). Returns the converted adapters as [(name, digest)]."""
    for relpath, digest in gguf_adapters:
        _named(relpath, check_adapter_fits, blob_path(digest), base_gguf)
    params = base_params(base_gguf) if peft else {}
    temps: list[tuple[str, Path]] = []
    try:
        for folder in sorted(peft):
            files = peft[folder]
            name = f"{folder}/adapter.gguf" if folder else "adapter.gguf"
            fd, tmp = tempfile.mkstemp(dir=blobs_dir, prefix=".tmp-adapter-", suffix=".gguf")
            os.close(fd)
            temps.append((name, Path(tmp)))
            label = folder
            _named(label, convert_peft_files, blob_path(files[CONFIG_FILE]), blob_path(_weights(folder, files)),
                   Path(tmp), **params)
            _named(label, check_adapter_fits, Path(tmp), base_gguf)
        return [(name, import_file(tmp)) for name, tmp in temps]
    finally:
        for _, tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _is_adapter_folder(folder: str, files: dict[str, str]) -> bool:
    weights = [n for n in files if n.endswith(".safetensors")]
    if CONFIG_FILE in files:
        if not weights:
            raise AdapterError(f"{_where(folder)}{CONFIG_FILE} without {WEIGHTS_FILE}: a PEFT adapter needs both "
                               "(adapter_model.bin is not read: save with safe_serialization=True)")
        return True
    if weights:
        raise AdapterError(f"{_where(folder)}{weights[0]} without {CONFIG_FILE}: only PEFT LoRA folders "
                           "(adapter_config.json + adapter_model.safetensors) or GGUF LoRA files are adapters")
    return False  # JSON files beside a GGUF (a tokenizer): not an adapter


def _weights(folder: str, files: dict[str, str]) -> str:
    if WEIGHTS_FILE in files:
        return files[WEIGHTS_FILE]
    weights = sorted(n for n in files if n.endswith(".safetensors"))
    if len(weights) != 1:
        raise AdapterError(f"{_where(folder)}several .safetensors files and no {WEIGHTS_FILE}")
    return files[weights[0]]


def _where(folder: str) -> str:
    return f"{folder}: " if folder else ""


def _named(label: str, fn: Callable, *args, **kwargs):
    """Run fn; an AdapterError gets the adapter's name in front (a request may carry several)."""
    try:
        return fn(*args, **kwargs)
    except AdapterError as exc:
        raise AdapterError(f"adapter {label}: {exc}" if label else f"adapter: {exc}") from None


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False
