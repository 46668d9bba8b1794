"""Time to first token on fresh prompts, one request at a time: Corral against llama-server.

    python -m bench.ttft [--model gemma3:270m] [--requests 12] [--tokens 32] [--llama-server PATH] [--json]

Each request's prompt starts with its own note number, so no server finds it in a cache beyond the
BOS; the servers run one after the other (Corral, llama-server, Corral again), never side by side.
Both get the same text, temperature 0.8 and the served model's stop strings, top_k and top_p (a stop
string's partial match holds text back in both alike). Prints, per server, the client's TTFT p50 (first
streamed chunk with text) and the server's own prompt time p50 (Corral's `prompt_eval_duration`,
llama-server's `timings.prompt_ms`). bench.throughput's TTFT, by contrast, comes from a load whose
repeats re-send earlier prompts, which a server may still hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx

from .common import CorralProcess, gguf_path, model_store, prompt_for
from .throughput import LlamaServer, model_settings


def fresh_prompt(i: int) -> str:
    return f"Note {i * 37 % 101}: " + prompt_for(i)


def first_token(client: httpx.Client, url: str, body: dict, key: str) -> tuple[float, dict]:
    """(ms to the first chunk with text, the last chunk)."""
    start, ttft, last = time.perf_counter(), None, {}
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            line = line.removeprefix("data: ").strip()
            if not line or line == "[DONE]":
                continue
            last = json.loads(line)
            if ttft is None and last.get(key):
                ttft = 1000 * (time.perf_counter() - start)
    return ttft or 0.0, last


def measure(url: str, model: str, requests: int, tokens: int, anchor: dict | None) -> dict:
    """`anchor`: llama-server's extra body fields (None: the server is Corral)."""
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))

    def request(prompt: str, n: int) -> tuple[float, dict]:
        if anchor is not None:
            body = {"prompt": prompt, "n_predict": n, "temperature": 0.8, "ignore_eos": True, "stream": True, **anchor}
            return first_token(client, url + "/completion", body, "content")
        body = {"model": model, "prompt": prompt, "raw": True, "stream": True,
                "options": {"num_predict": n, "temperature": 0.8, "ignore_eos": True}}
        return first_token(client, url + "/api/generate", body, "response")

    request("Warm up.", 4)
    ttfts, prompt_ms = [], []
    for i in range(requests):
        ttft, last = request(fresh_prompt(i), tokens)
        ttfts.append(ttft)
        prompt_ms.append(last["timings"]["prompt_ms"] if anchor is not None else last["prompt_eval_duration"] / 1e6)
    return {"ttft_p50_ms": round(statistics.median(ttfts), 1), "prompt_p50_ms": round(statistics.median(prompt_ms), 1),
            "ttft_ms": [round(x, 1) for x in ttfts]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--llama-server", default="", help="path to a llama-server binary (default build)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = model_store(args.model)
    out: dict = {"model": args.model, "requests": args.requests, "runs": []}
    order = ["corral", "llama-server", "corral"] if args.llama_server else ["corral"]
    anchor: dict = {}
    for name in order:
        if name == "corral":
            with CorralProcess(root, {"OLLAMA_NUM_PARALLEL": "4"}) as server:
                anchor = anchor or model_settings(server.url, args.model)
                result = measure(server.url, args.model, args.requests, args.tokens, None)
        else:
            with LlamaServer(args.llama_server, str(gguf_path(root, args.model)), 1) as server:
                result = measure(server.url, args.model, args.requests, args.tokens, anchor)
        out["runs"].append({"server": name, **result})
        if not args.json:
            print(f"{name:12s} TTFT p50 {result['ttft_p50_ms']:6.1f} ms  prompt p50 {result['prompt_p50_ms']:6.1f} ms",
                  flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
