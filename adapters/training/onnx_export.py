"""A merged sequence classifier exported to ONNX with torch.onnx, checked against PyTorch, and stored.

The graph takes the tokenizer's inputs (`input_ids`, `attention_mask` and, where the model has them,
`token_type_ids`; batch and sequence dynamic) and returns the logits. The exported graph is run on
onnxruntime over the held-out texts and its logits compared with the PyTorch model's: the export fails
unless they agree within TOLERANCE (absolute, on logits).

Stored as an ordinary model with Corral's ONNX layers (server/store/manifest.py): the graph, the
tokenizer (tokenizer.json) and a config whose task is `classification`, with the label names in order.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TrainingError, require

TOLERANCE = 1e-4  # the largest difference allowed between ONNX and PyTorch logits
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def model_inputs(model: Any, tokenizer: Any) -> list[str]:
    """The inputs the tokenizer gives and the model's forward takes, in INPUTS' order."""
    sample = tokenizer(["a"], return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    return [n for n in INPUTS if n in sample and n in accepted]


def export(model: Any, tokenizer: Any, path: Path) -> list[str]:
    """Write the classifier's graph to `path`; the names of its inputs."""
    torch = require("torch", "exporting a classifier to ONNX")
    inputs = model_inputs(model, tokenizer)
    sample = tokenizer(["a short text", "and a somewhat longer second text"], padding=True, return_tensors="pt")

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(inputs, args))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes["logits"] = {0: "batch"}
    model.eval()
    if hasattr(model, "set_attn_implementation"):
        # SDPA's mask handling has branches on shapes that tracing would freeze at the sample's: eager has none
        model.set_attn_implementation("eager")
    with torch.no_grad():
        # in eval mode: the exporter puts the module back in the mode it found it in, with its children
        torch.onnx.export(Logits(model).eval(), tuple(sample[n] for n in inputs), str(path), input_names=inputs,
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return inputs


def torch_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch: int = 32) -> np.ndarray:
    torch = require("torch", "exporting a classifier to ONNX")
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            out.append(model(**enc).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def onnx_logits(path: Path, tokenizer: Any, inputs: list[str], texts: list[str], max_length: int,
                batch: int = 32) -> np.ndarray:
    ort = require("onnxruntime", "checking an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], truncation=True, max_length=max_length, padding=True,
                        return_tensors="np")
        out.append(session.run(["logits"], {n: enc[n].astype(np.int64) for n in inputs})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def verify(path: Path, model: Any, tokenizer: Any, inputs: list[str], texts: list[str], max_length: int) -> float:
    """The largest absolute difference between ONNX and PyTorch logits over `texts`; TrainingError
    when it is above TOLERANCE."""
    ours = onnx_logits(path, tokenizer, inputs, texts, max_length)
    theirs = torch_logits(model, tokenizer, texts, max_length)
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    if not diff <= TOLERANCE:
        raise TrainingError(f"the ONNX export differs from the PyTorch model by {diff:.3g} (more than {TOLERANCE:g})")
    return diff
