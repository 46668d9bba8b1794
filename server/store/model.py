"""A stored model, resolved: its GGUF file, template, parameters and what it can do."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadRequest, NotFound
from . import manifest as mf
from .gguf import FILE_TYPES, GGUFInfo, read_info
from .names import InvalidName, ModelName
from .store import Entry, Store

POOLING_RANK = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker's `<arch>.pooling_type`


def find_model(store: Store, name: str) -> "Model":
    """The stored model a request names: no name or an invalid one 400, an unknown one 404."""
    if not name:
        raise BadRequest("model is required")
    try:
        entry = store.find(ModelName.parse(name))
    except InvalidName as exc:
        raise BadRequest(str(exc)) from exc
    if entry is None:
        raise NotFound(f"model '{name}' not found")
    return Model(store, entry)


@dataclass
class Model:
    store: Store
    entry: Entry

    @property
    def name(self) -> str:
        return self.entry.name.display

    @property
    def digest(self) -> str:
        return self.entry.digest

    @property
    def manifest(self) -> mf.Manifest:
        return self.entry.manifest

    def _text(self, media_type: str) -> str | None:
        layer = self.manifest.layer(media_type)
        return None if layer is None else self.store.read_blob(layer.digest).decode("utf-8")

    @functools.cached_property
    def model_path(self) -> Path | None:
        layer = self.manifest.layer(mf.MODEL)
        return None if layer is None else self.store.blob_path(layer.digest)

    @functools.cached_property
    def adapter_paths(self) -> list[Path]:
        return [self.store.blob_path(layer.digest) for layer in self.manifest.all_layers(mf.ADAPTER)]

    @functools.cached_property
    def projector_path(self) -> Path | None:
        layer = self.manifest.layer(mf.PROJECTOR)
        return None if layer is None else self.store.blob_path(layer.digest)

    @functools.cached_property
    def diffusers_index(self) -> dict | None:
        """A diffusion pipeline's file index (server/imaging/store.py); None for every other model."""
        text = self._text(mf.DIFFUSERS_INDEX)
        return json.loads(text) if text else None

    @functools.cached_property
    def template(self) -> str | None:
        """The Go text/template from the template layer (Modelfile TEMPLATE / registry models)."""
        return self._text(mf.TEMPLATE)

    @functools.cached_property
    def system(self) -> str | None:
        return self._text(mf.SYSTEM)

    @functools.cached_property
    def license(self) -> list[str]:
        return [self.store.read_blob(layer.digest).decode("utf-8") for layer in self.manifest.all_layers(mf.LICENSE)]

    @functools.cached_property
    def parameters(self) -> dict[str, Any]:
        text = self._text(mf.PARAMS)
        return json.loads(text) if text else {}

    @functools.cached_property
    def messages(self) -> list[dict]:
        text = self._text(mf.MESSAGES)
        return json.loads(text) if text else []

    @functools.cached_property
    def config(self) -> mf.ModelConfig:
        if self.manifest.config is None or not self.store.has_blob(self.manifest.config.digest):
            return mf.ModelConfig()
        import msgspec

        try:
            return msgspec.json.decode(self.store.read_blob(self.manifest.config.digest), type=mf.ModelConfig)
        except msgspec.DecodeError:
            return mf.ModelConfig()

    @functools.cached_property
    def gguf(self) -> GGUFInfo:
        if self.model_path is None:
            return GGUFInfo(version=0, tensor_count=0)
        return _cached_info(str(self.model_path))

    @property
    def architecture(self) -> str:
        return self.gguf.architecture

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped inside the GGUF, if any."""
        value = self.gguf.kv.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None

    @property
    def is_reranker(self) -> bool:
        """Whether llama.cpp rank-pools this GGUF (`<arch>.pooling_type` = LLAMA_POOLING_TYPE_RANK):
        a reranker, scored pair by pair (server/engine/ranker.py)."""
        try:
            return int(self.gguf.arch_value("pooling_type")) == POOLING_RANK
        except (TypeError, ValueError):
            return False

    @property
    def context_length(self) -> int:
        return int(self.gguf.arch_value("context_length", 0) or 0)

    def details(self) -> dict[str, Any]:
        cfg = self.config
        family = cfg.model_family or self.architecture
        families = cfg.model_families or ([family] if family else None)
        ftype = self.gguf.kv.get("general.file_type")
        return {
            "parent_model": cfg.parent_model,
            "format": cfg.model_format or "gguf",
            "family": family,
            "families": families,
            "parameter_size": cfg.model_type or str(self.gguf.kv.get("general.size_label", "")),
            "quantization_level": cfg.file_type or FILE_TYPES.get(ftype, "") if ftype is not None else cfg.file_type,
        }

    @functools.cached_property
    def has_fim_tokens(self) -> bool:
        """Whether llama.cpp finds fill-in-the-middle tokens (prefix, suffix, middle) in this
        vocabulary: its own detection, from a vocabulary-only load cached per blob, so this agrees
        with the prompt `Inference._fim_tokens` builds from the loaded model's `fim`."""
        if self.model_path is None:
            return False
        from ..engine.llama import fim_token_ids  # llama.cpp is loaded only when asked

        fim = fim_token_ids(str(self.model_path))
        return fim is not None and min(fim["pre"], fim["suf"], fim["mid"]) >= 0

    def capabilities(self) -> list[str]:
        """Computed like Ollama: a pooling type means an embedding model; the template decides the rest."""
        if self.manifest.layer(mf.ONNX_MODEL) is not None:  # Corral's ONNX exports (server/retrieval)
            return ["embedding"] if json.loads(self._text(mf.ONNX_CONFIG) or "{}").get("task") == "embedding" else []
        if self.diffusers_index is not None:
            return ["image"]  # a diffusion pipeline (Ollama's image-generation capability)
        if self.is_reranker:  # scores pairs on /rerank: no Ollama capability, as an ONNX reranker
            return []
        if self.gguf.arch_value("pooling_type") is not None:
            return ["embedding"]
        caps = ["completion"]
        go = self.template or ""
        jinja = self.chat_template or ""
        if ".Tools" in go or (not go and "tools" in jinja):
            caps.append("tools")
        if ".Suffix" in go or self.has_fim_tokens:
            caps.append("insert")
        if self.projector_path is not None:
            caps.append("vision")
        if ".Think" in go or (not go and "<think>" in jinja):
            caps.append("thinking")
        return caps


@functools.lru_cache(maxsize=64)
def _cached_info(path: str) -> GGUFInfo:
    return read_info(path)
