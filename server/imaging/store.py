"""Diffusion pipelines in the model store: a diffusers folder's files as layers, and the folder again.

A pipeline model's manifest has one DIFFUSERS_FILE layer per file of the folder and a DIFFUSERS_INDEX
layer (`{"files": {relpath: digest}, "variant": "pytorch" | "onnx"}`) saying where each goes; LoRA
files for it are DIFFUSION_LORA layers. So `/api/tags`, `/api/show`, copy, delete and the blob
bookkeeping treat a pipeline as any model. Two create forms (`/api/create`, `corral create`):

* `{"model": NAME, "files": {"model_index.json": "sha256:…", "unet/config.json": …, …}}`: a diffusers
  folder whose files were uploaded to /api/blobs (`corral create NAME --diffusers DIR` does this);
* `{"model": NAME, "from": IMAGE_MODEL, "adapters": {"style.safetensors": "sha256:…"}}`: the image
  model plus LoRA layers (`corral create NAME --from IMAGE_MODEL --diffusers-lora FILE`); a request
  names it as an adapter (`"adapters": [{"name": NAME, "scale": 0.8}]`) or as its model.

Weights must be safetensors (or ONNX): pickled checkpoints (`.bin`, `.ckpt`, `.pt`) run code when
loaded and are refused. To load, `folder_for` rebuilds the folder under `<data dir>/imaging/pipelines/
<index digest>` as hard links (or symlinks) to the blobs (made in a temporary folder, then renamed into place);
`prune_folders` removes the folder once its index blob is gone (no model uses the pipeline any more).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..store import manifest as mf
from ..store.model import Model
from ..store.names import InvalidName, ModelName
from ..store.store import Entry, InvalidDigest, Store, parse_digest

PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def is_image_entry(entry: Entry | None) -> bool:
    return entry is not None and entry.manifest.layer(mf.DIFFUSERS_INDEX) is not None


def handles(store: Store, files: dict[str, str], from_: str) -> bool:
    """Whether a create request is one of this module's forms (else it is a GGUF create)."""
    if "model_index.json" in files:
        return True
    if from_ and not files and not from_.startswith("@"):
        try:
            return is_image_entry(store.find(ModelName.parse(from_)))
        except InvalidName:
            return False
    return False


def _relpath(path: str) -> str:
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or ":" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise BadRequest(f"file path must be relative: {path}")
    if path.lower().endswith(PICKLED):
        raise BadRequest(f"{path}: pickled weights are refused (they run code when loaded); "
                         "save the pipeline with safe_serialization=True")
    return path


def _blob(store: Store, relpath: str, digest: str) -> str:
    try:
        canonical = parse_digest(digest)
    except InvalidDigest:
        raise BadRequest(f"invalid digest for {relpath}: {digest!r}") from None
    if not store.has_blob(canonical):
        raise BadRequest(f"blob for {relpath} not found: {canonical} (upload it to /api/blobs first)")
    return canonical


