"""Command-line verbs of retrieval (registered by server/cli.py):

    corral collection add NAME FILES... [--create] [--model M] [--metadata JSON]   (uploads, shows progress)
    corral collection list | show NAME | rm NAME | search NAME QUERY [-k N] [--mode M]
    corral export-onnx NAME DIR --task embedding|rerank     (a local transformers folder into the model store)

`collection` talks to the running server (OLLAMA_HOST); `export-onnx` writes the local model store
(OLLAMA_MODELS) directly, as it reads a local folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("collection", help="document collections: add NAME FILES..., list, show, rm, search")
    p.add_argument("action", choices=["add", "list", "show", "rm", "search"])
    p.add_argument("name", nargs="?")
    p.add_argument("rest", nargs="*", help="files (add) or the query (search)")
    p.add_argument("--create", action="store_true", help="add: create the collection when it does not exist")
    p.add_argument("--model", default="all-minilm", help="with --create: the embedding model")
    p.add_argument("--metadata", default="", help="add: a JSON object of metadata for every file")
    p.add_argument("-k", type=int, default=5, help="search: results")
    p.add_argument("--mode", default="hybrid", help="search: hybrid, vector or keyword")
    p.set_defaults(func=collection)
    e = sub.add_parser("export-onnx", help="export a local transformers model to ONNX into the model store")
    e.add_argument("name")
    e.add_argument("directory")
    e.add_argument("--task", choices=["embedding", "rerank"], required=True)
    e.set_defaults(func=export_onnx)


def _fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def collection(args: argparse.Namespace) -> None:
    import httpx

    from server.cli import _error_text, server_url

    if args.action != "list" and not args.name:
        _fail(f"collection {args.action} needs a NAME")
    client = httpx.Client(base_url=server_url(), timeout=httpx.Timeout(30.0, read=None))
    try:
        if args.action == "add":
            _add(client, args, _error_text)
            return
        if args.action == "list":
            resp = client.get("/api/collections")
        elif args.action == "show":
            resp = client.get(f"/api/collections/{args.name}")
        elif args.action == "rm":
            resp = client.delete(f"/api/collections/{args.name}")
        else:
            resp = client.post(f"/api/collections/{args.name}/search",
                               json={"query": " ".join(args.rest), "k": args.k, "mode": args.mode})
    except httpx.HTTPError as exc:
        _fail(f"could not connect to the server: {exc}")
    if resp.status_code != 200:
        _fail(_error_text(resp))
    if args.action == "list":
        for c in resp.json()["collections"]:
            print(f"{c['name']:<30} {c['documents']:>8} documents {c['chunks']:>9} chunks  {c['embedding_model']}")
    elif args.action == "show":
        print(json.dumps(resp.json(), indent=2))
    elif args.action == "search":
        for i, h in enumerate(resp.json()["results"], 1):
            page = f" page {h['page']}" if h.get("page") else ""
            print(f"[{i}] {h['document_name']}{page} ({h['score']:.4f})\n    {h['text'][:300]}")
    else:
        print("deleted")


def _add(client, args, error_text) -> None:
    files = [Path(f).expanduser() for f in args.rest]
    if not files:
        _fail("collection add needs FILES")
    for f in files:
        if not f.is_file():
            _fail(f"{f}: no such file")
    if args.metadata:
        try:
            if not isinstance(json.loads(args.metadata), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            _fail(f"--metadata must be a JSON object: {exc}")
    if args.create and client.get(f"/api/collections/{args.name}").status_code == 404:
        resp = client.post("/api/collections", json={"name": args.name, "embedding_model": args.model})
        if resp.status_code != 200:
            _fail(error_text(resp))
    upload = [("file", (f.name, f.read_bytes())) for f in files]
    data = {"stream": "true", **({"metadata": args.metadata} if args.metadata else {})}
    with client.stream("POST", f"/api/collections/{args.name}/documents", files=upload, data=data) as resp:
        if resp.status_code != 200:
            resp.read()
            _fail(error_text(resp))
        for line in resp.iter_lines():
            if not line:
                continue
            item = json.loads(line)
            if "error" in item:
                _fail(item["error"])
            if "documents" in item:
                for d in item["documents"]:
                    print(f"{d['status']:<10} {d['name']} ({d['chunks']} chunks)")
            elif "total" in item and item["total"]:
                print(f"{item['status']} {item['completed']}/{item['total']}")
            else:
                print(item["status"])


def export_onnx(args: argparse.Namespace) -> None:
    from server.config import Settings
    from server.errors import BadRequest
    from server.store.store import Store

    from .errors import RetrievalUnavailable
    from .onnx_export import export_model

    try:
        entry = export_model(Store(Settings.from_env().models_dir), args.name, Path(args.directory).expanduser(),
                             args.task)
    except (BadRequest, RetrievalUnavailable, OSError, ValueError) as exc:
        _fail(str(exc))
    print(f"exported {entry.name.display}")
