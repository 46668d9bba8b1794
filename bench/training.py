"""Training speed and classifier serving speed on this machine.

    python -m bench.training [--steps 12] [--threads 2] [--json]

1. LoRA training tokens/s through the jobs' own loop (adapters/training/loop.py: micro-batches,
   backward, AdamW, the schedule; progress lines read back), r 16 on every linear layer of the blocks,
   float32 on the CPU, batches of 4 random sequences of 128 tokens, for
   - the tiny Llama of the tests (2 layers of 64, Llama 3's 128,256-token vocabulary), and
   - a real-shaped one: 4 layers of Qwen2.5-0.5B's shape (hidden 896, MLP 4,864, 14 heads, 2 KV heads,
     151,936-token vocabulary), random weights.
   The first two steps (warm-up) are left out of the mean.
2. A classifier on ONNX against PyTorch for the same batch: a DistilBERT-base-shaped sequence classifier
   (6 layers of 768, random weights) exported by the training job's exporter (adapters/training/
   onnx_export.py), run on onnxruntime and on PyTorch (eval, inference mode) with the same threads:
   latency p50 of one text and of a batch of 16, and throughput (texts/s) of the batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class _Context:
    """What the loop needs of a job's context: progress lines (kept) and the stop check (never stops)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def emit(self, status: str, **fields: Any) -> None:
        self.lines.append({"status": status, **fields})

    def check(self) -> None:
        pass


def train_speed(config: Any, steps: int, seq: int = 128, batch: int = 4) -> dict[str, float]:
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from adapters.training import loop as lp
    from adapters.training.spec import TrainingSettings

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    model.config.use_cache = False
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=16, lora_alpha=32,
                                                       lora_dropout=0.05, target_modules=targets))
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, config.vocab_size, (batch * steps, seq), generator=gen)

    def step(indices: list[int]) -> lp.StepOutput:
        ids = data[indices]
        out = model(input_ids=ids, labels=ids)
        return lp.StepOutput(out.loss, ids.numel())

    settings = TrainingSettings(max_steps=steps, learning_rate=2e-4, batch_size=batch, save_steps=10**9)
    ctx = _Context()
    with tempfile.TemporaryDirectory() as tmp:
        loop = lp.TrainLoop(ctx, model, settings, len(data), step, None, Path(tmp) / "checkpoints")
        loop.run = _every_line(loop.run)
        began = time.perf_counter()
        loop.run()
        wall = time.perf_counter() - began
    rates = [x["tokens_per_second"] for x in ctx.lines if x["status"] == "training"][2:]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"tokens_per_second": round(statistics.mean(rates), 1), "steps": steps, "seconds": round(wall, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable}


def _every_line(run):
    """A progress line for every step (the loop otherwise writes one at most every 0.25 s)."""
    from adapters.training import loop as lp

    def wrapped():
        saved, lp.LINE_EVERY = lp.LINE_EVERY, 0.0
        try:
            return run()
        finally:
            lp.LINE_EVERY = saved

    return wrapped


def classifier_speed(threads: int, repeat: int = 20, batch: int = 16) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    from adapters.training import onnx_export

    torch.set_num_threads(threads)
    words = [f"w{i}" for i in range(2000)]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, num_labels=4)
    model = DistilBertForSequenceClassification(config).eval()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=48)) for _ in range(batch)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        inputs = onnx_export.export(model, tokenizer, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        def run_onnx(items: list[str]) -> Any:
            enc = tokenizer(items, padding=True, return_tensors="np")
            return session.run(["logits"], {n: enc[n].astype(np.int64) for n in inputs})[0]

        def run_torch(items: list[str]) -> Any:
            with torch.inference_mode():
                return model(**tokenizer(items, padding=True, return_tensors="pt")).logits.numpy()

        diff = float(np.max(np.abs(run_onnx(texts) - run_torch(texts))))
        out: dict[str, Any] = {"max_abs_diff": diff, "batch": batch, "threads": threads}
        for name, fn in (("onnx", run_onnx), ("pytorch", run_torch)):
            for label, items in (("one", texts[:1]), ("batch", texts)):
                fn(items)  # warm-up
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    fn(items)
                    times.append(time.perf_counter() - began)
                out[f"{name}_{label}_p50_ms"] = round(1000 * statistics.median(times), 2)
            out[f"{name}_texts_per_second"] = round(batch / (out[f"{name}_batch_p50_ms"] / 1000), 1)
    out["speedup_batch"] = round(out["pytorch_batch_p50_ms"] / out["onnx_batch_p50_ms"], 2)
    out["speedup_one"] = round(out["pytorch_one_p50_ms"] / out["onnx_one_p50_ms"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, Qwen2Config

    torch.set_num_threads(args.threads)
    tiny = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    shaped = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=4,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    results = {"tiny_llama": train_speed(tiny, args.steps), "qwen2.5_0.5b_shape_4_layers": train_speed(shaped, args.steps),
               "classifier": classifier_speed(args.threads)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name in ("tiny_llama", "qwen2.5_0.5b_shape_4_layers"):
        r = SimpleNamespace(**results[name])
        print(f"{name}: {r.tokens_per_second} training tokens/s ({r.parameters / 1e6:.1f}M parameters, "
              f"{r.trainable / 1e6:.2f}M trainable, {r.steps} steps in {r.seconds} s)")
    c = results["classifier"]
    print(f"classifier (DistilBERT-base shape, {c['threads']} threads): batch of {c['batch']} p50 ONNX "
          f"{c['onnx_batch_p50_ms']} ms vs PyTorch {c['pytorch_batch_p50_ms']} ms ({c['speedup_batch']}x), "
          f"{c['onnx_texts_per_second']} vs {c['pytorch_texts_per_second']} texts/s; one text p50 "
          f"{c['onnx_one_p50_ms']} vs {c['pytorch_one_p50_ms']} ms ({c['speedup_one']}x); "
          f"max |ONNX - PyTorch| {c['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
