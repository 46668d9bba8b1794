"""`corral create NAME --diffusers DIR`, `corral create NAME --from IMAGE_MODEL --diffusers-lora FILE` and
`corral create NAME --onnx-from IMAGE_MODEL [--adapter LORA[:SCALE]]` (POST /api/images/export).

Like `corral create -f Modelfile`, the files are uploaded to /api/blobs and /api/create gets their
digests (server/imaging/store.py describes both forms); the server never reads a client's path.
`--diffusers` takes a diffusers folder (`model_index.json` and its components), a repository id whose
snapshot is already in the local Hugging Face cache (`org/name` under HF_HUB_CACHE or HF_HOME/hub, read
with local_files_only: no network), or a single-file checkpoint (`.safetensors` of SD 1.x/2.x/SDXL),
converted here with diffusers' `from_single_file` and uploaded as a folder. Nothing is downloaded for
that either: the components' configs, tokenizer and scheduler come from `--config` (a diffusers folder,
or a repository of the same architecture whose configs are cached, e.g. by an earlier online
from_single_file; or the checkpoint's original LDM .yaml), else from the cached repository diffusers
names for the checkpoint's kind (stable-diffusion-v1-5/stable-diffusion-v1-5 for SD 1.x, …).
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


# what diffusers' from_single_file reads of a repository: the components' configs, tokenizer and scheduler
CONFIG_PATTERNS = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]


def _cached(repo: str, allow_patterns: list[str] | None = None) -> Path:
    """A repository's snapshot in the local Hugging Face cache (HF_HUB_CACHE / HF_HOME), never the network.
    huggingface_hub refuses a snapshot its cached file listing shows incomplete (an interrupted download)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, local_files_only=True, allow_patterns=allow_patterns))


def pipeline_folder(ref: str, config: str | None, work: Path) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            _fail(f"{ref}: no model_index.json (not a diffusers pipeline folder)")
        return path
    if path.is_file() and path.suffix == ".safetensors":
        return _from_single_file(path, config, work)
    if path.is_file():
        _fail(f"{ref}: a single-file checkpoint must be .safetensors (pickled .ckpt/.pt files run code when loaded)")
    if "/" in ref and not path.exists():
        try:
            folder = _cached(ref)
        except Exception as exc:
            _fail(f"{ref}: not a folder, and not in the local Hugging Face cache ({exc})")
        if not (folder / "model_index.json").is_file():
            _fail(f"{ref}: the cached snapshot has no model_index.json (not a diffusers pipeline)")
        return folder
    _fail(f"{ref}: no such folder or .safetensors file")
    raise AssertionError


def _config_folder(config: str) -> Path:
    """--config: a diffusers folder, or a repository whose configs are in the local Hugging Face cache."""
    path = Path(config).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            _fail(f"--config {config}: no model_index.json (not a diffusers pipeline folder)")
        return path
    if "/" in config and not path.exists():
        try:
            folder = _cached(config, CONFIG_PATTERNS)
        except Exception as exc:
            _fail(f"--config {config}: not a folder, and not in the local Hugging Face cache ({exc})")
        if (folder / "model_index.json").is_file():
            return folder
    _fail(f"--config {config}: not a diffusers folder, a cached repository or an original .yaml config")
    raise AssertionError


class _Shape:
    def __init__(self, shape: list[int]):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)


