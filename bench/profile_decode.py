"""Where a decode step's time goes, sampled with py-spy from a server under streaming load.

    python -m bench.profile_decode --model gemma3:270m [--clients 4] [--tokens 256] [--json]

Starts `corral serve`, attaches `py-spy record` (needs the py-spy package; it reads the
process's stacks from outside, the server is not modified), runs N concurrent streaming
clients, and sorts every sample into: llama_decode, sampling, detokenising and stop strings,
hand-off to the event loop, the rest of the decode thread, HTTP and JSON (the event loop), idle.
Prints how busy each thread was (share of the sampled time it spent off the wait queues) and each
category's share of the decode thread's and of the loop thread's samples.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import CorralProcess, model_store
from .throughput import corral_load

RATE = 250  # samples a second
RUNNER = Path(__file__).resolve().parent.parent / "server" / "engine" / "runner.py"


def _decode_lines() -> set[int]:
    """Lines of runner.py that call llama_decode (ctypes calls have no Python frame of their own)."""
    return {i for i, line in enumerate(RUNNER.read_text().splitlines(), 1) if "C.llama_decode(" in line}


def classify_decode(frames: list[str], decode_lines: set[int]) -> str:
    if any("wait (threading.py" in f for f in frames):
        return "idle (waiting for work)"
    inner = frames[-1]
    if "runner.py" in inner and inner.endswith(")") and any(f":{n})" in inner for n in decode_lines):
        return "llama_decode"
    for frame in reversed(frames):
        if "sampling.py" in frame:
            return "sampling"
        if "apply_stops" in frame or "piece (" in frame or "codecs" in frame:
            return "detokenise + stop strings"
        if "_post (" in frame or "call_soon_threadsafe" in frame:
            return "hand-off to the event loop"
        if "token_logprobs" in frame:
            return "logprobs"
    return "batch building + bookkeeping"


def classify_loop(frames: list[str]) -> str:
    inner = frames[-1]
    if "select (" in inner or "run_forever" in inner or "_run_once" in inner and len(frames) < 4:
        return "idle (waiting for I/O)"
    for frame in reversed(frames):
        if "_deliver (" in frame:
            return "deliver to requests"
        if any(x in frame for x in ("inference.py", "reply.py", "toolcalls.py")):
            return "service (inference.py, reply.py)"
        if any(x in frame for x in ("msgspec", "wire.py", "api/ollama.py")):
            return "wire encoding (msgspec, NDJSON)"
        if any(x in frame for x in ("uvicorn", "litestar", "httptools", "h11")):
            return "HTTP (uvicorn, litestar)"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seconds", type=int, default=8, help="how long to sample (inside the load)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = model_store(args.model)
    decode_lines = _decode_lines()
    raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    with CorralProcess(root, {"OLLAMA_NUM_PARALLEL": str(args.clients)}) as server:
        asyncio.run(corral_load(server.url, args.model, 1, 4, 1))  # load the model first
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
                                str(server.proc.pid), "--format", "raw", "--output", raw, "--threads",
                                "--rate", str(RATE), "--duration", str(args.seconds), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        agg, _ = asyncio.run(corral_load(server.url, args.model, args.clients, args.tokens, 1))
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
    by_thread: dict[str, collections.Counter] = {"decode": collections.Counter(), "loop": collections.Counter()}
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if any("_loop (" in fr and "runner.py" in fr for fr in frames):
                by_thread["decode"][classify_decode(frames, decode_lines)] += int(count)
            elif any("uvicorn" in fr or "asyncio" in fr for fr in frames):
                by_thread["loop"][classify_loop(frames)] += int(count)
    out = {"clients": args.clients, "tokens": args.tokens, "agg_tok_s": round(agg, 1), "threads": {}, "busy": {}}
    for thread, counter in by_thread.items():
        total = sum(counter.values()) or 1
        out["threads"][thread] = {k: round(100 * v / total, 1) for k, v in counter.most_common()}
        # py-spy leaves out samples of threads that sleep: what is left is time on a core
        out["busy"][thread] = round(100 * total / (RATE * args.seconds), 1)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.clients} streaming clients, {args.tokens} tokens each: {agg:.1f} tok/s aggregate")
    for thread, shares in out["threads"].items():
        print(f"  {thread} thread (busy {out['busy'][thread]:.1f}% of the sampled time):")
        for name, pct in shares.items():
            print(f"    {pct:5.1f}%  {name}")


if __name__ == "__main__":
    main()
