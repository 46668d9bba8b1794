"""Many LoRA adapters on one loaded base: aggregate throughput, switching cost, memory.

    python -m bench.adapters [--model gemma3:270m] [--streams 4] [--tokens 64] [--rounds 2] [--rank 16]
                             [--llama-server PATH] [--json]

Four random rank-`--rank` GGUF LoRAs (attention q/v/k/o) are written for the model's GGUF and created
as adapter models (FROM the model, ADAPTER its file). With `--streams` streaming clients, `--rounds`
requests each, `--tokens` tokens per request (ignore_eos), each load with prompts of its own (no load
finds another's prompts cached), llama-server sent the served model's stop strings, top_k and top_p,
in one run:
- Corral over HTTP: all clients on the base, all on one adapter model, each on a different one;
  aggregate tok/s over wall time and TTFT p50.
- with `--llama-server PATH`: the same three loads on llama-server started with the four adapters
  (`--lora` each) and `-np streams`, choosing them per request (`"lora": [{"id", "scale"}]`).
- the cost of mixing adapter sets, on Corral's engine in this process: a step of two sequences on two
  different sets against a step of two on one set. With Corral's llama.cpp (per-sequence adapters) both
  are one decode, the mixed one with a second adapter's terms; on a llama.cpp without the patch the mixed
  step is two one-row decodes and two switches of the graph's set, and the switch's own cost is reported.
- memory: the server's resident memory with the base loaded, then with the four adapter models loaded
  on it (one base), and the planner's figure for four separate loads (what a runner per model costs).
Goal (issue 17): four different adapters >= llama-server's aggregate, and >= 0.6 x all-on-one-adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import ollama

from server.engine.job import Done, Job, Sampling, adapter_set
from server.engine.llama import LlamaModel, default_threads
from server.engine.runner import Runner
from tests.lora_factory import write_random_lora

from .common import CorralProcess, ServerProcess, free_port, gguf_path, model_store, prompt_for
from .throughput import model_settings

N_ADAPTERS = 4
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _one(client: httpx.AsyncClient, url: str, body: dict, llama_server: bool) -> tuple[float, int]:
    start, ttft, count = time.perf_counter(), None, 0
    path = "/completion" if llama_server else "/api/generate"
    async with client.stream("POST", url + path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            line = line.removeprefix("data: ").strip()
            if not line or line == "[DONE]":
                continue
            chunk = json.loads(line)
            if ttft is None and (chunk.get("content") or chunk.get("response")):
                ttft = time.perf_counter() - start
            if llama_server and chunk.get("stop"):
                count = chunk.get("tokens_predicted", count)
            elif not llama_server and chunk.get("done"):
                count = chunk.get("eval_count", 0)
    return ttft or 0.0, count


def load_prompt(load: str, i: int) -> str:
    """Request i's prompt in a load: each load's own, so that no load finds another's prompts cached (a
    server whose cache ignores the adapter would otherwise reuse the base load's cells)."""
    return f"[{load}] " + prompt_for(i)


def corral_body(model: str, i: int, n_tokens: int, load: str = "") -> dict:
    return {"model": model, "prompt": load_prompt(load, i), "stream": True, "raw": True,
            "options": {"num_predict": n_tokens, "temperature": 0.8, "ignore_eos": True}}  # no seed: see bench.throughput


ANCHOR_SETTINGS: dict = {}  # the served model's stop, top_k, top_p, sent to llama-server too


def llama_server_body(adapter: int | None, i: int, n_tokens: int, load: str = "") -> dict:
    lora = [{"id": k, "scale": 1.0 if k == adapter else 0.0} for k in range(N_ADAPTERS)]
    return {"prompt": load_prompt(load, i), "n_predict": n_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True,
            "stream": True, "lora": lora, **ANCHOR_SETTINGS}


async def load(url: str, bodies, n: int, rounds: int, llama_server: bool) -> tuple[float, float]:
    """(aggregate tok/s, TTFT p50 ms); bodies(w, k) is client w's k-th request."""
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=900, limits=no_reuse) as client:
        for w in range(n):  # warm: every adapter loaded and touched once
            await _one(client, url, bodies(w, 999) | ({"n_predict": 2} if llama_server else {}), llama_server)

        async def rounds_of(w: int):
            return [await _one(client, url, bodies(w, k), llama_server) for k in range(rounds)]

        start = time.perf_counter()
        results = [x for xs in await asyncio.gather(*[rounds_of(w) for w in range(n)]) for x in xs]
        wall = time.perf_counter() - start
    return sum(c for _, c in results) / wall, 1000 * statistics.median(t for t, _ in results)


