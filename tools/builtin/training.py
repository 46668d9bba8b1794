"""Training and classification tools: `train_adapter` (side effects: agents ask before calling it),
`training_status`, `list_adapters` and `classify`, over the same services HTTP calls
(adapters/training's TrainingService, adapters/classifier.py's ClassifierService)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.errors import BadRequest, NotFound

from ..tool import ToolError, tool


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The services' refusals (a bad request, an unknown model or job, a missing extra) as ToolErrors."""
    try:
        yield
    except (BadRequest, NotFound) as exc:
        raise ToolError(str(exc)) from None


class LoraArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int | None = Field(None, description="LoRA rank (default 16)")
    lora_alpha: float | None = Field(None, description="LoRA alpha (default 2 r)")
    lora_dropout: float | None = Field(None, description="dropout on the LoRA path")
    target_modules: list[str] | None = Field(None, description="layer names to adapt (default: all linear layers "
                                                               "for a chat model, query and value for a classifier)")
    use_rslora: bool = False


class TrainingArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float | None = None
    max_steps: int | None = Field(None, description="optimizer steps (overrides epochs)")
    learning_rate: float | None = None
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    max_seq_length: int | None = None
    packing: bool = False
    seed: int = 0
    eval_split: float | None = Field(None, description="held-out share for evaluation")
    eval_steps: int | None = None
    save_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


class TrainArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str = Field(description="name of the model the job creates (must not exist yet)", max_length=256)
    dataset: str = Field(description="sha256:<hex> digest of an uploaded JSONL blob", max_length=4096)
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    from_: str = Field("", alias="from", description="causal-lm: the stored GGUF model the adapter is for")
    base: str = Field("", description="a Hugging Face folder on the server (required for a classifier)")
    lora: LoraArgs | None = None
    training: TrainingArgs | None = None
    output: Literal["adapter", "merged"] = "adapter"
    quantize: str = ""
    labels: list[str] | None = None
    wait: bool = Field(False, description="wait for the job to end (reporting progress) instead of answering "
                                          "at once; stopping the wait does not stop the job")


def _summary(job: Any) -> dict[str, Any]:
    out = {"id": job.id, "model": job.model, "task": job.task, "status": job.status,
           "created_at": job.created_at, "progress": job.progress}
    if job.result is not None:
        out["result"] = job.result
    if job.error:
        out["error"] = job.error
    return out


@tool(input=TrainArgs, side_effects=True)
async def train_adapter(args: TrainArgs, ctx) -> dict:
    """Start a training job: a LoRA adapter for a stored chat model (ending in a new model that runs with it),
    or a text classifier exported to ONNX. Answers with the job (id, status); with wait, when it has ended."""
    from adapters.training import LoraSettings, TrainingSettings, TrainSpec

    spec = TrainSpec(model=args.model, dataset=args.dataset, task=args.task, from_=args.from_, base=args.base,
                     lora=LoraSettings(**(args.lora.model_dump() if args.lora else {})),
                     training=TrainingSettings(**(args.training.model_dump() if args.training else {})),
                     output=args.output, quantize=args.quantize, labels=args.labels)
    training = ctx.services.training
    with _refusals():
        job = await training.submit(spec)
        if args.wait:
            async for line in training.follow(job.id):
                if line.get("total"):
                    ctx.progress(line.get("step") or line.get("completed") or 0, line["total"], line.get("status", ""))
                elif line.get("status"):
                    ctx.progress(0, None, line["status"])
            job = await training.get(job.id)
    return _summary(job)


class StatusArgs(BaseModel):
    id: str | None = Field(None, description="a job id (train-…); without it, every job", max_length=64)


@tool(input=StatusArgs)
async def training_status(args: StatusArgs, ctx) -> dict:
    """The state of a training job (status, latest progress, result or error), or of every job."""
    with _refusals():
        if args.id:
            return _summary(await ctx.services.training.get(args.id))
        return {"jobs": [_summary(j) for j in await ctx.services.training.list()]}


@tool()
async def list_adapters(args: dict, ctx) -> dict:
    """The LoRA adapters in the model store (with the models that carry them) and the training jobs'
    outputs (adapters and classifiers)."""
    import asyncio
    from dataclasses import asdict

    services = ctx.services
    stored = await asyncio.to_thread(services.inference.adapters.stored)  # the serving side's catalog
    with _refusals():
        jobs = await services.training.list()
    trained = [{"job": j.id, "model": j.model, "task": j.task, "status": j.status,
                **({"adapter_digest": j.result["adapter_digest"]} if j.result and "adapter_digest" in j.result else {})}
               for j in jobs if j.status == "succeeded"]
    return {"adapters": [asdict(a) for a in stored], "trained": trained}


class ClassifyArgs(BaseModel):
    model: str = Field(description="a stored classifier", max_length=256)
    input: str | list[str] = Field(description="one text, or a list of texts")


@tool(input=ClassifyArgs)
async def classify(args: ClassifyArgs, ctx) -> dict:
    """Classify texts with a stored classifier: each text's most probable label and every label's score."""
    with _refusals():
        results = await ctx.services.classifier.classify(args.model, args.input)
    return {"model": args.model, "results": [
        {"label": r.label, "score": r.score, "labels": [{"label": x.label, "score": x.score} for x in r.labels]}
        for r in results]}


TRAINING_TOOLS = [train_adapter, training_status, list_adapters, classify]
