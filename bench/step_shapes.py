"""What a decode step costs by which sequences run in it: split, padded, or one unified KV pool.

    python -m bench.step_shapes --model gemma3:270m [--parallel 4] [--sets "0,2,3;0,1,2,3"] [--steps 48] [--json]

With a KV stream per sequence (Corral's context), llama.cpp cuts a batch into micro-batches of
consecutive sequence ids, so running sequences 0, 2 and 3 take two passes over the weights where
0-3 take one. For each set of running sequences (each already holding a short prompt) this times
one-token-per-sequence decode steps three ways:
- split: only the running sequences, as llama.cpp cuts them;
- padded: plus a throwaway token for every idle sequence in the gaps, removed after each step
  (what `Runner._pads` does where it pays);
- unified: the same running sequences in one shared KV pool (`kv_unified`), never split.
Prints milliseconds per step, the median of `--repeat` runs, each in a fresh context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import llama_cpp.llama_cpp as C

from server.engine.llama import LlamaModel, context_params, default_threads, new_context

from .common import PROMPTS, gguf_path, model_store

DEFAULT_SETS = "0;0,1;0,2;0,3;0,1,2;0,1,3;0,2,3;1,3;0,1,2,3"


def step_ms(model: LlamaModel, running: list[int], n_parallel: int, steps: int, way: str) -> float:
    params = context_params(n_ctx=1024 * n_parallel, n_batch=512, n_seq_max=n_parallel,
                            n_threads=default_threads())
    params.kv_unified = way == "unified"
    ctx = new_context(model, params)
    memory = C.llama_get_memory(ctx)
    batch = C.llama_batch_init(512, 0, 1)
    try:
        prompt = model.tokenize(PROMPTS[0])
        pos = {}
        for s in range(n_parallel):  # every sequence holds a prompt, as idle ones do in a server
            for i, t in enumerate(prompt):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, False
                batch.seq_id[i][0] = s
            batch.n_tokens = len(prompt)
            assert C.llama_decode(ctx, batch) == 0
            pos[s] = len(prompt)
        rows = list(range(min(running), max(running) + 1)) if way == "padded" else running
        start = time.perf_counter()
        for _ in range(steps):
            for k, s in enumerate(rows):
                real = s in running
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = 100 + k, pos[s], 1, real
                batch.seq_id[k][0] = s
                pos[s] += real
            batch.n_tokens = len(rows)
            assert C.llama_decode(ctx, batch) == 0
            for s in rows:
                if s not in running:
                    C.llama_memory_seq_rm(memory, s, pos[s], -1)
        return 1000 * (time.perf_counter() - start) / steps
    finally:
        C.llama_batch_free(batch)
        C.llama_free(ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--sets", default=DEFAULT_SETS, help="running sequence ids, sets separated by ';'")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = str(gguf_path(model_store(args.model), args.model))
    model = LlamaModel(path)
    rows = []
    try:
        for spec in args.sets.split(";"):
            running = sorted(int(x) for x in spec.split(","))
            times = {way: [] for way in ("split", "padded", "unified")}
            for _ in range(args.repeat):  # interleaved, so drift hits the three alike
                for way, got in times.items():
                    got.append(step_ms(model, running, args.parallel, args.steps, way))
            row = {"running": running, **{way: round(statistics.median(t), 1) for way, t in times.items()}}
            rows.append(row)
            if not args.json:
                print(f"running {spec:<9} split {row['split']:6.1f} ms  padded {row['padded']:6.1f} ms  "
                      f"unified {row['unified']:6.1f} ms", flush=True)
    finally:
        model.close()
    if args.json:
        print(json.dumps({"model": args.model, "parallel": args.parallel, "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
