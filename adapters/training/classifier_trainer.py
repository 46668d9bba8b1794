"""Sequence classifiers trained with LoRA, merged, exported to ONNX and stored as models.

As in the course material: a BERT-family encoder from a Hugging Face folder, a new classification head,
LoRA (r 16, alpha 32, dropout 0.1) on the attention's query and value layers, the head trained in full
(peft's SEQ_CLS task keeps it as a module to save). Accuracy and macro-F1 on the held-out share are
measured before training (the untrained head) and after; then the adapter is merged, the model exported
to ONNX (onnx_export.py, checked against PyTorch) and stored under the job's model name, where
`/api/classify` and the `classify` tool serve it on onnxruntime.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from server.retrieval.onnx_export import register_onnx

from . import dataset as ds
from . import onnx_export
from .errors import TrainingError, require
from .jobs import Job
from .loop import StepOutput, TrainLoop
from .runner import JobContext
from .spec import TrainSpec
from .workspace import Workspace, save_adapter

log = logging.getLogger("corral.training")


def macro_f1(truth: list[int], predicted: list[int]) -> float:
    """The mean of per-label F1 over the labels that occur in either list (scikit-learn's macro)."""
    labels = sorted(set(truth) | set(predicted))
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted) if t == label and p != label)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def train_classifier(job: Job, ctx: JobContext, ws: Workspace) -> dict[str, Any]:
    torch = require("torch", "training a classifier")
    transformers = require("transformers", "training a classifier")
    peft = require("peft", "training a classifier")
    spec = TrainSpec.from_dict(job.spec["spec"])
    resolved = job.spec["resolved"]
    labels: list[str] = resolved["labels"]
    t = spec.training

    ctx.emit("reading dataset")
    records, _ = ds.read_labelled(ctx.directory / "dataset.jsonl", labels)
    train, held = ds.split(records, t.eval_split, t.seed)
    index = {name: i for i, name in enumerate(labels)}
    ctx.check()

    ctx.emit("loading base model")
    hf_dir = resolved["hf_dir"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError("the base's tokenizer has no fast (tokenizer.json) form, which serving needs")
    torch.manual_seed(t.seed)  # the new head's and the LoRA matrices' initial values
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        hf_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index,
        ignore_mismatched_sizes=True, local_files_only=True, attn_implementation="eager")
    model.to(ws.device)
    max_length = min(t.max_seq_length, int(getattr(model.config, "max_position_embeddings", 512) or 512))

    def encode(items: list[ds.LabelledText]) -> list[list[int]]:
        return tokenizer([x.text for x in items], truncation=True, max_length=max_length)["input_ids"]

    train_ids, held_ids = encode(train), encode(held)
    train_y = [index[x.label] for x in train]
    measured_on = held if held else train
    measured_ids, measured_y = (held_ids, [index[x.label] for x in held]) if held else (train_ids, train_y)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch(rows: list[list[int]]) -> dict[str, Any]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return {"input_ids": ids.to(ws.device), "attention_mask": mask.to(ws.device)}

    def step(indices: list[int]) -> StepOutput:
        enc = batch([train_ids[i] for i in indices])
        y = torch.tensor([train_y[i] for i in indices], device=ws.device)
        out = model(**enc, labels=y)
        return StepOutput(out.loss, int(enc["attention_mask"].sum()))

    def evaluate() -> dict[str, float]:
        predicted, loss_sum = [], 0.0
        for start in range(0, len(measured_ids), 64):
            ctx.check()
            enc = batch(measured_ids[start:start + 64])
            y = torch.tensor(measured_y[start:start + 64], device=ws.device)
            out = model(**enc, labels=y)
            loss_sum += float(out.loss) * len(y)
            predicted += out.logits.argmax(-1).tolist()
        accuracy = sum(1 for a, b in zip(predicted, measured_y) if a == b) / len(measured_y)
        return {"eval_loss": round(loss_sum / len(measured_y), 6), "accuracy": round(accuracy, 6),
                "f1": round(macro_f1(measured_y, predicted), 6)}

    ctx.emit("evaluating base model")
    model.eval()
    with torch.no_grad():
        before = evaluate()
    ctx.emit("evaluating base model", **before)

    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=spec.lora.r, lora_alpha=spec.lora.lora_alpha,
                             lora_dropout=spec.lora.lora_dropout, target_modules=resolved["target_modules"],
                             use_rslora=spec.lora.use_rslora, bias="none")
    model = peft.get_peft_model(model, config)
    loop = TrainLoop(ctx, model, t, len(train_ids), step, evaluate, ctx.directory / "checkpoints")
    trained = loop.run()
    after = trained["evaluations"][-1] if trained["evaluations"] else {}
    ctx.check()

    ctx.emit("saving adapter")
    adapter_dir = save_adapter(model, ctx.directory)
    ctx.emit("merging adapter")
    merged = model.merge_and_unload()
    merged.to("cpu").eval()
    ctx.emit("exporting to ONNX")
    out_dir = ctx.directory / "onnx"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    graph = out_dir / "model.onnx"
    inputs = onnx_export.export(merged, tokenizer, graph)
    texts = [x.text for x in measured_on]
    ctx.emit("checking ONNX against PyTorch")
    diff = onnx_export.verify(graph, merged, tokenizer, inputs, texts, max_length)
    ctx.check()

    ctx.emit("creating model")
    ws.ensure_name_free(spec.model)
    arch = (merged.config.architectures or [merged.config.model_type])[0]
    config_json = {"task": "classification", "labels": labels, "inputs": inputs, "output": "logits",
                   "max_length": max_length, "pooling": "none", "normalize": False, "dimensions": 0,
                   "architecture": arch, "problem_type": "single_label_classification"}
    params = sum(p.numel() for p in merged.parameters())
    register_onnx(ws.store, spec.model, graph, tokenizer.backend_tokenizer.to_str().encode(), config_json,
                  family=merged.config.model_type, parameters=params)
    return {"model": spec.model, "task": spec.task, "labels": labels, "before": before,
            "after": {k: after[k] for k in ("eval_loss", "accuracy", "f1") if k in after},
            "evaluated_on": "held-out" if held else "training", "held_out": len(held), "trained_on": len(train),
            "steps": trained["steps"], "loss": trained["loss"], "first_loss": trained["first_loss"],
            "onnx_max_abs_diff": diff, "onnx_tolerance": onnx_export.TOLERANCE, "adapter_dir": str(adapter_dir)}

