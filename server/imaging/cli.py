"""`corral create NAME --diffusers DIR`, `corral create NAME --from IMAGE_MODEL --diffusers-lora FILE` and
`corral create NAME --onnx-from IMAGE_MODEL [--adapter LORA[:SCALE]]` (POST /api/images/export).

Like `corral create -f Modelfile`, the files are uploaded to /api/blobs and /api/create gets their
digests (server/imaging/store.py describes both forms); the server never reads a client's path.
`--diffusers` takes a diffusers folder (`model_index.json` and its components), a repository id whose
snapshot is already in the local Hugging Face cache (`org/name`, read with local_files_only: no
network), or a single-file checkpoint (`.safetensors` of SD 1.5/SDXL), converted here with diffusers'
`from_single_file` (which needs `--config`, a diffusers folder or cached repository of the same
architecture, when there is no network) and uploaded as a folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

SKIP = {".gitattributes", "README.md"}


def _fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def pipeline_folder(ref: str, config: str | None, work: Path) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            _fail(f"{ref}: no model_index.json (not a diffusers pipeline folder)")
        return path
    if path.is_file() and path.suffix == ".safetensors":
        return _from_single_file(path, config, work)
    if "/" in ref and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(ref, local_files_only=True))
        except Exception as exc:
            _fail(f"{ref}: not a folder, and not in the local Hugging Face cache ({exc})")
    _fail(f"{ref}: no such folder or .safetensors file")
    raise AssertionError


def _from_single_file(file: Path, config: str | None, work: Path) -> Path:
    try:
        from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    except ImportError:
        _fail("converting a single-file checkpoint needs the imaging extra: pip install 'corral[imaging]'")
    cls = StableDiffusionPipeline
    if config:
        index = json.loads((pipeline_folder(config, None, work) / "model_index.json").read_text())
        cls = getattr(__import__("diffusers"), index["_class_name"], DiffusionPipeline)
    elif "xl" in file.name.lower():
        cls = StableDiffusionXLPipeline
    try:
        pipe = cls.from_single_file(str(file), config=str(pipeline_folder(config, None, work)) if config else None,
                                    local_files_only=True)
    except Exception as exc:
        _fail(f"{file}: diffusers could not read this checkpoint ({exc}); without a network give --config, "
              "a diffusers folder of the same architecture")
    out = work / "pipeline"
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def create_image_model(args: argparse.Namespace, server_url: str) -> None:
    import httpx

    client = httpx.Client(base_url=server_url, timeout=httpx.Timeout(30.0, read=None))
    try:
        client.head("/")
    except httpx.HTTPError as exc:
        _fail(f"could not connect to the server: {exc}")

    def upload(file: Path) -> str:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with open(file, "rb") as f:
                resp = client.post(f"/api/blobs/{digest}", content=f)
            if resp.status_code >= 400:
                _fail(resp.text)
        print(f"copying file {digest} 100%")
        return digest

    request: dict = {"model": args.name}
    with tempfile.TemporaryDirectory(prefix="corral-create-") as tmp:
        if args.diffusers:
            folder = pipeline_folder(args.diffusers, args.config, Path(tmp))
            files = {}
            for file in sorted(folder.rglob("*")):
                rel = file.relative_to(folder).as_posix()
                if file.is_file() and rel not in SKIP and not any(p.startswith(".") for p in rel.split("/")):
                    files[rel] = upload(file.resolve())
            request["files"] = files
        if args.diffusers_lora:
            if not args.from_:
                _fail("--diffusers-lora needs --from IMAGE_MODEL (the pipeline the LoRA is for)")
            request["from"] = args.from_
            request["adapters"] = {Path(f).name: upload(Path(f).expanduser()) for f in args.diffusers_lora}
        elif args.from_ and not args.diffusers:
            request["from"] = args.from_
    last = None
    with client.stream("POST", "/api/create", json=request) as resp:
        if resp.status_code >= 400:
            resp.read()
            try:
                _fail(resp.json().get("error") or resp.text)
            except ValueError:
                _fail(resp.text)
        for line in resp.iter_lines():
            if line.strip():
                item = json.loads(line)
                if item.get("error"):
                    _fail(item["error"])
                last = item.get("status")
                print(last, flush=True)
    if last != "success":
        _fail("the server did not report success")


def export_onnx_model(args: argparse.Namespace, server_url: str) -> None:
    """`corral create NAME --onnx-from IMAGE_MODEL [--adapter LORA[:SCALE] …]`: the server exports the model
    (POST /api/images/export); its progress lines are printed as they come."""
    import httpx

    if args.diffusers or args.diffusers_lora or args.from_:
        _fail("--onnx-from goes alone (with --adapter): it exports a stored image model")
    client = httpx.Client(base_url=server_url, timeout=httpx.Timeout(30.0, read=None))
    request = {"model": args.name, "from": args.onnx_from, "adapters": list(args.adapter or [])}
    last = None
    try:
        with client.stream("POST", "/api/images/export", json=request) as resp:
            if resp.status_code >= 400:
                resp.read()
                try:
                    _fail(resp.json().get("error") or resp.text)
                except ValueError:
                    _fail(resp.text)
            for line in resp.iter_lines():
                if line.strip():
                    item = json.loads(line)
                    if item.get("error"):
                        _fail(item["error"])
                    last = item.get("status")
                    print(last, flush=True)
    except httpx.HTTPError as exc:
        _fail(f"could not connect to the server: {exc}")
    if last != "success":
        _fail("the server did not report success")
