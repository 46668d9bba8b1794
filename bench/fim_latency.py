"""Editor latency: first-token time of keystroke-style fill-in-the-middle requests.

    python -m bench.fim_latency [--requests 50] [--json]

An editor resends nearly the same prompt at every keystroke: the prefix grows by a few
characters each time. This replays 50 such /api/generate requests (prompt + suffix, FIM
tokens) against a server with the prefix cache on and one with it off
(CORRAL_PREFIX_CACHE=0), and reports first-token latency p50/p95 for each.
The model is a random-weight Llama of a small real shape (12 layers, d=768) with FIM
tokens, written on first use: throughput does not depend on weight values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from server.store.register import register_gguf
from server.store.store import Store

from .common import CorralProcess

FILE = '''"""Inventory bookkeeping for a small shop."""
from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    price_cents: int
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def value(self) -> int:
        return self.price_cents * self.quantity


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        if item.sku in self.items:
            self.items[item.sku].quantity += item.quantity
        else:
            self.items[item.sku] = item

    def remove(self, sku: str, quantity: int) -> None:
        item = self.items[sku]
        if quantity > item.quantity:
            raise ValueError("not enough stock")
        item.quantity -= quantity

''' * 6
TYPED = "    def total_value(self) -> int:\n        return sum(item.value() for item in self.items.values())\n"
SUFFIX = "\n\nif __name__ == '__main__':\n    inv = Inventory()\n"


def fim_model() -> Path:
    root = Path(tempfile.gettempdir()) / "corral-bench-fim"
    store = Store(root / "models")
    if store.find("fim-bench") is None:
        from tests.gguf_factory import write_random_llama

        path = write_random_llama(root / "fim.gguf", n_layer=12, d=768, extra_tokens=(
            ("<|fim_prefix|>", "control"), ("<|fim_suffix|>", "control"), ("<|fim_middle|>", "control"),
            ("<|fim_pad|>", "control"), ("<|repo_name|>", "control"), ("<|file_sep|>", "control")))
        register_gguf(store, "fim-bench", path)
    return root / "models"


async def replay(url: str, n: int) -> list[float]:
    step = max(1, len(TYPED) // n)
    latencies = []
    async with httpx.AsyncClient(timeout=600) as client:
        await client.post(url + "/api/generate", json={"model": "fim-bench", "prompt": ""})  # load
        for i in range(n):
            body = {"model": "fim-bench", "prompt": FILE + TYPED[: (i + 1) * step], "suffix": SUFFIX,
                    "options": {"num_predict": 8, "temperature": 0}, "keep_alive": "30m"}
            start = time.perf_counter()
            async with client.stream("POST", url + "/api/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line and json.loads(line).get("response") is not None:
                        latencies.append(1000 * (time.perf_counter() - start))
                        break
    return latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = fim_model()
    out = {"requests": args.requests}
    for label, flag in (("cache", "1"), ("no_cache", "0")):
        with CorralProcess(root, {"CORRAL_PREFIX_CACHE": flag, "OLLAMA_NUM_PARALLEL": "1"}) as server:
            lat = asyncio.run(replay(server.url, args.requests))
        out[label] = {"p50_ms": round(statistics.median(lat), 1), "p95_ms": round(pct(lat, 95), 1)}
        if not args.json:
            print(f"prefix cache {'on ' if flag == '1' else 'off'}: first token p50 {out[label]['p50_ms']:7.1f} ms  "
                  f"p95 {out[label]['p95_ms']:7.1f} ms  ({args.requests} keystrokes)", flush=True)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
