"""Aggregate generation throughput: raw llama.cpp batched decode vs Corral over HTTP.

    python -m bench.throughput --model gemma3:270m --concurrency 1,4 [--tokens 128] [--rounds 2] [--repeat 3] [--json]

For each concurrency N, in one run on one model:
- raw: a plain llama_decode loop over N sequences with greedy picks (no server, no Python
  per-token work beyond the loop): the ceiling.
- corral: a `corral serve` process and N concurrent streaming /api/generate clients, each
  sending `--rounds` requests one after another (2, as ../shared/gpu/loadgen.py does for the
  anchors; `--tokens` tokens each, temperature 0.8, no seed unless `--seeded` (a seeded request is
  computed as on an idle server, one at a time under load), `raw` so the prompt is the same tokens the raw loop
  and llama-server process); aggregate tok/s over wall time, TTFT p50.
- with `--engine`: the same load on Corral's engine in this process (a Runner, no HTTP), which
  tells the engine's share of the gap from the HTTP layer's.
- with `--llama-server PATH`: the same load against llama-server (a binary built from the same
  llama.cpp sources, `-np N`) on its /completion endpoint, with the served model's stop strings, top_k
  and top_p (from /api/show: a stop string's partial match holds text back in both servers alike,
  which TTFT sees: gemma3's "\n\n\n" holds its first "\n\n" a step), the anchor to beat: built as its users
  build it (default CMake flags, llamafile kernels on); `--llama-server-exact PATH` adds one built
  with Corral's exact flags (-DGGML_LLAMAFILE=OFF), the build deterministic mode loads.
- with `--batched-bench PATH`: llama-batched-bench (default build) at N sequences, prompt 32 tokens,
  `--tokens` generated: its generation rate (S_TG), the raw ceiling as llama.cpp's own tool measures it.
Each level is measured `--repeat` times, each load between two raw measurements: its ratio is
taken against their mean, so the machine's drift between phases cancels. Prints one line per level
(medians, and the ratio of every repeat); --json prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
import llama_cpp.llama_cpp as C

from server.engine.job import Done, Job, Sampling
from server.engine.llama import LlamaModel, context_params, default_threads, new_context, supports_gpu
from server.engine.runner import Runner

from .common import CorralProcess, ServerProcess, free_port, gguf_path, model_store, prompt_for


ANCHOR_SETTINGS: dict = {}  # the served model's stop, top_k, top_p, sent to llama-server too (model_settings)
SEEDED = False  # --seeded: Corral's requests carry a seed (llama-server's always do: it batches them alike)


def raw_decode(path: str, n_seq: int, n_tokens: int, extra_bufts: bool) -> float:
    """Tokens per second of a bare batched decode loop with N sequences."""
    model = LlamaModel(path, extra_bufts=extra_bufts)
    params = context_params(n_ctx=(n_tokens + 128) * n_seq, n_batch=512, n_seq_max=n_seq,
                            n_threads=default_threads())
    ctx = new_context(model, params)
    batch = C.llama_batch_init(512, 0, 1)
    greedy = C.llama_sampler_init_greedy()
    try:
        pos, last = [], []
        for s in range(n_seq):  # prefill each sequence
            tokens = model.tokenize(prompt_for(s))
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, i == len(tokens) - 1
                batch.seq_id[i][0] = s
            batch.n_tokens = len(tokens)
            assert C.llama_decode(ctx, batch) == 0
            last.append(C.llama_sampler_sample(greedy, ctx, len(tokens) - 1))
            pos.append(len(tokens))
        start = time.perf_counter()
        for _ in range(n_tokens):
            for s in range(n_seq):
                batch.token[s], batch.pos[s], batch.n_seq_id[s], batch.logits[s] = last[s], pos[s], 1, True
                batch.seq_id[s][0] = s
                pos[s] += 1
            batch.n_tokens = n_seq
            assert C.llama_decode(ctx, batch) == 0
            for s in range(n_seq):
                last[s] = C.llama_sampler_sample(greedy, ctx, s)
        return n_seq * n_tokens / (time.perf_counter() - start)
    finally:
        C.llama_sampler_free(greedy)
        C.llama_batch_free(batch)
        C.llama_free(ctx)
        model.close()


def engine_load(path: str, n: int, n_tokens: int, rounds: int, n_parallel: int) -> float:
    """Aggregate tok/s of the bench's load (N clients, `rounds` requests each, temperature 0.8) on a
    Runner with the served model's sequences, in this process: Corral's engine without HTTP."""
    model = LlamaModel(path)
    runner = Runner(model, n_ctx=4096, n_parallel=n_parallel)

    async def one(i: int, count: int) -> int:
        job = Job(tokens=model.tokenize(prompt_for(i)),
                  sampling=Sampling(temperature=0.8, seed=i), num_predict=count, ignore_eos=True)
        async for event in runner.generate(job):
            if isinstance(event, Done):
                return event.eval_count
        return 0

    async def load() -> float:
        await one(999, 4)

        async def client_rounds(w: int) -> int:
            return sum([await one(w * 1000 + k, n_tokens) for k in range(rounds)])

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*[client_rounds(w) for w in range(n)]))
        return tokens / (time.perf_counter() - start)

    try:
        return asyncio.run(load())
    finally:
        runner.close()
        model.close()


async def _one(client: httpx.AsyncClient, url: str, model: str, i: int, n_tokens: int,
               llama_server: bool = False) -> tuple[float, int]:
    prompt = prompt_for(i)
    if llama_server:
        path, text_key = "/completion", "content"
        body = {"prompt": prompt, "n_predict": n_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True,
                "stream": True, **ANCHOR_SETTINGS}
    else:
        path, text_key = "/api/generate", "response"
        body = {"model": model, "prompt": prompt, "stream": True, "raw": True,  # the same tokens as the others
                "options": {"num_predict": n_tokens, "temperature": 0.8, "ignore_eos": True}}
        if SEEDED:  # a seed asks Corral for an idle server's numbers: such requests decode one at a time
            body["options"]["seed"] = i
    start = time.perf_counter()
    ttft, count = None, 0
    async with client.stream("POST", url + path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            line = line.removeprefix("data: ").strip()
            if not line or line == "[DONE]":
                continue
            chunk = json.loads(line)
            if ttft is None and chunk.get(text_key):
                ttft = time.perf_counter() - start
            if llama_server:
                count += 1 if chunk.get("content") and not chunk.get("stop") else 0
                if chunk.get("stop"):
                    count = chunk.get("tokens_predicted", count)
            elif chunk.get("done"):
                count = chunk.get("eval_count", 0)
    return (ttft or 0.0), count


async def corral_load(url: str, model: str, n: int, n_tokens: int, rounds: int,
                      llama_server: bool = False) -> tuple[float, float]:
    """(aggregate tok/s, TTFT p50 ms) for N concurrent streaming clients, `rounds` requests each."""
    # a connection per request: llama-server (cpp-httplib) closes a kept-alive connection after a
    # few requests, and a request racing that close fails with "Server disconnected"
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=no_reuse) as client:
        await _one(client, url, model, 999, 4, llama_server)  # warm: model loaded, caches touched

        async def client_rounds(w: int) -> list[tuple[float, int]]:
            return [await _one(client, url, model, w * 1000 + k, n_tokens, llama_server) for k in range(rounds)]

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*[client_rounds(w) for w in range(n)]) for r in rs]
        wall = time.perf_counter() - start
    tokens = sum(count for _, count in results)
    return tokens / wall, 1000 * statistics.median(t for t, _ in results)


class LlamaServer(ServerProcess):
    """llama-server with N slots on the same model and thread count, for the anchor figure."""

    def __init__(self, binary: str, model_path: str, n_parallel: int):
        port = free_port()
        super().__init__([binary, "-m", model_path, "-np", str(n_parallel), "-c", str(4096 * n_parallel), "--port",
                          str(port), "-t", str(default_threads()), "--no-webui"], port, "/health", timeout=120,
                         what="llama-server")


def model_settings(url: str, model: str) -> dict:
    """The served model's stop strings, top_k and top_p (its Modelfile's PARAMETERs, from /api/show)."""
    text = httpx.post(url + "/api/show", json={"model": model}, timeout=60).json().get("parameters", "")
    out: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "stop":
            out.setdefault("stop", []).append(json.loads(value) if value.startswith('"') else value)
        elif key in ("top_k", "top_p"):
            out[key] = float(value) if key == "top_p" else int(value)
    return out


def measure_level(server: CorralProcess, path: str, n: int, args: argparse.Namespace) -> dict:
    """`--repeat` rounds of raw, Corral (and llama-server), raw again: each load's ratio is taken
    against the mean of the raw figures just before and after it, so the machine's drift between
    phases cancels; the level reports medians over the rounds."""
    binaries = {name: binary for name, binary in (("llama_server", args.llama_server),
                                                  ("llama_server_exact", args.llama_server_exact)) if binary}
    servers = {name: LlamaServer(binary, path, n) for name, binary in binaries.items()}
    raws = [raw_decode(path, n, args.tokens, extra_bufts=True)]
    corral, ttfts, engine = [], [], []
    anchored: dict[str, tuple[list, list]] = {name: ([], []) for name in servers}
    try:
        for _ in range(args.repeat):
            agg, ttft = asyncio.run(corral_load(server.url, args.model, n, args.tokens, args.rounds))
            corral.append(agg)
            ttfts.append(ttft)
            if args.engine:
                engine.append(engine_load(path, n, args.tokens, args.rounds, args.parallel))
            for name, anchor in servers.items():
                agg, ttft = asyncio.run(corral_load(anchor.url, args.model, n, args.tokens, args.rounds,
                                                    llama_server=True))
                anchored[name][0].append(agg)
                anchored[name][1].append(ttft)
            raws.append(raw_decode(path, n, args.tokens, extra_bufts=True))
    finally:
        for anchor in servers.values():
            anchor.close()
    around = [(a + b) / 2 for a, b in zip(raws, raws[1:])]
    med = statistics.median
    level = {"concurrency": n, "repeat": args.repeat, "raw_tok_s": [round(r, 1) for r in raws],
             "corral_tok_s": [round(c, 1) for c in corral], "ttft_p50_ms": round(med(ttfts), 1),
             "ratios": [round(c / r, 3) for c, r in zip(corral, around)]}
    level["ratio"] = med(level["ratios"])
    if not supports_gpu():  # repacked layouts are CPU weight layouts: nothing to compare with layers on a GPU
        level["raw_no_repack_tok_s"] = round(raw_decode(path, n, args.tokens, extra_bufts=False), 1)
    if engine:
        level.update(engine_tok_s=[round(e, 1) for e in engine], engine_ratios=[round(e / r, 3) for e, r in zip(engine, around)])
        level["engine_ratio"] = med(level["engine_ratios"])
    for name, (anchors, anchor_ttfts) in anchored.items():
        level.update({f"{name}_tok_s": [round(a, 1) for a in anchors],
                      f"{name}_ttft_p50_ms": round(med(anchor_ttfts), 1),
                      f"{name}_ratios": [round(a / r, 3) for a, r in zip(anchors, around)],
                      f"corral_vs_{name}": round(med(c / a for c, a in zip(corral, anchors)), 3)})
        level[f"{name}_ratio"] = med(level[f"{name}_ratios"])
    if args.batched_bench:
        level["batched_bench_tok_s"] = batched_bench(args.batched_bench, path, n, args.tokens)
        level["corral_vs_batched_bench"] = round(med(corral) / level["batched_bench_tok_s"], 3)
    return level


def batched_bench(binary: str, path: str, n: int, n_tokens: int) -> float:
    """llama-batched-bench's generation rate (S_TG, tok/s) for n sequences of n_tokens after 32 prompt tokens."""
    import subprocess

    out = subprocess.run([binary, "-m", path, "-c", str((n_tokens + 64) * n), "-b", "512", "-ub", "512",
                          "-npp", "32", "-ntg", str(n_tokens), "-npl", str(n), "-t", str(default_threads())],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == "32" and cells[2] == str(n):
            return float(cells[7])  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    raise RuntimeError(f"no result line in llama-batched-bench's output:\n{out}")


def describe(level: dict) -> str:
    line = f"N={level['concurrency']:<3} raw {statistics.median(level['raw_tok_s']):7.1f} tok/s "
    if "raw_no_repack_tok_s" in level:
        line += f"(no repack {level['raw_no_repack_tok_s']:7.1f})  "
    line += (f"corral {statistics.median(level['corral_tok_s']):7.1f} tok/s  TTFT p50 {level['ttft_p50_ms']:6.1f} ms  "
             f"ratio {level['ratio']:.3f} {level['ratios']}")
    if "engine_ratio" in level:
        line += f"  | engine in-process {statistics.median(level['engine_tok_s']):7.1f} tok/s  ratio {level['engine_ratio']:.3f}"
    for name, label in (("llama_server", "llama-server"), ("llama_server_exact", "llama-server (exact flags)")):
        if f"{name}_ratio" in level:
            line += (f"  | {label} {statistics.median(level[f'{name}_tok_s']):7.1f} tok/s  TTFT p50 "
                     f"{level[f'{name}_ttft_p50_ms']:6.1f} ms  corral/{label} {level[f'corral_vs_{name}']:.3f}")
    if "batched_bench_tok_s" in level:
        line += (f"  | llama-batched-bench {level['batched_bench_tok_s']:7.1f} tok/s  "
                 f"corral/batched-bench {level['corral_vs_batched_bench']:.3f}")
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per level, each between two raw ones")
    ap.add_argument("--asgi", default="uvicorn", choices=["uvicorn", "granian"])
    ap.add_argument("--engine", action="store_true", help="also measure the engine in-process, without HTTP")
    ap.add_argument("--llama-server", default="", help="path to a llama-server binary (default build): also measure it")
    ap.add_argument("--llama-server-exact", default="", help="path to a llama-server built with -DGGML_LLAMAFILE=OFF")
    ap.add_argument("--batched-bench", default="", help="path to llama-batched-bench (default build)")
    ap.add_argument("--seeded", action="store_true",
                    help="Corral's requests carry a seed (reproducible: they decode one at a time, see README)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global SEEDED
    SEEDED = args.seeded
    levels = [int(x) for x in args.concurrency.split(",")]
    args.parallel = max(levels)  # the server's sequences (OLLAMA_NUM_PARALLEL), for every level
    root = model_store(args.model)
    path = str(gguf_path(root, args.model))
    out = {"model": args.model, "tokens": args.tokens, "rounds": args.rounds, "asgi": args.asgi,
           "threads": default_threads(), "levels": []}
    with CorralProcess(root, {"OLLAMA_NUM_PARALLEL": str(args.parallel), "CORRAL_ASGI_SERVER": args.asgi}) as server:
        ANCHOR_SETTINGS.update(model_settings(server.url, args.model))
        out["anchor_settings"] = ANCHOR_SETTINGS
        for n in levels:
            level = measure_level(server, path, n, args)
            out["levels"].append(level)
            if not args.json:
                print(describe(level), flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
