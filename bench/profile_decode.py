"""Where a decode step's time goes, sampled with py-spy from a server under streaming load.

    python -m bench.profile_decode --model gemma3:270m [--clients 4] [--tokens 256] [--json]

Starts `corral serve`, attaches `py-spy record` (needs the py-spy package; it reads the
process's stacks from outside, the server is not modified), runs N concurrent streaming
clients, and sorts every sample into: llama_decode, sampling, detokenising and stop strings,
hand-off to the event loop, the rest of the decode thread, HTTP and JSON (the event loop), idle.
Prints each category's share of the decode thread's and of the loop thread's samples.
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
import time

from .common import CorralProcess, model_store
from .throughput import corral_load

# first match wins, looked up from the innermost frame outwards
DECODE_THREAD = [
    ("llama_decode", ("llama_decode",)),
    ("sampling", ("sample (server/engine/sampling.py", "llama_sampler_sample", "_pick (", "_allowed (")),
    ("detokenise + stops", ("piece (", "_apply_stops", "decode (codecs", "getincrementaldecoder")),
    ("hand-off", ("_post (", "call_soon_threadsafe")),
    ("batch building + bookkeeping", ("_step (", "_add (", "_admit (", "_start (", "_sampled (", "_finish (")),
]
LOOP_THREAD = [
    ("deliver to requests", ("_deliver (",)),
    ("service (inference.py, reply.py)", ("inference.py", "reply.py", "toolcalls.py")),
    ("HTTP + JSON (uvicorn, litestar, msgspec)", ("uvicorn", "litestar", "msgspec", "httptools", "wire.py",
                                                  "ollama.py")),
]


def classify(stack: str, rules: list[tuple[str, tuple[str, ...]]]) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in rules:
            if any(n in frame for n in needles):
                return name
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3:270m")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = model_store(args.model)
    raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    with CorralProcess(root, {"OLLAMA_NUM_PARALLEL": str(args.clients)}) as server:
        asyncio.run(corral_load(server.url, args.model, 1, 4))  # load the model first
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid",
                                str(server.proc.pid), "--format", "raw", "--output", raw, "--threads",
                                "--rate", "200", "--nonblocking", "--native"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        agg, _ = asyncio.run(corral_load(server.url, args.model, args.clients, args.tokens))
        spy.send_signal(2)
        spy.wait(30)
    by_thread: dict[str, collections.Counter] = {"decode": collections.Counter(), "loop": collections.Counter()}
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            if "corral-decode" in stack or "_loop (server/engine/runner.py" in stack:
                idle = "wait (threading.py" in stack
                by_thread["decode"]["idle (waiting for work)" if idle else classify(stack, DECODE_THREAD)] += n
            elif "run_forever" in stack or "uvloop" in stack or "asyncio" in stack or "uvicorn" in stack:
                idle = "select" in stack.split(";")[-1] or "epoll" in stack.split(";")[-1]
                by_thread["loop"]["idle (waiting for I/O)" if idle else classify(stack, LOOP_THREAD)] += n
    out = {"clients": args.clients, "tokens": args.tokens, "agg_tok_s": round(agg, 1), "threads": {}}
    for thread, counter in by_thread.items():
        total = sum(counter.values()) or 1
        out["threads"][thread] = {k: round(100 * v / total, 1) for k, v in counter.most_common()}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.clients} streaming clients, {args.tokens} tokens each: {agg:.1f} tok/s aggregate")
    for thread, shares in out["threads"].items():
        print(f"  {thread} thread:")
        for name, pct in shares.items():
            print(f"    {pct:5.1f}%  {name}")


if __name__ == "__main__":
    main()