def check_pipeline_files(store: Store, files: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """({relpath: digest}, model_index) of a diffusers folder's uploaded files, or BadRequest."""
    resolved = {_relpath(rel): _blob(store, rel, digest) for rel, digest in sorted(files.items())}
    try:
        index = json.loads(store.read_blob(resolved["model_index.json"]))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("model_index.json is not valid JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise BadRequest("model_index.json has no _class_name: not a diffusers pipeline")
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        if not any(rel.startswith(component + "/") for rel in resolved):
            raise BadRequest(f"model_index.json names the component {component!r} but no {component}/ files were given")
    try:
        import diffusers
    except ImportError:
        diffusers = None
    if diffusers is not None and not hasattr(diffusers, index["_class_name"]):
        raise BadRequest(f"unknown pipeline class {index['_class_name']!r} (diffusers {diffusers.__version__})")
    return resolved, index


def check_lora(path: Path, name: str) -> None:
    """A safetensors file whose tensors are LoRA weights (its header only is read)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        raise BadRequest(f"{name} is not a safetensors file") from None
    keys = [k for k in header if k != "__metadata__"]
    if not any("lora" in k.lower() for k in keys):
        raise BadRequest(f"{name} holds no LoRA weights (no lora_A/lora_B/lora_up/lora_down tensors)")


async def create(store: Store, name: str, files: dict[str, str], from_: str, adapters: dict[str, str],
                 parameters: dict[str, Any] | None) -> AsyncIterator[dict]:
    """Validate (before the first item), then write the layers and the manifest; Ollama's progress."""
    try:
        target = ModelName.parse(name)
    except InvalidName:
        raise BadRequest(f"invalid model name {name!r}") from None
    layers: list[mf.Layer] = []
    config: dict[str, Any] = {}
    if "model_index.json" in files:
        resolved, index = await asyncio.to_thread(check_pipeline_files, store, files)
        for rel, digest in resolved.items():
            layers.append(mf.Layer(mediaType=mf.DIFFUSERS_FILE, digest=digest,
                                   size=store.blob_path(digest).stat().st_size))
        variant = "onnx" if index["_class_name"].startswith("Onnx") else "pytorch"
        layers.append(store.write_blob_bytes(json.dumps({"files": resolved, "variant": variant}).encode(),
                                             mf.DIFFUSERS_INDEX))
        config = {"model_format": "diffusers" if variant == "pytorch" else "onnx",
                  "model_family": index["_class_name"], "model_families": [index["_class_name"]]}
    else:
        base = store.get(from_)
        if not is_image_entry(base):
            raise BadRequest(f"{from_} is not an image model")
        layers = [mf.Layer(mediaType=x.mediaType, digest=x.digest, size=x.size) for x in base.manifest.layers if not (adapters and x.mediaType == mf.DIFFUSION_LORA)]
        if base.manifest.config is not None and store.has_blob(base.manifest.config.digest):
            config = json.loads(store.read_blob(base.manifest.config.digest))
        config["parent_model"] = base.name.display
    for rel, digest in sorted((adapters or {}).items()):
        canonical = _blob(store, rel, digest)
        await asyncio.to_thread(check_lora, store.blob_path(canonical), rel)
        layers.append(mf.Layer(mediaType=mf.DIFFUSION_LORA, digest=canonical,
                               size=store.blob_path(canonical).stat().st_size))
    if parameters:
        layers = [x for x in layers if x.mediaType != mf.PARAMS]
        layers.append(store.write_blob_bytes(json.dumps(parameters).encode(), mf.PARAMS))

    yield {"status": "parsing model_index.json" if "model_index.json" in files else f"using {from_}"}
    for layer in layers:
        yield {"status": f"using layer {layer.digest}"}
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    config["rootfs"] = {"type": "layers", "diff_ids": [x.digest for x in layers]}
    config_layer = store.write_blob_bytes(json.dumps(config).encode(), mf.CONFIG_MEDIA_TYPE)
    yield {"status": "writing manifest"}
    manifest = mf.Manifest(config=config_layer, layers=layers)
    replaced = store.find(target)
    store.write_manifest(target, manifest)
    if replaced is not None and not store.noprune():
        stale = set(replaced.manifest.digests()) - set(manifest.digests())
        if stale:
            await asyncio.to_thread(store.remove_unused, stale)
    yield {"status": "success"}


def pipeline_model(model: Model) -> Model:
    """The pipeline a model is served by: its layers without LoRA and parameters, named after the index
    layer's digest, so a base model and every LoRA model made from it share one loaded pipeline."""
    index = model.manifest.layer(mf.DIFFUSERS_INDEX)
    if index is None:
        raise BadRequest(f'"{model.name}" does not support image generation')
    layers = [x for x in model.manifest.layers if x.mediaType not in (mf.DIFFUSION_LORA, mf.PARAMS)]
    entry = replace(model.entry, manifest=mf.Manifest(config=model.manifest.config, layers=layers),
                    digest=index.digest.removeprefix("sha256:"))
    return Model(model.store, entry)


def folder_for(model: Model, root: Path) -> Path:
    """The model's diffusers folder (links to its blobs), built once per index."""
    index = model.diffusers_index or {}
    folder = Path(root) / model.digest
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        for rel, digest in index.get("files", {}).items():
            _relpath(rel)  # an index is written by create; still, no path leaves the folder
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            # a hard link where the store is on the same filesystem (onnxruntime refuses external weight
            # files that resolve outside the model's folder, as a symlink into blobs/ does), else a symlink
            try:
                os.link(model.store.blob_path(digest), dst)
            except OSError:
                os.symlink(model.store.blob_path(digest), dst)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def prune_folders(store: Store, root: Path, removed: list[str] | None = None) -> list[str]:
    """Remove the pipeline folders whose index blob the store no longer has (no stored model uses that
    pipeline any more): only those of `removed` (digests `Store.remove_unused` just removed), or, without
    it, every one under `root` (at start, for models deleted while no server ran). The folders hold hard
    links to the blobs, so until they go the disk space stays taken. A pipeline still loaded from one keeps
    running: its open files stay readable. Returns the folder names removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    if removed is None:
        names = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    else:
        names = [d.removeprefix("sha256:") for d in removed]
    gone = []
    for name in names:
        folder = root / name
        if len(name) != 64 or not folder.is_dir() or store.has_blob("sha256:" + name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        gone.append(name)
    return gone


def lora_layers(model: Model) -> list[mf.Layer]:
    return model.manifest.all_layers(mf.DIFFUSION_LORA)
