"""ClassifierService: stored ONNX classifiers (made by training jobs) run on onnxruntime.

A classifier is a stored model with Corral's ONNX layers (server/store/manifest.py) whose config says
`task: classification` and names its labels in order. Texts are tokenized with the `tokenizers`
library from the stored tokenizer.json (cut to the model's max_length, as in training), run in batches
on onnxruntime (the CUDA execution provider where onnxruntime finds a GPU, else the CPU), and each gets
its labels ranked by softmax probability. A loaded session is kept per graph blob. Runs off the event
loop (the caller's thread); HTTP (server/api/classify.py) and the `classify` tool call it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import BadRequest
from server.store import manifest as mf
from server.store.model import find_model
from server.store.store import Entry, Store

from .training.errors import TrainingUnavailable

BATCH = 32
MAX_INPUTS = 2048  # texts in one request, as for embeddings
KEEP_LOADED = 4  # sessions kept, least recently used dropped


@dataclass
class LabelScore:
    label: str
    score: float  # softmax probability


@dataclass
class Classification:
    label: str  # the most probable label
    score: float
    labels: list[LabelScore]  # every label, most probable first


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrainingUnavailable("serving ONNX classifiers", module) from None


class OnnxClassifier:
    def __init__(self, store: Store, entry: Entry, threads: int = 0):
        ort = _require("onnxruntime")
        tokenizers = _require("tokenizers")
        m = entry.manifest
        self.config: dict[str, Any] = json.loads(store.read_blob(m.layer(mf.ONNX_CONFIG).digest))
        self.labels: list[str] = list(self.config["labels"])
        self.inputs: list[str] = list(self.config.get("inputs") or ["input_ids", "attention_mask"])
        self.tokenizer = tokenizers.Tokenizer.from_str(store.read_blob(m.layer(mf.ONNX_TOKENIZER).digest).decode())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(self.config.get("max_length") or 512))
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(store.blob_path(m.layer(mf.ONNX_MODEL).digest)),
                                            sess_options=options, providers=providers)
        self.provider = self.session.get_providers()[0]
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad if pad is not None else 0
        self._lock = threading.Lock()

    def logits(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), BATCH):
            encodings = self.tokenizer.encode_batch(texts[start:start + BATCH])
            width = max(len(e.ids) for e in encodings)
            ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(encodings), width), dtype=np.int64)
            types = np.zeros((len(encodings), width), dtype=np.int64)
            for i, e in enumerate(encodings):
                ids[i, :len(e.ids)] = e.ids
                mask[i, :len(e.ids)] = 1
                types[i, :len(e.type_ids)] = e.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out.append(self.session.run(["logits"], {n: feed[n] for n in self.inputs})[0])
        return np.concatenate(out).astype(np.float64)

    def classify(self, texts: list[str]) -> list[Classification]:
        logits = self.logits(texts)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        results = []
        for row in probs:
            ranked = sorted(((self.labels[i], float(p)) for i, p in enumerate(row)), key=lambda x: -x[1])
            results.append(Classification(ranked[0][0], ranked[0][1], [LabelScore(n, s) for n, s in ranked]))
        return results


def is_classifier(entry: Entry | None, store: Store) -> bool:
    if entry is None or entry.manifest.layer(mf.ONNX_MODEL) is None or entry.manifest.layer(mf.ONNX_CONFIG) is None:
        return False
    try:
        return json.loads(store.read_blob(entry.manifest.layer(mf.ONNX_CONFIG).digest)).get("task") == "classification"
    except (OSError, ValueError, AttributeError):
        return False


class ClassifierService:
    def __init__(self, store: Store, threads: int = 0):
        self.store = store
        self.threads = threads
        self._loaded: OrderedDict[str, OnnxClassifier] = OrderedDict()
        self._lock = threading.Lock()

    def _model(self, name: str) -> OnnxClassifier:
        entry = find_model(self.store, name).entry
        if not is_classifier(entry, self.store):
            raise BadRequest(f"model '{name}' is not a classifier (train one with POST /api/train, "
                             "task sequence-classification)")
        key = entry.manifest.layer(mf.ONNX_MODEL).digest + entry.manifest.layer(mf.ONNX_CONFIG).digest
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                model = OnnxClassifier(self.store, entry, self.threads)
                self._loaded[key] = model
                while len(self._loaded) > KEEP_LOADED:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return model

    def classify_sync(self, name: str, inputs: str | list[str]) -> list[Classification]:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise BadRequest("input is required: a string or a list of strings")
        if len(texts) > MAX_INPUTS:
            raise BadRequest(f"input holds {len(texts)} texts; at most {MAX_INPUTS} may be classified at once")
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("input must be a string or a list of strings")
        return self._model(name).classify(texts)

    async def classify(self, name: str, inputs: str | list[str]) -> list[Classification]:
        return await asyncio.to_thread(self.classify_sync, name, inputs)
