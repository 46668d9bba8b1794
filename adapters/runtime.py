"""LoRA adapters on loaded models: load one ahead of its first request, free one, list what is loaded.

A request never needs these (its adapters load on first use, server/engine/runner.py); they let an
operator warm an adapter up, or give its memory back, without unloading the base.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from server.errors import EngineError, NotFound
from server.inference import Inference


def digest_of(blob_path: str) -> str:
    """sha256:<hex> of a blob file in the store (named sha256-<hex>)."""
    return os.path.basename(blob_path).replace("sha256-", "sha256:", 1)


async def load_adapter(inference: Inference, name: str, adapter: str, keep_alive: Any = None) -> list[str]:
    """Load model `name` (when it is not) and `adapter` on its weights; the adapter layers' digests."""
    model = inference.model(name)
    paths = inference.adapters.resolve(adapter, model)
    prep = inference.prepare(model, None, keep_alive)
    async with inference.scheduler.use(model, prep.runner_options, prep.keep_alive) as loaded:
        for path in paths:
            try:
                await asyncio.wrap_future(loaded.runner.load_adapter(path))
            except (ValueError, RuntimeError) as exc:
                raise EngineError(str(exc)) from exc
    return [digest_of(p) for p in paths]


def unload_adapter(inference: Inference, name: str, adapter: str) -> list[str]:
    """Free `adapter` from loaded model `name` once no running request uses it; the digests freed."""
    model = inference.model(name)
    paths = inference.adapters.resolve(adapter, model)
    loaded = inference.scheduler.loaded.get(model.digest)
    if loaded is None:
        raise NotFound(f"model '{name}' is not loaded")
    held = set(loaded.runner.loaded_adapters())
    if not held.intersection(paths):
        raise NotFound(f"adapter '{adapter}' is not loaded on model '{name}'")
    for path in paths:
        loaded.runner.drop_adapter(path)
    return [digest_of(p) for p in paths if p in held]


def loaded_adapters(inference: Inference) -> dict[str, list[str]]:
    """Adapter layer digest -> the loaded models whose runner holds it."""
    held: dict[str, list[str]] = {}
    for loaded in inference.scheduler.running():
        for path in loaded.runner.loaded_adapters():
            held.setdefault(digest_of(path), []).append(loaded.name)
    return held
