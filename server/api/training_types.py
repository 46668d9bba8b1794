"""Wire types of Corral's training and classification routes (server/api/train.py, server/api/classify.py),
documented once. Requests are decoded strictly: a wrong type or an unknown field is a 400 naming it (a
misspelt setting would otherwise train with its default)."""

from __future__ import annotations

from typing import Any

import msgspec

# ---- POST /api/train ----------------------------------------------------------------------------------


class LoraRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    r: int | None = None  # LoRA rank (default 16)
    lora_alpha: float | None = None  # scale numerator (default 2 r)
    lora_dropout: float | None = None  # default 0.05 (causal LM), 0.1 (classifier)
    target_modules: list[str] | None = None  # layer names; default every linear layer (LM), query/value (classifier)
    use_rslora: bool = False  # rank-stabilised scale alpha / sqrt(r)


class TrainingRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    epochs: float | None = None  # passes over the training share (default 1)
    max_steps: int | None = None  # optimizer steps; overrides epochs
    learning_rate: float | None = None  # default 2e-4 (LM), 5e-4 (classifier)
    lr_scheduler: str = "linear"  # linear | cosine | constant (after warmup)
    warmup_ratio: float = 0.0  # share of the steps spent warming up
    warmup_steps: int = 0  # warmup in steps (wins over warmup_ratio)
    batch_size: int | None = None  # examples per micro-batch (default 4 LM, 16 classifier)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_seq_length: int | None = None  # tokens per example or packed sequence (default 512 LM, 128 classifier)
    packing: bool = False  # LM: whole examples packed together into sequences of max_seq_length
    seed: int = 0  # data order, held-out share, initialisation, dropout
    eval_split: float | None = None  # held-out share (default 0.1 LM, 0.2 classifier); 0: no evaluation
    eval_steps: int | None = None  # evaluate every this many steps (default: at the end)
    save_steps: int = 50  # checkpoint every this many steps (and at the end)
    weight_decay: float = 0.0  # AdamW's
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off


class TrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str = ""  # the name of the model the job creates (must be free)
    dataset: str = ""  # `sha256:<hex>` of a JSONL blob uploaded with POST /api/blobs, or an allowed server path
    task: str = "causal-lm"  # causal-lm | sequence-classification
    from_: str = msgspec.field(default="", name="from")  # LM: the stored GGUF model the adapter is for
    base: str = ""  # an HF folder on the server (or a local HF cache entry `org/name`): the weights trained
    lora: LoraRequest | None = None  # LoRA settings
    training: TrainingRequest | None = None  # training settings
    output: str = "adapter"  # LM: adapter (FROM the base + ADAPTER) | merged (one standalone GGUF)
    quantize: str = ""  # merged output: q4_K_M | q8_0 (default F16)
    qlora: bool = False  # 4-bit NF4 base through bitsandbytes (CUDA only)
    labels: list[str] | None = None  # classifier: label names in order (default: those in the data, sorted)
    stream: bool | None = None  # true (default): progress as NDJSON until the job ends; false: the job at once


class TrainProgress(msgspec.Struct, omit_defaults=True):
    """One NDJSON line of a job's progress (the last one is `status: success`/`cancelled`, or `error`)."""

    status: str | None = None  # queued, running, loading base model, training, creating model, success, …
    id: str | None = None  # the job's id (on its first line)
    model: str | None = None  # the model the job creates (first line) or created (success)
    device: str | None = None  # cpu | cuda (the running line)
    step: int | None = None  # optimizer steps done
    total: int | None = None  # optimizer steps in all
    completed: int | None = None  # = step, for pull-style progress bars
    epoch: float | None = None  # epochs done (fractional)
    loss: float | None = None  # the step's training loss
    eval_loss: float | None = None  # loss on the held-out share (evaluation lines)
    accuracy: float | None = None  # classifier: held-out accuracy (evaluation lines)
    f1: float | None = None  # classifier: held-out macro-F1 (evaluation lines)
    learning_rate: float | None = None  # the rate the step used
    tokens_per_second: float | None = None  # training tokens (without padding) per second
    eta_seconds: float | None = None  # estimated time to the last step
    result: dict[str, Any] | None = None  # success: the job's result (as GET /api/train/<id> gives it)
    error: str | None = None  # the job failed: why (the last line)


class TrainJob(msgspec.Struct, omit_defaults=True):
    id: str  # train-<16 hex digits>
    model: str  # the model the job creates
    task: str  # causal-lm | sequence-classification
    status: str  # queued | running | succeeded | failed | cancelled
    created_at: str  # ISO 8601, UTC
    updated_at: str
    request: dict[str, Any]  # the settings it runs with, defaults filled in
    progress: dict[str, Any]  # its latest progress line
    result: dict[str, Any] | None = None  # succeeded: metrics, steps, losses, the adapter's digest, …
    error: str | None = None  # failed: why


class TrainJobList(msgspec.Struct):
    jobs: list[TrainJob]  # newest first


# ---- POST /api/classify ---------------------------------------------------------------------------------


class ClassifyRequest(msgspec.Struct):
    model: str = ""  # a stored classifier (made by a sequence-classification training job)
    input: str | list[str] | None = None  # one text or several (at most 2,048)


class LabelScore(msgspec.Struct):
    label: str
    score: float  # softmax probability


class Classification(msgspec.Struct):
    label: str  # the most probable label
    score: float  # its probability
    labels: list[LabelScore]  # every label, most probable first


class ClassifyResponse(msgspec.Struct):
    model: str
    results: list[Classification]  # one per input, in order