def switch_cost(path: str, adapters: list[Path], steps: int = 64) -> dict:
    """What mixing adapter sets costs, on the engine (no HTTP): two sequences on two sets against two on
    one set. Without per-sequence adapters the two sets run as one-row decodes that alternate by turns,
    so their time less twice one sequence's time alone, over the switches counted, is a switch's cost."""
    model = LlamaModel(path)
    runner = Runner(model, n_ctx=512, n_parallel=2)

    async def run(sets) -> float:
        jobs = [Job(tokens=model.tokenize(prompt_for(i)), sampling=Sampling(temperature=0), num_predict=steps,
                    ignore_eos=True, adapters=adapter_set([(str(path), 1.0)])) for i, path in enumerate(sets)]
        start = time.perf_counter()

        async def drain(job):
            async for ev in runner.generate(job):
                if isinstance(ev, Done):
                    return

        await asyncio.gather(*[drain(j) for j in jobs])
        return time.perf_counter() - start

    try:
        asyncio.run(run([adapters[0]]))  # warm
        alone = statistics.median(asyncio.run(run([adapters[0]])) for _ in range(3))
        same = statistics.median(asyncio.run(run([adapters[0], adapters[0]])) for _ in range(3))
        switches0 = runner.stats["adapter_switches"]
        mixed = statistics.median(asyncio.run(run([adapters[0], adapters[1]])) for _ in range(3))
        switches = (runner.stats["adapter_switches"] - switches0) / 3
        per_seq = runner.per_seq_adapters
    finally:
        runner.close()
        model.close()
    result = {"per_sequence_adapters": per_seq,
              "one_sequence_ms_per_token": round(1000 * alone / steps, 2),
              "two_on_one_set_ms_per_step": round(1000 * same / steps, 2),
              "two_on_two_sets_ms_per_step": round(1000 * mixed / steps, 2),
              "two_sets_over_one_set": round(mixed / same, 3),
              "graph_set_changes_per_run": switches}
    if not per_seq:
        result["ms_per_switch"] = round(1000 * (mixed - 2 * alone) / max(switches, 1), 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    src = model_store(args.model)
    work = Path(tempfile.mkdtemp(prefix="corral-bench-adapters-"))
    store = shutil.copytree(src, work / "models")
    base = gguf_path(store, args.model)
    files = [write_random_lora(base, work / f"a{i}.gguf", rank=args.rank, alpha=2.0 * args.rank, seed=i + 1,
                               targets=TARGETS) for i in range(N_ADAPTERS)]
    result: dict = {"model": args.model, "streams": args.streams, "tokens": args.tokens, "rounds": args.rounds,
                    "rank": args.rank, "threads": default_threads(),
                    "adapter_bytes": files[0].stat().st_size}
    n = args.streams
    with CorralProcess(store, {"OLLAMA_NUM_PARALLEL": str(n)}) as server:
        client = ollama.Client(host=server.url)
        for i, f in enumerate(files):
            client.create(model=f"lora{i}", from_=args.model, adapters={f.name: client.create_blob(f)})
        client.generate(model=args.model, prompt="hi", options={"num_predict": 1})
        ANCHOR_SETTINGS.update(model_settings(server.url, args.model))
        rss_base = rss_bytes(server.proc.pid)
        cases = {"base": lambda w, k: corral_body(args.model, w * 1000 + k, args.tokens, "base"),
                 "one_adapter": lambda w, k: corral_body("lora0", w * 1000 + k, args.tokens, "one_adapter"),
                 "four_adapters": lambda w, k: corral_body(f"lora{w % N_ADAPTERS}", w * 1000 + k, args.tokens,
                                                           "four_adapters")}
        for name, bodies in cases.items():
            tok_s, ttft = asyncio.run(load(server.url, bodies, n, args.rounds, False))
            result[f"corral_{name}_tok_s"], result[f"corral_{name}_ttft_p50_ms"] = round(tok_s, 1), round(ttft, 1)
        result["corral_four_adapters_over_one_adapter"] = round(
            result["corral_four_adapters_tok_s"] / result["corral_one_adapter_tok_s"], 3)
        ps = httpx.get(server.url + "/api/ps").json()["models"]
        result["rss_base_only_mib"] = round(rss_base / 2**20, 1)
        result["rss_base_plus_four_adapter_models_mib"] = round(rss_bytes(server.proc.pid) / 2**20, 1)
        sizes = {m["name"]: m["size"] for m in ps}
        result["planned_one_base_four_adapters_mib"] = round(
            (sizes.get(args.model, 0) + N_ADAPTERS * result["adapter_bytes"]) / 2**20, 1)
        result["planned_four_separate_loads_mib"] = round(
            sum(sizes.get(f"lora{i}:latest", 0) for i in range(N_ADAPTERS)) / 2**20, 1)
    result["four_vs_one_adapter"] = round(result["corral_four_adapters_tok_s"] / result["corral_one_adapter_tok_s"], 3)

    if args.llama_server:
        port = free_port()
        cmd = [args.llama_server, "-m", str(base), "-np", str(n), "-c", str(4096 * n), "--port", str(port),
               "-t", str(default_threads()), "--no-webui"]
        for f in files:
            cmd += ["--lora", str(f)]
        with ServerProcess(cmd, port, "/health", timeout=120, what="llama-server") as ls:
            cases = {"base": None, "one_adapter": 0, "four_adapters": "each"}
            for name, which in cases.items():
                def bodies(w, k, which=which, name=name):
                    adapter = w % N_ADAPTERS if which == "each" else which
                    return llama_server_body(adapter, w * 1000 + k, args.tokens, name)
                tok_s, ttft = asyncio.run(load(ls.url, bodies, n, args.rounds, True))
                result[f"llama_server_{name}_tok_s"] = round(tok_s, 1)
                result[f"llama_server_{name}_ttft_p50_ms"] = round(ttft, 1)
        result["corral_vs_llama_server_four_adapters"] = round(
            result["corral_four_adapters_tok_s"] / result["llama_server_four_adapters_tok_s"], 3)

    result["switch"] = switch_cost(str(base), files)
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    os.environ.setdefault("CORRAL_LOG_LEVEL", "WARNING")
    main()
