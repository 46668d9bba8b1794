"""`corral train`: a client of the server's /api/train, as `corral create` is of /api/create.

    corral train NAME --from gemma3:270m --data chats.jsonl --steps 100
    corral train NAME --task sequence-classification --base /srv/hf/distilbert --data labelled.jsonl
    corral train --list | --follow ID | --cancel ID

The dataset is uploaded as a blob (sent only when the server lacks it); a folder given as --base is a
path on the server's machine (CORRAL_ALLOW_LOCAL_PATHS). Progress is printed as the job reports it;
Ctrl-C stops following, not the job (--cancel stops it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter or a classifier on the server (see --help)")
    p.add_argument("name", nargs="?", help="the model the job creates")
    p.add_argument("-d", "--data", help="the dataset (JSONL: messages, prompt/completion, or text/label)")
    p.add_argument("--from", dest="from_", default="", help="the stored GGUF model the adapter is for")
    p.add_argument("--base", default="", help="a Hugging Face folder on the server (required for a classifier)")
    p.add_argument("--task", default="causal-lm", choices=["causal-lm", "sequence-classification"])
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--eval-split", type=float, help="held-out share")
    p.add_argument("--seed", type=int)
    p.add_argument("-r", "--rank", type=int, help="LoRA rank")
    p.add_argument("--alpha", type=float, help="LoRA alpha")
    p.add_argument("--dropout", type=float, help="LoRA dropout")
    p.add_argument("--target", action="append", help="a module to adapt (repeatable; default all linear layers)")
    p.add_argument("--merged", action="store_true", help="merge into a standalone GGUF instead of an ADAPTER")
    p.add_argument("-q", "--quantize", default="", help="with --merged: q4_K_M or q8_0")
    p.add_argument("--label", action="append", help="classifier: a label name, in order (repeatable)")
    p.add_argument("--detach", action="store_true", help="print the job's id and return at once")
    p.add_argument("--list", action="store_true", help="list the jobs")
    p.add_argument("--follow", metavar="ID", help="follow a job's progress")
    p.add_argument("--cancel", metavar="ID", help="cancel a job")
    p.set_defaults(func=train)


def _fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def _error_text(resp: Any) -> str:
    try:
        return resp.json().get("error") or resp.text
    except ValueError:
        return resp.text or f"HTTP {resp.status_code}"


def request_of(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    lora = {k: v for k, v in (("r", args.rank), ("lora_alpha", args.alpha), ("lora_dropout", args.dropout),
                              ("target_modules", args.target)) if v is not None}
    training = {k: v for k, v in (("max_steps", args.steps), ("epochs", args.epochs), ("learning_rate", args.lr),
                                  ("batch_size", args.batch_size), ("gradient_accumulation_steps", args.grad_accum),
                                  ("max_seq_length", args.max_seq_length), ("eval_split", args.eval_split),
                                  ("seed", args.seed)) if v is not None}
    if args.packing:
        training["packing"] = True
    body: dict[str, Any] = {"model": args.name, "dataset": dataset, "task": args.task, "lora": lora,
                            "training": training}
    for key, value in (("from", args.from_), ("base", args.base), ("quantize", args.quantize)):
        if value:
            body[key] = value
    if args.merged:
        body["output"] = "merged"
    if args.label:
        body["labels"] = args.label
    return body


def describe(line: dict[str, Any]) -> str:
    if line.get("error"):
        return f"Error: {line['error']}"
    status = line.get("status", "")
    if status == "training":
        parts = [f"training {line.get('step')}/{line.get('total')}", f"loss {line.get('loss', 0):.4f}"]
        for key, label in (("eval_loss", "eval loss {:.4f}"), ("accuracy", "accuracy {:.3f}"), ("f1", "F1 {:.3f}"),
                           ("learning_rate", "lr {:.2e}"), ("tokens_per_second", "{:.0f} tok/s"),
                           ("eta_seconds", "eta {:.0f}s")):
            if line.get(key) is not None:
                parts.append(label.format(line[key]))
        return "  ".join(parts)
    if status == "success":
        result = line.get("result") or {}
        extra = ""
        if "after" in result:
            extra = f" (F1 {result['before'].get('f1', 0):.3f} → {result['after'].get('f1', 0):.3f})"
        elif result.get("loss") is not None:
            extra = f" (loss {result.get('first_loss', 0):.4f} → {result['loss']:.4f})"
        return f"success: model {line.get('model')}{extra}"
    if line.get("id"):
        return f"{status} {line['id']}"
    if line.get("total"):
        return f"{status} {100 * (line.get('completed') or 0) // line['total']}%"
    return status


def train(args: argparse.Namespace) -> None:
    import httpx

    from server.cli import server_url

    client = httpx.Client(base_url=server_url(), timeout=httpx.Timeout(60.0, read=None))
    try:
        client.head("/")
    except httpx.HTTPError as exc:
        _fail(f"could not connect to the server: {exc}")
    if args.list:
        resp = client.get("/api/train")
        if resp.status_code != 200:
            _fail(_error_text(resp))
        for job in resp.json()["jobs"]:
            step = job["progress"].get("step")
            where = f"{step}/{job['progress'].get('total')}" if step else job["progress"].get("status", "")
            print(f"{job['id']:<24} {job['status']:<10} {job['model']:<30} {where}")
        return
    if args.cancel:
        resp = client.delete(f"/api/train/{args.cancel}")
        if resp.status_code != 200:
            _fail(_error_text(resp))
        print(resp.json()["status"])
        return
    if args.follow:
        _print_stream(client, "GET", f"/api/train/{args.follow}", None)
        return
    if not args.name or not args.data:
        _fail("corral train NAME --data FILE (--from MODEL and/or --base FOLDER); or --list, --follow, --cancel")
    data = Path(args.data).expanduser()
    try:
        content = data.read_bytes()
    except OSError as exc:
        _fail(f"reading {data}: {exc.strerror or exc}")
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        resp = client.post(f"/api/blobs/{digest}", content=content)
        if resp.status_code >= 400:
            _fail(_error_text(resp))
    body = request_of(args, digest)
    if args.detach:
        resp = client.post("/api/train", json={**body, "stream": False})
        if resp.status_code != 200:
            _fail(_error_text(resp))
        print(resp.json()["id"])
        return
    _print_stream(client, "POST", "/api/train", body)


def _print_stream(client: Any, method: str, path: str, body: dict | None) -> None:
    last = None
    try:
        with client.stream(method, path, json=body) as resp:
            if resp.status_code >= 400:
                resp.read()
                _fail(_error_text(resp))
            for raw in resp.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                last = line
                if line.get("error"):
                    _fail(line["error"])
                print(describe(line), flush=True)
    except KeyboardInterrupt:
        print("stopped following; the job goes on (corral train --cancel ID stops it)", file=sys.stderr)
        sys.exit(130)
    if last is None or last.get("status") not in ("success", "cancelled"):
        _fail("the job did not report an end")
