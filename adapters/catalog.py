"""Which LoRA adapters the store holds, and the adapter set a request asks for.

An adapter is an ADAPTER layer of a stored model (a GGUF LoRA: PEFT folders are converted at create).
A request names adapters in `options.adapters` as `[{"name": ..., "scale": ...}]`, where a name is
either a stored model that has ADAPTER layers (all of its adapters, at that scale) or the digest of
an adapter layer (`sha256:<hex>`). The adapters must be made for the request's base weights: a model
with adapters counts as made for its own FROM; a layer named by digest is checked against the base
(`adapters.compat.check_adapter_fits`) once per (adapter, base).

No HTTP here: `server/api/adapters.py` translates the wire, `server/inference.py` applies the set.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine.job import AdapterSet, adapter_set
from server.errors import BadRequest, NotFound
from server.store import manifest as mf
from server.store.gguf import GGUFError, read_info
from server.store.model import Model
from server.store.names import InvalidName, ModelName
from server.store.store import Store

MAX_ADAPTERS = 16  # adapters in one request's set: each one is a matrix product per adapted tensor


@dataclass
class StoredAdapter:
    digest: str  # sha256:<hex> of the GGUF LoRA layer
    size: int
    models: list[str]  # stored models that carry it
    base: str | None  # digest of the base weights those models are FROM (None: none of them has weights)
    alpha: float | None
    architecture: str


class AdapterCatalog:
    def __init__(self, store: Store):
        self.store = store
        self._fits: dict[tuple[str, str], str | None] = {}  # (adapter, base) -> refusal or None
        self._lock = threading.Lock()

    # ---- listing -------------------------------------------------------------------------

    def stored(self) -> list[StoredAdapter]:
        """Every adapter layer in the store, with the models carrying it."""
        found: dict[str, StoredAdapter] = {}
        for entry in self.store.list():
            base = entry.manifest.layer(mf.MODEL)
            for layer in entry.manifest.all_layers(mf.ADAPTER):
                item = found.get(layer.digest)
                if item is None:
                    info = self._info(self.store.blob_path(layer.digest))
                    item = found[layer.digest] = StoredAdapter(
                        digest=layer.digest, size=layer.size, models=[], base=base.digest if base else None,
                        alpha=_float(info.get("adapter.lora.alpha")), architecture=str(info.get("general.architecture", "")))
                item.models.append(entry.name.display)
        return sorted(found.values(), key=lambda a: a.models[0])

    # ---- a request's set ------------------------------------------------------------------

    def request_set(self, base: Model, requested: Any) -> AdapterSet:
        """The model's own adapters (scale 1) plus those the request names, as one canonical set."""
        pairs: list[tuple[str, float]] = [(str(p), 1.0) for p in base.adapter_paths]
        if requested is None:
            return adapter_set(pairs)
        if not isinstance(requested, list):
            raise BadRequest('options.adapters must be a list of {"name": ..., "scale": ...}')
        if len(requested) > MAX_ADAPTERS:
            raise BadRequest(f"options.adapters names {len(requested)} adapters; at most {MAX_ADAPTERS} may be applied")
        for i, item in enumerate(requested):
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
                raise BadRequest(f'options.adapters[{i}] must be {{"name": ..., "scale": ...}} with a name')
            scale = item.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise BadRequest(f"options.adapters[{i}].scale must be a number, not {scale!r}")
            if scale < 0:
                raise BadRequest(f"options.adapters[{i}].scale must not be negative (got {scale})")
            try:
                pairs += [(path, float(scale)) for path in self.resolve(item["name"], base)]
            except NotFound as exc:  # a bad option value, not a missing route resource
                raise BadRequest(str(exc)) from exc
        return adapter_set(pairs)

    def resolve(self, name: str, base: Model) -> list[str]:
        """The adapter files a name stands for, checked against the request's base weights."""
        if base.model_path is None:
            raise BadRequest(f"model '{base.name}' has no weights to apply adapters to")
        if name.startswith(("sha256:", "sha256-")):
            digest = "sha256:" + name[7:]
            if len(digest) != 71 or not self.store.has_blob(digest):
                raise NotFound(f"adapter '{name}' not found")
            path = self.store.blob_path(digest)
            self._check_fits(path, digest, base)
            return [str(path)]
        try:
            entry = self.store.find(ModelName.parse(name))
        except InvalidName as exc:
            raise BadRequest(f"adapter name '{name}': {exc}") from exc
        if entry is None:
            raise NotFound(f"adapter '{name}' not found")
        adapter_model = Model(self.store, entry)
        if not adapter_model.adapter_paths:
            raise BadRequest(f"model '{name}' has no LoRA adapter to apply")
        if adapter_model.model_path != base.model_path:
            raise BadRequest(f"the adapters of '{name}' were made for other base weights than '{base.name}'s")
        return [str(p) for p in adapter_model.adapter_paths]

    def _check_fits(self, adapter: Path, digest: str, base: Model) -> None:
        key = (digest, str(base.model_path))
        with self._lock:
            known = key in self._fits
            refusal = self._fits.get(key)
        if not known:
            refusal = self._fit_refusal(adapter, base.model_path)
            with self._lock:
                self._fits[key] = refusal
        if refusal:
            raise BadRequest(f"adapter {digest} does not fit model '{base.name}': {refusal}")

    def _fit_refusal(self, adapter: Path, base_path: Path) -> str | None:
        info = self._info(adapter)
        if info.get("general.type") != "adapter" or info.get("adapter.type") != "lora":
            return "it is not a GGUF LoRA adapter"
        from adapters.compat import check_adapter_fits

        try:
            check_adapter_fits(adapter, base_path)
        except BadRequest as exc:
            return str(exc)
        return None

    @staticmethod
    def _info(path: Path) -> dict[str, Any]:
        try:
            return read_info(str(path)).kv
        except (GGUFError, OSError):
            return {}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
