"""Prompt processing speed under the CPU kernel settings Corral can serve with.

    python -m bench.prefill --model gemma3:270m [--tokens 512] [--repeat 3] [--json]

Times one llama_decode of a `--tokens`-token prompt (best of `--repeat`) in three settings:
- default: repacked weight layouts and ggml's tiled K-quant kernel (Corral's default mode);
- no repack: plain weight layouts, tiled kernel still on;
- per-row: plain layouts and GGML_CPU_TILED_MM=0, the batch-invariant kernels that
  CORRAL_DETERMINISTIC=1 serves with (the price of identical numbers under load).
ggml reads GGML_CPU_TILED_MM once per process, so each setting runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    "default": {"extra_bufts": True, "tiled": True},
    "no repack": {"extra_bufts": False, "tiled": True},
    "per-row": {"extra_bufts": False, "tiled": False},
}


def measure(path: str, n_tokens: int, repeat: int, extra_bufts: bool) -> float:
    """Prompt tokens per second of one llama_decode over the whole prompt (best of `repeat`)."""
    import llama_cpp.llama_cpp as C

    from server.engine.llama import LlamaModel, context_params, default_threads, new_context

    model = LlamaModel(path, extra_bufts=extra_bufts)
    ctx = new_context(model, context_params(n_ctx=n_tokens + 16, n_batch=n_tokens, n_seq_max=1,
                                            n_threads=default_threads()))
    batch = C.llama_batch_init(n_tokens, 0, 1)
    words = model.tokenize("The quick brown fox jumps over the lazy dog. " * n_tokens)[:n_tokens]
    best = 0.0
    try:
        for _ in range(repeat):
            C.llama_memory_clear(C.llama_get_memory(ctx), True)
            for i, t in enumerate(words):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, i == len(words) - 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(words)
            start = time.perf_counter()
            assert C.llama_decode(ctx, batch) == 0
            best = max(best, len(words) / (time.perf_counter() - start))
    finally:
        C.llama_batch_free(batch)
        C.llama_free(ctx)
        model.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: measure one setting, print it
    args = ap.parse_args()
    from .common import gguf_path, model_store

    path = str(gguf_path(model_store(args.model), args.model))
    if args.one:
        print(measure(path, args.tokens, args.repeat, SETTINGS[args.one]["extra_bufts"]))
        return
    out = {"model": args.model, "tokens": args.tokens, "prompt_tok_s": {}}
    for name, setting in SETTINGS.items():
        env = dict(os.environ, GGML_CPU_TILED_MM="1" if setting["tiled"] else "0")
        cmd = [sys.executable, "-m", "bench.prefill", "--model", args.model, "--tokens", str(args.tokens),
               "--repeat", str(args.repeat), "--one", name]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out["prompt_tok_s"][name] = round(float(result.stdout.strip().splitlines()[-1]), 1)
    if args.json:
        print(json.dumps(out))
    else:
        base = out["prompt_tok_s"]["default"]
        for name, rate in out["prompt_tok_s"].items():
            print(f"{name:<10} {rate:8.1f} prompt tok/s  ({rate / base:.2f} of default)")


if __name__ == "__main__":
    main()
