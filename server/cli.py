"""`corral serve` and friends."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path


def serve(args: argparse.Namespace) -> None:
    from .app import create_app
    from .config import Settings

    settings = Settings.from_env()
    level = logging.DEBUG if os.environ.get("OLLAMA_DEBUG") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != logging.DEBUG:
        logging.getLogger("llama.cpp").setLevel(logging.WARNING)
    if os.environ.get("CORRAL_ASGI_SERVER", "uvicorn") == "granian":
        # one worker: the engine lives in this process; settings come from the environment
        from granian.server import Server

        remove_store_leftovers(settings.models_dir)
        Server("server.app:create_app", address=settings.host, port=settings.port, interface="asgi",
               factory=True, log_level="warning").serve()
        return
    import uvicorn

    from .http_limits import body_timeout, header_timeout_protocol

    sock = listen(settings.host, settings.port)  # first: a second server stops here, having done nothing
    remove_store_leftovers(settings.models_dir)
    # on SIGTERM, requests still running get 5 s (Ollama stops at once; `docker stop` kills after 10 s)
    app = body_timeout(create_app(settings), settings.body_timeout)
    config = uvicorn.Config(app, log_level="warning", access_log=False, http=header_timeout_protocol(settings.header_timeout),
                            loop="uvloop", timeout_keep_alive=max(1, round(settings.keepalive_timeout)),
                            limit_concurrency=settings.max_connections, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def remove_store_leftovers(models_dir: Path) -> threading.Timer:
    """Remove the temporary files a killed server left in the store (blobs/.upload-*, .tmp-*,
    .quantize-*, .assemble-*, manifests/…/.tmp-*), before the app starts.

    Which of them does no live request own? Another server may share this store, and its writes
    (an upload from a slow client, a quantize) go to such files too; nothing marks a file as owned,
    so the rule is `Store.clean_temp`'s: a file goes when nothing in it changed for TEMP_MAX_AGE
    (10 minutes), which a writer making progress never lets happen (an upload stalled that long
    fails, and its client sends it again). A restart right after a crash finds its own leftovers
    too fresh for that: one more pass, TEMP_MAX_AGE after start, removes them."""
    from .store.store import TEMP_MAX_AGE, Store

    store = Store(models_dir)  # opening a store removes its stale temporary files
    later = threading.Timer(TEMP_MAX_AGE + 1, store.remove_leftovers)
    later.daemon = True  # never holds up the process's exit
    later.start()
    return later


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound; exits with Ollama's message when the address is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = (exc.strerror or str(exc)).lower()
        sys.exit(f"Error: listen tcp {where}: bind: {reason}")
    return sock


def server_url() -> str:
    """The server the client commands talk to: OLLAMA_HOST, as the Ollama CLI reads it."""
    from .config import parse_host

    raw = os.environ.get("OLLAMA_HOST", "").strip()
    scheme = raw.split("://", 1)[0] if "://" in raw else "http"
    host, port = parse_host(raw)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def create(args: argparse.Namespace) -> None:
    """`ollama create NAME -f Modelfile`: parse locally, upload local files as blobs, POST /api/create
    with their digests. The server is never asked to read a path: it refuses to unless its operator
    allows the directory (CORRAL_ALLOW_LOCAL_PATHS), and the file may not even be on its machine."""
    import hashlib
    import json

    import httpx

    from . import modelfile

    def fail(message: str) -> None:
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)

    if getattr(args, "onnx_from", None):
        from .imaging.cli import export_onnx_model  # an image model exported to ONNX (/api/images/export)

        return export_onnx_model(args, server_url())
    if getattr(args, "diffusers", None) or getattr(args, "diffusers_lora", None):
        from .imaging.cli import create_image_model  # a diffusion pipeline or a LoRA for one

        return create_image_model(args, server_url())
    path = Path(args.file).expanduser()
    try:
        parsed = modelfile.parse(path.read_text())
    except OSError as exc:
        fail(f"reading {path}: {exc.strerror or exc}")
    except modelfile.ModelfileError as exc:
        fail(str(exc))
    for warning in parsed.warnings:
        print(f"warning: {warning}")

    def local_files(ref: str) -> list[Path] | None:
        """The files a FROM/ADAPTER names on this machine (relative to the Modelfile): a file, or a
        directory's GGUF files (a model and its projector). None: not a local path (a model name,
        `@sha256:…`), as Ollama's CLI decides: by whether something exists there."""
        candidate = Path(ref).expanduser()
        if not candidate.is_absolute():
            candidate = path.parent / candidate
        if candidate.is_file():
            return [candidate.resolve()]
        if candidate.is_dir():
            found = sorted(p.resolve() for p in candidate.glob("*.gguf") if p.is_file())
            if not found:
                fail(f"{ref}: no GGUF file in this directory (only GGUF models can be imported, not safetensors)")
            return found
        if ref.startswith(("/", "~", "./", "../")) or ref in (".", ".."):
            fail(f"{ref}: no such file")  # meant as a path: a model name never looks like this
        return None

    client = httpx.Client(base_url=server_url(), timeout=httpx.Timeout(30.0, read=None))
    try:
        client.head("/")
    except httpx.HTTPError as exc:
        fail(f"could not connect to the server: {exc}")

    def upload(file: Path) -> str:
        """The file as a blob on the server (sent only when the server lacks it) → its digest."""
        h = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with open(file, "rb") as f:
                resp = client.post(f"/api/blobs/{digest}", content=f)
            if resp.status_code >= 400:
                fail(_error_text(resp))
        print(f"copying file {digest} 100%")
        return digest

    request: dict = {"model": args.name}
    files: dict[str, str] = {}
    adapters: dict[str, str] = {}
    print("gathering model components")
    for ref in parsed.froms:
        found = local_files(ref)
        if found is None:
            request["from"] = ref
        for file in found or []:
            files[file.name] = upload(file)
    for i, ref in enumerate(parsed.adapters):
        folder = path.parent / Path(ref).expanduser()  # relative to the Modelfile; an absolute path stays
        if (folder / "adapter_config.json").is_file():
            # a PEFT folder: its safetensors and JSON files, as Ollama's CLI sends them (the server converts
            # it); each of several folders under a directory of its own, so that their files stay apart
            found = sorted(p.resolve() for p in [*folder.glob("*.safetensors"), *folder.glob("*.json")] if p.is_file())
            prefix = f"adapter{i}/" if len(parsed.adapters) > 1 else ""
            for file in found:
                adapters[prefix + file.name] = upload(file)
            continue
        found = local_files(ref)
        if found is None:
            fail(f"adapter file not found: {ref}")
        for file in found:
            adapters[file.name] = upload(file)
    if files:
        request["files"] = files
    if adapters:
        request["adapters"] = adapters
    request.update(parsed.create_fields())
    if args.quantize:
        request["quantize"] = args.quantize

    status = None
    with client.stream("POST", "/api/create", json=request) as resp:
        if resp.status_code >= 400:
            resp.read()
            fail(_error_text(resp))
        for line in resp.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("error"):
                fail(item["error"])
            text = item.get("status", "")
            if item.get("total"):
                text = f"{text} {100 * item.get('completed', 0) // item['total']}%"
            if text != status:
                status = text
                print(text, flush=True)
    if status != "success":
        fail("the server did not report success")