def _model_type(file: Path) -> str:
    """diffusers' guess of a checkpoint's kind (v1, v2, xl_base, …) from its tensor names and shapes (the
    safetensors header only)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        shapes = {k: _Shape(f.get_slice(k).get_shape()) for k in f.keys()}
    return infer_diffusers_model_type(shapes)


def _from_single_file(file: Path, config: str | None, work: Path) -> Path:
    """Convert a single-file checkpoint into a diffusers folder without the network. The components'
    configs (and the tokenizer and scheduler, which a checkpoint does not hold) come from `config`: a
    diffusers folder or cached repository of the same architecture (diffusers' `config=`), or an original
    LDM .yaml (`original_config=`, whose tokenizer and text-encoder config diffusers still reads from the
    cache). Without `config`, the repository diffusers would download for this kind of checkpoint
    (stable-diffusion-v1-5/stable-diffusion-v1-5 for SD 1.x, …) must be in the local cache."""
    try:
        import diffusers
        from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS
    except ImportError:
        _fail("converting a single-file checkpoint needs the imaging extra: pip install 'corral[imaging]'")
    try:
        kind = _model_type(file)
    except Exception as exc:
        _fail(f"{file}: not a readable safetensors checkpoint ({exc})")
    kwargs: dict = {"local_files_only": True}
    folder = None
    if config and Path(config).suffix in (".yaml", ".yml"):
        if not Path(config).expanduser().is_file():
            _fail(f"--config {config}: no such file")
        kwargs["original_config"] = str(Path(config).expanduser())
    elif config:
        folder = _config_folder(config)
    else:
        repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS.get(kind, {}).get("pretrained_model_name_or_path", "")
        try:
            folder = _cached(repo, CONFIG_PATTERNS)
        except Exception:
            _fail(f"{file} looks like a {kind!r} checkpoint, whose configs ({repo or 'unknown'}) are not in the local "
                  "Hugging Face cache, and nothing is downloaded: give --config, a diffusers folder or cached "
                  "repository of the same architecture (or the checkpoint's original .yaml)")
    if folder is not None:
        kwargs["config"] = str(folder)
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    else:
        name = {"xl_base": "StableDiffusionXLPipeline", "xl_refiner": "StableDiffusionXLImg2ImgPipeline",
                "xl_inpaint": "StableDiffusionXLInpaintPipeline", "inpainting": "StableDiffusionInpaintPipeline",
                "inpainting_v2": "StableDiffusionInpaintPipeline"}.get(kind, "StableDiffusionPipeline")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        _fail(f"{name or 'this pipeline'} cannot be made from a single-file checkpoint (diffusers {diffusers.__version__})")
    try:
        pipe = cls.from_single_file(str(file), **kwargs)
    except Exception as exc:
        hint = ("with an original .yaml, diffusers still reads the text encoder's config and tokenizer from the "
                "cache (openai/clip-vit-large-patch14 for SD 1.x); else give " if "original_config" in kwargs
                else "without a network give ")
        _fail(f"{file}: diffusers could not read this checkpoint ({exc}); {hint}--config, a diffusers folder or "
              "cached repository of the same architecture")
    out = work / "pipeline"
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
OTHER_FRAMEWORKS = (".msgpack", ".h5", ".ot")  # Flax, TensorFlow, Rust weights: never read by a PyTorch pipeline


def pipeline_files(folder: Path) -> dict[str, Path]:
    """{relpath: file} of a pipeline folder to upload: model_index.json and its components' folders. A
    repository snapshot holds more than a pipeline needs: root-level checkpoints (`v1-5-pruned.ckpt`),
    Flax/TF weights, pickled copies and variants (`….fp16.safetensors`) of weights also there as plain
    safetensors; those are left out. A pickled file with no safetensors beside it stays (the server refuses
    it, with the reason)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except ValueError:
        index = {}
    components = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}
    files: dict[str, Path] = {}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        parts = rel.split("/")
        if not file.is_file() or rel in SKIP or any(p.startswith(".") for p in parts) or rel.endswith(OTHER_FRAMEWORKS):
            continue
        if rel == "model_index.json" or (len(parts) > 1 and parts[0] in components):
            files[rel] = file
    plain = {rel.removesuffix(".safetensors") for rel in files if rel.endswith(".safetensors")}
    with_safetensors = {rel.rsplit("/", 1)[0] for rel in plain}
    for rel in list(files):
        stem = rel.removesuffix(".safetensors")
        if rel.endswith(".safetensors") and "." in stem.rsplit("/", 1)[-1] and stem.rsplit(".", 1)[0] in plain:
            del files[rel]  # a variant (fp16, ema, …) of weights the folder also holds plainly
        elif rel.endswith(PICKLED) and rel.rsplit("/", 1)[0] in with_safetensors:
            del files[rel]
    return files


def _follow(client, path: str, request: dict) -> None:
    """POST a streamed request and print its progress lines' statuses; exit 1 with the server's error, or
    when the last status is not "success"."""
    import httpx

    last = None
    try:
        with client.stream("POST", path, json=request) as resp:
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
            request["files"] = {rel: upload(file.resolve()) for rel, file in pipeline_files(folder).items()}
        if args.diffusers_lora:
            if not args.from_:
                _fail("--diffusers-lora needs --from IMAGE_MODEL (the pipeline the LoRA is for)")
            request["from"] = args.from_
            request["adapters"] = {Path(f).name: upload(Path(f).expanduser()) for f in args.diffusers_lora}
        elif args.from_ and not args.diffusers:
            request["from"] = args.from_
    _follow(client, "/api/create", request)


def export_onnx_model(args: argparse.Namespace, server_url: str) -> None:
    """`corral create NAME --onnx-from IMAGE_MODEL [--adapter LORA[:SCALE] …]`: the server exports the model
    (POST /api/images/export); its progress lines are printed as they come."""
    import httpx

    if args.diffusers or args.diffusers_lora or args.from_:
        _fail("--onnx-from goes alone (with --adapter): it exports a stored image model")
    client = httpx.Client(base_url=server_url, timeout=httpx.Timeout(30.0, read=None))
    request = {"model": args.name, "from": args.onnx_from, "adapters": list(args.adapter or [])}
    _follow(client, "/api/images/export", request)
