"""Causal-LM LoRA training, ending in a served model.

The base is loaded with transformers: from the stored GGUF itself (dequantized; the adapter then
applies to that very GGUF) or from the HF folder paired with it. Chats are rendered with the served
model's template and tokenized as the server tokenizes prompts (dataset.py); the loss is on the
assistant turns. LoRA (peft) on the requested linear layers, trained by the shared loop (loop.py) with
its checkpoints. QLoRA (a 4-bit NF4 base through bitsandbytes) is used when asked and CUDA is present;
on the CPU it is plain LoRA in float32.

At the end the PEFT adapter is kept (`<job>/adapter`), converted to a GGUF LoRA
(adapters/peft_to_gguf.py), checked against the base GGUF (adapters/compat.py), and the output model is
created through /api/create's path: FROM the base model (its chat template, parameters and other
layers), ADAPTER the converted file. With `output: merged` the adapter is merged into the base's
weights instead (merge.py), giving a standalone GGUF, quantized as asked.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from server import create as creating
from server.store import manifest as mf
from server.store.model import Model
from server.template.prompt import render_chat

from . import dataset as ds
from .errors import TrainingError, require
from .gguf_light import write_light_copy
from .jobs import Job
from .loop import StepOutput, TrainLoop
from .runner import JobContext
from .spec import TrainSpec
from .workspace import Workspace, save_adapter

log = logging.getLogger("corral.training")

EVAL_BATCH = 8


def served_model(ws: Workspace, resolved: dict[str, Any]) -> Model:
    """The stored base model, checked to hold the weights the job was queued for."""
    entry = ws.store.find(resolved["model"])
    layer = entry.manifest.layer(mf.MODEL) if entry is not None else None
    if layer is None or layer.digest != resolved["model_digest"]:
        raise TrainingError(f"model '{resolved['model']}' was deleted or replaced after the job was queued: "
                            "its adapter would not fit it")
    return Model(ws.store, entry)


def has_tokenizer(hf_dir: str | None) -> bool:
    return bool(hf_dir) and any((Path(hf_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                         "tokenizer.model", "vocab.json"))


def load_base(resolved: dict[str, Any], spec: TrainSpec, directory: Path, ws: Workspace) -> tuple[Any, Any]:
    """(model, tokenizer) for training: float32 on the CPU, bfloat16 on CUDA, 4-bit NF4 with QLoRA."""
    torch = require("torch", "training")
    transformers = require("transformers", "training")
    dtype = torch.bfloat16 if ws.device == "cuda" else torch.float32
    extra: dict[str, Any] = {"dtype": dtype}
    if resolved["model_type"].startswith("gemma"):
        extra["attn_implementation"] = "eager"  # what transformers recommends for training Gemma
    blob = ws.store.blob_path(resolved["model_digest"])
    if resolved["hf_dir"]:
        source, files = resolved["hf_dir"], {}
    else:  # the weights from a copy without the vocabulary, which loads in seconds (gguf_light.py)
        light = directory / "base" / "model.gguf"
        if not light.is_file():
            light.parent.mkdir(parents=True, exist_ok=True)
            write_light_copy(blob, light)
        source, files = str(light.parent), {"gguf_file": light.name}
    if has_tokenizer(resolved["hf_dir"]):
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    else:  # the served GGUF's, converted once per model and kept: reading a GGUF's vocabulary is slow
        kept = ws.cache / "tokenizers" / blob.name
        if not kept.is_dir():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(blob.parent), gguf_file=blob.name,
                                                                   local_files_only=True)
            kept.parent.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_name(f".tmp-{kept.name}-{os.getpid()}-{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(str(tmp))
            try:
                tmp.rename(kept)
            except OSError:  # kept meanwhile by another server sharing the data directory
                shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(kept), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError("the base's tokenizer has no fast form (offsets are needed to find the assistant turns)")
    if spec.qlora:
        if files:  # bitsandbytes quantizes HF weights: the GGUF's, dequantized, saved once
            hf_copy = directory / "hf-base"
            if not hf_copy.is_dir():
                model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **files,
                                                                          **extra)
                tmp = directory / ".tmp-hf-base"
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(str(tmp))
                tmp.rename(hf_copy)
                del model
            source, files = str(hf_copy), {}
        quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=True,
                                                                  quantization_config=quant, device_map={"": 0},
                                                                  **extra)
        peft = require("peft", "training")
        model = peft.prepare_model_for_kbit_training(model)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **files, **extra)
        model.to(ws.device)
    model.config.use_cache = False
    return model, tokenizer


def train_causal_lm(job: Job, ctx: JobContext, ws: Workspace) -> dict[str, Any]:
    torch = require("torch", "training")
    peft = require("peft", "training")
    spec = TrainSpec.from_dict(job.spec["spec"])
    resolved = job.spec["resolved"]
    t = spec.training
    served = served_model(ws, resolved)

    ctx.emit("loading base model")
    torch.manual_seed(t.seed)
    model, tokenizer = load_base(resolved, spec, ctx.directory, ws)
    ctx.check()

    ctx.emit("reading dataset")
    chats = ds.read_chats(ctx.directory / "dataset.jsonl")
    before = list(served.messages)
    if served.system:
        before.insert(0, {"role": "system", "content": served.system})
    markers = ds.end_markers(tokenizer.eos_token, served.parameters.get("stop"))
    probe = tokenizer("a")["input_ids"]
    bos = None
    if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id:
        bos = (tokenizer.bos_token_id, tokenizer.bos_token)

    def render(messages: list[dict[str, str]]) -> str:
        return render_chat(served, messages, bos_token=bos[1] if bos else "")

    train_chats, held_chats = ds.split(chats, t.eval_split, t.seed)

    def tokenized(items: list[ds.ChatExample]) -> tuple[list[ds.Tokenized], int]:
        out, skipped = [], 0
        for chat in items:
            ctx.check()
            rendered = ds.render_chat(chat, render, markers, before)
            tok = ds.tokenize(rendered, tokenizer, bos, tokenizer.eos_token_id, t.max_seq_length)
            if tok is None:
                skipped += 1
            else:
                out.append(tok)
        return out, skipped

    train, skipped = tokenized(train_chats)
    held, skipped_held = tokenized(held_chats)
    if not train:
        raise TrainingError(f"no training example keeps a trained token within max_seq_length "
                            f"{t.max_seq_length}: raise training.max_seq_length")
    if t.packing:
        train = ds.pack(train, t.max_seq_length)
        held = ds.pack(held, t.max_seq_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def batch(rows: list[ds.Tokenized]) -> dict[str, Any]:
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), ds.IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r.ids)] = torch.tensor(r.ids)
            labels[i, :len(r.labels)] = torch.tensor(r.labels)
            mask[i, :len(r.ids)] = 1
        return {"input_ids": ids.to(ws.device), "labels": labels.to(ws.device), "attention_mask": mask.to(ws.device)}

    def step(indices: list[int]) -> StepOutput:
        enc = batch([train[i] for i in indices])
        out = model(**enc)
        return StepOutput(out.loss, int(enc["attention_mask"].sum()))

    def evaluate() -> dict[str, float]:
        total, weight = 0.0, 0
        for start in range(0, len(held), EVAL_BATCH):
            ctx.check()
            rows = held[start:start + EVAL_BATCH]
            enc = batch(rows)
            n = sum(r.trained for r in rows)
            total += float(model(**enc).loss) * n
            weight += n
        return {"eval_loss": round(total / weight, 6)} if weight else {}

    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=spec.lora.r, lora_alpha=spec.lora.lora_alpha,
                             lora_dropout=spec.lora.lora_dropout, target_modules=resolved["target_modules"],
                             use_rslora=spec.lora.use_rslora, bias="none")
    model = peft.get_peft_model(model, config)
    loop = TrainLoop(ctx, model, t, len(train), step, evaluate if held else None, ctx.directory / "checkpoints")
    trained = loop.run()
    ctx.check()

    ctx.emit("saving adapter")
    adapter_dir = save_adapter(model, ctx.directory)
    model = None  # the weights are done with (a merge reads the GGUF files): their memory goes
    shutil.rmtree(ctx.directory / "base", ignore_errors=True)  # the light copy of the weights (a resume makes another)
    result: dict[str, Any] = {
        "model": spec.model, "task": spec.task, "from": resolved["model"], "steps": trained["steps"],
        "loss": trained["loss"], "first_loss": trained["first_loss"], "evaluations": trained["evaluations"],
        "trained_on": len(train_chats) - skipped, "held_out": len(held_chats) - skipped_held,
        "skipped": skipped + skipped_held, "adapter_dir": str(adapter_dir)}
    if trained["evaluations"]:
        result["eval_loss"] = trained["evaluations"][-1].get("eval_loss")

    ctx.emit("converting adapter to GGUF")
    adapter_gguf = convert(adapter_dir, ctx.directory / "adapter.gguf", resolved, ws)
    result["adapter_gguf"] = str(adapter_gguf)
    ctx.check()
    served = served_model(ws, resolved)  # still there, still the same weights
    ws.ensure_name_free(spec.model)
    if spec.output == "merged":
        from .merge import merge_into_gguf

        ctx.emit("merging adapter into the base weights")
        merged = ctx.directory / "merged.gguf"
        merge_into_gguf(ws.store.blob_path(resolved["model_digest"]), adapter_gguf, merged, check=ctx.check)
        layer = ws.store.import_file(merged, move=True)
        create = creating.CreateSpec(
            name=spec.model, files={"model.gguf": layer.digest}, template=served.template or "",
            system=served.system or "", parameters=served.parameters or None, messages=served.messages or None,
            license=served.license or None, quantize=spec.quantize)
        result["merged"] = True
    else:
        layer = ws.store.import_file(adapter_gguf)
        create = creating.CreateSpec(name=spec.model, from_=resolved["model"], adapters={"adapter.gguf": layer.digest})
        result["adapter_digest"] = layer.digest
    ctx.emit("creating model")
    ws.create_model(create, lambda item: ctx.emit(item["status"], completed=item.get("completed"),
                                                  total=item.get("total")) if item.get("total") else None)
    return result


def convert(adapter_dir: Path, out: Path, resolved: dict[str, Any], ws: Workspace) -> Path:
    """The PEFT adapter as a GGUF LoRA for the base's architecture, checked to fit the base GGUF."""
    from adapters.compat import check_adapter_fits
    from adapters.peft_to_gguf import convert_for_base

    base = ws.store.blob_path(resolved["model_digest"])
    tmp = out.with_name(".tmp-" + out.name)
    tmp.unlink(missing_ok=True)
    convert_for_base(adapter_dir, tmp, base)  # architecture, layers and heads from the base GGUF
    check_adapter_fits(tmp, base)
    tmp.replace(out)
    return out