def _error_text(resp) -> str:
    try:
        return resp.json().get("error") or resp.text
    except ValueError:
        return resp.text or f"HTTP {resp.status_code}"


def agent(args: argparse.Namespace) -> None:
    """`corral agent create NAME -f FILE` (a JSON definition), `corral agent list`, `corral agent rm NAME`."""
    import json

    import httpx

    def fail(message: str) -> None:
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(1)

    client = httpx.Client(base_url=server_url(), timeout=30.0)
    try:
        if args.action == "create":
            try:
                definition = json.loads(Path(args.file).expanduser().read_text())
            except OSError as exc:
                fail(f"reading {args.file}: {exc.strerror or exc}")
            except ValueError as exc:
                fail(f"{args.file} is not JSON: {exc}")
            if not isinstance(definition, dict):
                fail(f"{args.file}: an agent definition is a JSON object")
            definition["name"] = args.name
            resp = client.post("/api/agents", json=definition)
        elif args.action == "rm":
            resp = client.delete(f"/api/agents/{args.name}")
        else:
            resp = client.get("/api/agents")
    except httpx.HTTPError as exc:
        fail(f"could not connect to the server: {exc}")
    if resp.status_code != 200:
        fail(_error_text(resp))
    if args.action == "list":
        for a in resp.json()["agents"]:
            print(f"{a['name']:<30} {a['kind']:<6} {a.get('model', '')}")
    elif args.action == "create":
        print("success")


def main(argv: list[str] | None = None) -> None:
    from . import OLLAMA_API_VERSION, __version__

    parser = argparse.ArgumentParser(prog="corral", description="Ollama-compatible server on llama.cpp")
    parser.add_argument("--version", action="version",
                        version=f"corral {__version__} (Ollama API {OLLAMA_API_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the server (OLLAMA_HOST, default 127.0.0.1:11434)").set_defaults(func=serve)
    create_parser = sub.add_parser("create", help="create a model from a Modelfile (like `ollama create`)")
    create_parser.add_argument("name")
    create_parser.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    create_parser.add_argument("-q", "--quantize", default="", help="quantize the model: q4_K_M or q8_0")
    create_parser.add_argument("--diffusers", metavar="DIR", help="an image model from a diffusers folder, a cached "
                               "Hugging Face repository or a single-file .safetensors checkpoint")
    create_parser.add_argument("--config", metavar="DIR", help="with a single-file checkpoint: a diffusers folder "
                               "or cached Hugging Face repository of the same architecture (its configs), or "
                               "the checkpoint's original .yaml")
    create_parser.add_argument("--diffusers-lora", metavar="FILE", action="append",
                               help="a LoRA (.safetensors) for the image model --from (repeatable)")
    create_parser.add_argument("--from", dest="from_", metavar="MODEL", help="the image model a LoRA is for")
    create_parser.add_argument("--onnx-from", metavar="IMAGE_MODEL", help="export this image model to ONNX as NAME")
    create_parser.add_argument("--adapter", metavar="NAME[:SCALE]", action="append",
                               help="with --onnx-from: a LoRA model fused before the export (repeatable)")
    create_parser.set_defaults(func=create)
    agent_parser = sub.add_parser("agent", help="manage agents: create NAME -f FILE, list, rm NAME")
    agent_parser.add_argument("action", choices=["create", "list", "rm"])
    agent_parser.add_argument("name", nargs="?")
    agent_parser.add_argument("-f", "--file", default="agent.json", help="the agent definition (JSON)")
    agent_parser.set_defaults(func=agent)
    from .retrieval.cli import add_parsers as add_retrieval_parsers  # `collection …`, `export-onnx`

    add_retrieval_parsers(sub)
    from adapters.training.cli import add_parsers as add_training_parsers  # `train …`

    add_training_parsers(sub)
    args = parser.parse_args(argv)
    if getattr(args, "action", None) in ("create", "rm") and not args.name:
        parser.error(f"agent {args.action} needs a NAME")
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
