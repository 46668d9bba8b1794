"""What a training job is asked to do: the task, the base, the dataset, LoRA and training settings.

A `TrainSpec` is the domain's form of a request (HTTP's TrainRequest, the `train_adapter` tool and the
CLI all build one). `checked()` fills the defaults of its task and refuses values that cannot work, each
with a message naming the field; what needs the base model or the dataset (target modules, the HF/GGUF
match, the lines) is checked by the service before the job is queued. The spec is stored with the job
as JSON (`to_dict` / `from_dict`), so a job resumed after a restart runs with the very same settings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import TrainingError

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TASKS = (CAUSAL_LM, SEQUENCE_CLASSIFICATION)
SCHEDULERS = ("linear", "cosine", "constant")
OUTPUTS = ("adapter", "merged")
QUANTIZE = ("q4_k_m", "q8_0")


@dataclass
class LoraSettings:
    r: int | None = None  # rank (default 16)
    lora_alpha: float | None = None  # scale numerator (default 2 r: 32)
    lora_dropout: float | None = None  # default 0.05 (causal LM), 0.1 (classifier, as in the course material)
    target_modules: list[str] | None = None  # default: every linear layer (causal LM), query and value (classifier)
    use_rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r


@dataclass
class TrainingSettings:
    epochs: float | None = None  # passes over the training share (default 1; ignored when max_steps is set)
    max_steps: int | None = None  # optimizer steps; overrides epochs
    learning_rate: float | None = None  # default 2e-4 (causal LM), 5e-4 (classifier)
    lr_scheduler: str = "linear"  # linear | cosine | constant, after warmup
    warmup_ratio: float = 0.0  # share of the steps spent warming up (warmup_steps wins when set)
    warmup_steps: int = 0
    batch_size: int | None = None  # examples per micro-batch (default 4 causal LM, 16 classifier)
    gradient_accumulation_steps: int = 1
    max_seq_length: int | None = None  # tokens per example (or packed sequence): default 512 / 128
    packing: bool = False  # causal LM: several examples share one sequence of max_seq_length
    seed: int = 0  # data order, the held-out share, LoRA initialisation, dropout
    eval_split: float | None = None  # held-out share for evaluation (default 0.1 causal LM, 0.2 classifier)
    eval_steps: int | None = None  # evaluate every this many steps (default: at the end only)
    save_steps: int = 50  # write a checkpoint every this many steps (and at the end)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off


@dataclass
class TrainSpec:
    model: str  # the name of the model the job ends in
    dataset: str  # `sha256:<hex>` of an uploaded blob, or a path on the server (CORRAL_ALLOW_LOCAL_PATHS)
    task: str = CAUSAL_LM
    from_: str = ""  # causal LM: the stored GGUF model the adapter is for
    base: str = ""  # an HF folder (or a local HF cache entry `org/name`): the weights to train
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    output: str = "adapter"  # adapter: FROM the base + ADAPTER; merged: one standalone GGUF
    quantize: str = ""  # merged output: q4_K_M or q8_0 (default: F16)
    qlora: bool = False  # 4-bit NF4 base through bitsandbytes (CUDA only)
    labels: list[str] | None = None  # classifier: the label names in order (default: those in the data, sorted)

    # ---- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["from"] = out.pop("from_")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        data = dict(data)
        lora = LoraSettings(**(data.pop("lora", None) or {}))
        training = TrainingSettings(**(data.pop("training", None) or {}))
        from_ = data.pop("from", data.pop("from_", ""))
        return cls(**data, from_=from_, lora=lora, training=training)

    # ---- defaults and checks ----------------------------------------------------------------

    def checked(self) -> "TrainSpec":
        """A copy with the task's defaults filled in; TrainingError naming the first wrong field."""
        s = TrainSpec.from_dict(self.to_dict())
        if not s.model:
            raise TrainingError("model is required: the name of the model the job creates")
        if s.task not in TASKS:
            raise TrainingError(f"unknown task {s.task!r}: expected one of {', '.join(TASKS)}")
        if not s.dataset:
            raise TrainingError("dataset is required: the digest of an uploaded JSONL blob (sha256:…)")
        lm = s.task == CAUSAL_LM
        if lm and not s.from_:
            raise TrainingError("from is required: the stored GGUF model the adapter is trained for")
        if not lm:
            if not s.base:
                raise TrainingError("base is required for sequence-classification: a Hugging Face folder "
                                    "(BERT family)")
            if s.from_:
                raise TrainingError("from names a GGUF model: a classifier is trained from an HF folder (base)")
            if s.output != "adapter" or s.quantize or s.qlora:
                raise TrainingError("output, quantize and qlora apply to causal-lm jobs only (a classifier is "
                                    "merged and exported to ONNX)")
        if s.output not in OUTPUTS:
            raise TrainingError(f"unknown output {s.output!r}: expected adapter or merged")
        if s.quantize:
            if s.output != "merged":
                raise TrainingError("quantize applies to output 'merged' (an adapter is applied to its base as it is)")
            if s.quantize.lower() not in QUANTIZE:
                raise TrainingError(f"unsupported quantization type {s.quantize}: supported types are q4_K_M, q8_0")
        if s.labels is not None and not lm:
            if len(s.labels) < 2 or len(set(s.labels)) != len(s.labels) or not all(isinstance(x, str) and x
                                                                                    for x in s.labels):
                raise TrainingError("labels must be at least two distinct, non-empty names")
        elif s.labels is not None:
            raise TrainingError("labels apply to sequence-classification jobs only")

        lo, t = s.lora, s.training
        lo.r = 16 if lo.r is None else lo.r
        lo.lora_alpha = 2.0 * lo.r if lo.lora_alpha is None else lo.lora_alpha
        lo.lora_dropout = (0.05 if lm else 0.1) if lo.lora_dropout is None else lo.lora_dropout
        _int_range("lora.r", lo.r, 1, 1024)
        _number("lora.lora_alpha", lo.lora_alpha, 0.0, 1e6, low_open=True)
        _number("lora.lora_dropout", lo.lora_dropout, 0.0, 1.0, high_open=True)
        if lo.target_modules is not None:
            if not lo.target_modules or not all(isinstance(m, str) and m.strip() for m in lo.target_modules):
                raise TrainingError("lora.target_modules must be a non-empty list of module names")
        t.learning_rate = (2e-4 if lm else 5e-4) if t.learning_rate is None else t.learning_rate
        t.batch_size = (4 if lm else 16) if t.batch_size is None else t.batch_size
        t.max_seq_length = (512 if lm else 128) if t.max_seq_length is None else t.max_seq_length
        t.eval_split = (0.1 if lm else 0.2) if t.eval_split is None else t.eval_split
        if t.max_steps is None:
            t.epochs = 1.0 if t.epochs is None else t.epochs
            _number("training.epochs", t.epochs, 0.0, 10_000.0, low_open=True)
        else:
            _int_range("training.max_steps", t.max_steps, 1, 10_000_000)
        _number("training.learning_rate", t.learning_rate, 0.0, 1.0, low_open=True)
        if t.lr_scheduler not in SCHEDULERS:
            raise TrainingError(f"unknown training.lr_scheduler {t.lr_scheduler!r}: expected one of "
                                f"{', '.join(SCHEDULERS)}")
        _number("training.warmup_ratio", t.warmup_ratio, 0.0, 1.0, high_open=True)
        _int_range("training.warmup_steps", t.warmup_steps, 0, 10_000_000)
        _int_range("training.batch_size", t.batch_size, 1, 4096)
        _int_range("training.gradient_accumulation_steps", t.gradient_accumulation_steps, 1, 4096)
        _int_range("training.max_seq_length", t.max_seq_length, 8, 1 << 20)
        if t.packing and not lm:
            raise TrainingError("training.packing applies to causal-lm jobs only")
        _int_range("training.seed", t.seed, 0, 2**32 - 1)
        _number("training.eval_split", t.eval_split, 0.0, 0.9)
        if t.eval_steps is not None:
            _int_range("training.eval_steps", t.eval_steps, 1, 10_000_000)
        _int_range("training.save_steps", t.save_steps, 1, 10_000_000)
        _number("training.weight_decay", t.weight_decay, 0.0, 10.0)
        _number("training.max_grad_norm", t.max_grad_norm, 0.0, 1e6)
        return s


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingError(f"{name} must be an integer from {low} to {high}, not {value!r}")


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise TrainingError(f"{name} must be a number in {left}{low:g}, {high:g}{right}, not {value!r}")
