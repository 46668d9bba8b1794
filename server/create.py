"""/api/create: a new model from an existing one or from uploaded GGUF blobs, plus Modelfile layers.

Two request forms, as Ollama accepts them:

* current: `{model, from, files: {relpath: "sha256:…"}, adapters, template, system, license,
  parameters, messages, quantize}` — the CLI uploads every file to /api/blobs first;
* legacy (≤ v0.5.4): `{name|model, modelfile, path, quantize}` — the Modelfile's FROM/ADAPTER name a
  model, an `@sha256:<hex>` blob, or a path on the server's disk.

`from` may name a stored model (its layers are inherited; the request's template/system/messages/
license replace the inherited ones and its parameters are merged over them) or an `@sha256:…` blob.
Paths on the server's disk (`path`, a `from`/FROM/ADAPTER path) are refused unless the operator
allows their directory (CORRAL_ALLOW_LOCAL_PATHS, see `local_paths`): clients upload files instead.

Everything that can be wrong with a request is checked before the first progress object, so it
fails with a proper status (400/404) and writes nothing; the manifest is written last, only when
every layer exists. Blobs uploaded before a failed create stay, as in Ollama. Re-creating a name
removes the layers of the manifest it replaced that no manifest uses any more (not with
OLLAMA_NOPRUNE).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import local_paths
from . import modelfile as mfile
from .options import OPTION_TYPES
from .inference import BadRequest
from .store import manifest as mf
from .store.gguf import FILE_TYPES, GGUFError, GGUFInfo, read_info
from .store.names import InvalidName, ModelName
from .store.register import format_count
from .store.store import InvalidDigest, Store, parse_digest
from adapters import intake as adapter_intake

# quantize names (case-insensitive) → (llama_ftype, name Ollama prints)
QUANT_TYPES = {"q4_k_m": (15, "Q4_K_M"), "q8_0": (7, "Q8_0")}
QUANTIZABLE = {"F32", "F16", "BF16"}
# rough output/input size ratio from F16, for quantize progress
_QUANT_RATIO = {"Q4_K_M": 4.9 / 16, "Q8_0": 8.5 / 16}
PLACEHOLDER_DIGEST = "0000000000000000000"  # what Ollama reports as the digest of quantize progress
PROGRESS_EVERY = 0.5


class CreateError(BadRequest):
    """A create request that cannot be done as asked (400)."""


@dataclass
class CreateSpec:
    """What a create request asks for, in either of Ollama's forms (fields, or a legacy Modelfile)."""

    name: str
    from_: str = ""  # a model name, `@sha256:…` or a path on the server (where allowed)
    files: dict[str, str] = field(default_factory=dict)  # {relative path: "sha256:…"} of uploaded blobs
    adapters: dict[str, str] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict] | None = None  # [{"role": …, "content": …}]
    quantize: str = ""  # q4_K_M | q8_0
    requires: str = ""  # the Ollama version the model needs
    modelfile: str = ""  # legacy: the Modelfile text
    path: str = ""  # legacy: a Modelfile on the server's disk (where allowed)


@dataclass
class Source:
    """One GGUF file of the new model: its blob and what its header says."""

    relpath: str
    digest: str
    size: int
    info: GGUFInfo
    media_type: str


@dataclass
class Plan:
    """A create request, resolved and validated: nothing can fail for the client's fault after this."""

    name: ModelName
    base: Any = None  # the store Entry of `from`, when it names a model
    base_name: str = ""
    sources: list[Source] = field(default_factory=list)  # model/projector files
    adapters: list[Source] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    license: list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict] | None = None
    quantize: tuple[int, str] | None = None
    requires: str | None = None
    replaced: Any = None  # set by build: the store Entry the new manifest replaced
    written: mf.Manifest | None = None  # set by build: the manifest written


# ---- validation ----------------------------------------------------------------------------


def check_relpath(path: str) -> str:
    """A `files` key: a relative, clean path (Go's fs.ValidPath, no `\\` or `:`)."""
    parts = path.split("/")
    if (not path or path == "." or path.startswith("/") or "\\" in path or ":" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise CreateError(f"file path must be relative: {path}")
    return path


def _blob_digest(store: Store, relpath: str, digest: str) -> str:
    try:
        canonical = parse_digest(digest)
    except InvalidDigest:
        raise CreateError(f"invalid digest for {relpath}: invalid digest format") from None
    if not store.has_blob(canonical):
        raise CreateError(f"blob not found for {relpath} (digest {digest})")
    return canonical


def inspect_gguf(path: str | os.PathLike, source: str) -> GGUFInfo:
    """Read a GGUF header and check the file holds all its tensor data (a truncated upload fails here)."""
    try:
        info = read_info(str(path))
    except GGUFError as exc:
        if "magic" in str(exc):
            raise CreateError(f"supplied file was not in GGUF format: {source}") from None
        raise CreateError(f"invalid GGUF file {source}: {_detail(exc)}") from None
    size = os.path.getsize(path)
    if size < info.required_size:
        raise CreateError(f"invalid GGUF file {source}: truncated, {size} bytes of {info.required_size}")
    return info


def _detail(exc: Exception) -> str:
    return str(exc).removeprefix("invalid GGUF file: ").removeprefix("invalid GGUF header: ")


def _media_type(info: GGUFInfo) -> str:
    kind = str(info.kv.get("general.type", "")).lower()
    if kind == "adapter":
        return mf.ADAPTER
    if kind in ("projector", "mmproj") or (info.architecture == "clip" and not info.arch_value("block_count")):
        return mf.PROJECTOR
    return mf.MODEL


def _normalize_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, typed like the options they set (unknown → 400)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or key in mfile.DEPRECATED_PARAMETERS:
            continue
        kind = OPTION_TYPES.get(key)
        if kind is None:
            raise CreateError(f"unknown parameter '{key}'")
        if isinstance(value, str) and kind is not list:
            try:
                value = mfile.typed_parameter(key, value)
            except mfile.ModelfileError as exc:
                raise CreateError(str(exc)) from None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float and number:
            try:
                ok = mfile.valid_float(float(value))  # a 400-digit int: OverflowError
            except OverflowError:
                ok = False
            if not ok:
                raise CreateError(f"invalid float value {value}")
            out[key] = value
        elif kind is int and number:
            if isinstance(value, float):
                if not (mfile.valid_float(value) and value.is_integer()):
                    raise CreateError(f"invalid int value {value}")
                value = int(value)
            if not mfile.valid_int(value):
                raise CreateError(f"invalid int value {value}")
            out[key] = value
        elif kind is bool and isinstance(value, bool):
            out[key] = value
        elif kind is list and isinstance(value, str):
            out[key] = [value]
        elif kind is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            raise CreateError(f"invalid value for parameter '{key}': {value!r}")
    return out


def check_template(text: str) -> None:
    """Ollama's setTemplate: a TEMPLATE that does not parse as a Go template fails the create
    (errBadTemplate, 400) before anything is written."""
    from .template.gotemplate import TemplateError
    from .template.ollama import template_variables

    try:
        template_variables(text)
    except (TemplateError, RecursionError) as exc:
        raise CreateError(f"template error: {exc}") from None


def _license(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


# ---- resolving a request --------------------------------------------------------------------


async def plan(store: Store, req: CreateSpec) -> Plan:
    """Validate a create request (either form) against the store; raise CreateError/404 otherwise."""
    raw_name = req.name
    if not raw_name:
        raise CreateError("model is required")
    try:
        name = ModelName.parse(raw_name)
    except InvalidName:
        raise CreateError(f"invalid model name {raw_name!r}") from None

    p = Plan(name=name)
    quantize = req.quantize
    if quantize:
        key = quantize.lower()
        if key not in QUANT_TYPES:
            raise CreateError(f"unsupported quantization type {quantize}: supported types are q4_K_M, q8_0")
        p.quantize = QUANT_TYPES[key]

    from_ = req.from_
    files = dict(req.files or {})
    adapters = dict(req.adapters or {})
    template = req.template or None
    system = req.system or None
    license_ = _license(req.license)
    parameters = dict(req.parameters) if req.parameters else None
    messages = list(req.messages) if req.messages else None
    base_dir: Path | None = None
    if req.requires:
        if not mfile.SEMVER.match(req.requires):
            raise CreateError("requires must be a valid semver (e.g. 0.14.0)")
        p.requires = req.requires.removeprefix("v")

    if req.modelfile or (req.path and not files and not from_):
        # legacy: a Modelfile, given as text or as a path on the server; relative FROM/ADAPTER paths
        # are taken from the Modelfile's directory, when that may be read
        text = req.modelfile
        if not text:
            try:
                text, real = local_paths.read_modelfile(req.path)
            except local_paths.LocalPathError as exc:
                raise CreateError(str(exc)) from None
            base_dir = real.parent
        elif req.path:
            # old CLIs sent the Modelfile's path beside its (blob-rewritten) text: not an error
            with contextlib.suppress(local_paths.LocalPathError):
                base_dir = local_paths.resolve(req.path, is_path=True).parent
        try:
            parsed = mfile.parse(text)
        except mfile.ModelfileError as exc:
            # the client's own text may be quoted back; a file from the server's disk may not
            raise CreateError(str(exc) if req.modelfile else local_paths.not_a_modelfile(req.path)) from None
        from_ = parsed.from_
        for i, adapter in enumerate(parsed.adapters):
            adapters[f"adapter{i or ''}.gguf"] = adapter  # resolved below, like `from`
        fields_ = parsed.create_fields()
        template = fields_.get("template", template)
        system = fields_.get("system", system)
        license_ = fields_.get("license", license_)
        parameters = fields_.get("parameters", parameters)
        messages = fields_.get("messages", messages)
        p.requires = parsed.requires or p.requires

    if not from_ and not files:
        raise CreateError("neither 'from' or 'files' was specified")

    # the cheap checks first: nothing is imported into the store unless the whole request is valid
    for relpath in list(files) + list(adapters):
        check_relpath(relpath)
    p.template, p.system, p.license, p.messages = template, system, license_, messages
    if p.template is not None:
        check_template(p.template)
    p.parameters = _normalize_parameters(parameters) if parameters else None
    for m in p.messages or []:
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise CreateError(f"invalid message role: {m['role']!r}")

    # adapters: blob digests (current form) or `@sha256:…`/paths (legacy Modelfile)
    located_adapters: dict[str, tuple[str | Path, str]] = {}
    for relpath, ref in adapters.items():
        where = _locate(store, ref, base_dir)
        if where is None:
            if not ref.startswith("sha256"):
                raise CreateError(f"adapter not found: {ref}")
            where = _blob_digest(store, relpath, ref)
        located_adapters[relpath] = (where, ref)

    located_from: str | Path | None = None
    if from_:
        located_from = _locate(store, from_, base_dir)
        if located_from is None:
            p.base = store.get(from_)  # ModelNotFound: 404
            p.base_name = p.base.name.display
            files = {}

    # now files on the server's disk are checked and imported (the only writes before building)
    if located_from is not None:
        key = "model.gguf" if from_.startswith("@") else Path(from_).name
        files = {key: await _import(store, located_from, from_)}
    resolved_adapters = {rel: await _import(store, where, ref) for rel, (where, ref) in located_adapters.items()}

    for relpath in sorted(files):
        digest = _blob_digest(store, relpath, files[relpath])
        info = await asyncio.to_thread(inspect_gguf, store.blob_path(digest), relpath)
        media = _media_type(info)
        src = Source(relpath, digest, store.blob_path(digest).stat().st_size, info, media)
        (p.adapters if media == mf.ADAPTER else p.sources).append(src)
    peft_adapters, resolved_adapters = adapter_intake.split_peft(resolved_adapters, store.blob_path)
    for relpath, digest in sorted(resolved_adapters.items()):
        info = await asyncio.to_thread(inspect_gguf, store.blob_path(digest), relpath)
        p.adapters.append(Source(relpath, digest, store.blob_path(digest).stat().st_size, info, mf.ADAPTER))

    if p.base is None:
        models = [s for s in p.sources if s.media_type == mf.MODEL]
        if not models:
            raise CreateError("no model file found: the files hold no GGUF model")
        if len(models) > 1:
            raise CreateError("only one GGUF model file is supported (split GGUFs are not)")

    if p.quantize is not None:
        current = _model_file_type(store, p)
        if current not in QUANTIZABLE:
            raise CreateError(f"quantization is only supported for F16 and F32 models, this one is {current or 'unknown'}")
    if p.adapters or peft_adapters:  # every adapter fits the model; PEFT folders become GGUF LoRAs (last: they import)
        converted = await asyncio.to_thread(
            adapter_intake.settle, store.blobs, lambda tmp: store.import_file(tmp, None, True).digest,
            store.blob_path, [(s.relpath, s.digest) for s in p.adapters], peft_adapters, _model_path(store, p))
        for relpath, digest in converted:
            info = await asyncio.to_thread(inspect_gguf, store.blob_path(digest), relpath)
            p.adapters.append(Source(relpath, digest, store.blob_path(digest).stat().st_size, info, mf.ADAPTER))
    return p


def _model_path(store: Store, p: Plan) -> Path:
    """The blob of the new model's weights (from `files`, else the base model's)."""
    for src in p.sources:
        if src.media_type == mf.MODEL:
            return store.blob_path(src.digest)
    layer = p.base.manifest.layer(mf.MODEL) if p.base is not None else None
    if layer is None:
        raise CreateError("adapters need a model to apply to: the base has no model layer")
    return store.blob_path(layer.digest)


def _locate(store: Store, ref: str, base_dir: Path | None) -> str | Path | None:
    """`@sha256:<hex>` → that blob's digest; a path on the server, in an allowed directory → its
    real path (a path elsewhere: 400). None: `ref` is neither (a model name, or a plain digest)."""
    if ref.startswith("@"):
        try:
            digest = parse_digest(ref[1:])
        except InvalidDigest:
            raise CreateError(f"invalid blob reference {ref!r}") from None
        if not store.has_blob(digest):
            raise CreateError(f"blob not found: {digest}")
        return digest
    try:
        return local_paths.resolve(ref, base_dir)
    except local_paths.LocalPathError as exc:
        raise CreateError(str(exc)) from None


async def _import(store: Store, where: str | Path, source: str) -> str:
    """A located file (checked to be a whole GGUF first) → its blob digest. A file that cannot be
    read gets one message, whether it is missing or forbidden."""
    if isinstance(where, str):
        return where
    try:
        local_paths.check_readable(where, source)
    except local_paths.LocalPathError as exc:
        raise CreateError(str(exc)) from None
    await asyncio.to_thread(inspect_gguf, where, source)
    layer = await asyncio.to_thread(store.import_file, where)
    return layer.digest


def _model_file_type(store: Store, p: Plan) -> str:
    for src in p.sources:
        if src.media_type == mf.MODEL:
            return FILE_TYPES.get(src.info.kv.get("general.file_type", -1), "")
    if p.base is not None:
        layer = p.base.manifest.layer(mf.MODEL)
        if layer is not None:
            info = read_info(str(store.blob_path(layer.digest)))
            return FILE_TYPES.get(info.kv.get("general.file_type", -1), "")
    return ""


# ---- building the model -------------------------------------------------------------------


async def create(store: Store, req: CreateSpec, *, threads: int | None = None) -> AsyncIterator[dict]:
    """Validate (before the first item: errors get a status), then build and yield Ollama's progress."""
    from .imaging import store as image_store  # diffusion pipelines and their LoRAs (no heavy imports)

    if not req.modelfile and image_store.handles(store, req.files or {}, req.from_):
        async for item in image_store.create(store, req.name, req.files, req.from_, req.adapters, req.parameters):
            yield item
        return
    p = await plan(store, req)
    # the blobs the new model is made of stay, whatever a concurrent delete removes
    digests = [s.digest for s in p.sources + p.adapters]
    if p.base is not None:
        digests += p.base.manifest.digests()
    with store.pin(digests):
        async for item in build(store, p, threads=threads):
            yield item
    # as Ollama's CreateHandler: the replaced manifest's layers that no manifest uses any more go
    # (after the pins are released: `from` may be the very model being replaced)
    if p.replaced is not None and p.written is not None and not store.noprune():
        stale = set(p.replaced.manifest.digests()) - set(p.written.digests())
        if stale:
            await asyncio.to_thread(store.remove_unused, stale)
    yield {"status": "success"}


async def build(store: Store, p: Plan, *, threads: int | None = None) -> AsyncIterator[dict]:
    """Write the new layers and the manifest (the last item is "writing manifest"; `create` ends
    with "success")."""
    existing = {path.name for path in store.blobs.iterdir()}

    def is_new(digest: str) -> bool:
        return digest.replace(":", "-") not in existing

    layers: list[mf.Layer] = []
    config: dict[str, Any] = {}
    if p.base is not None:
        layers = [mf.Layer(mediaType=x.mediaType, digest=x.digest, size=x.size, from_=x.from_)
                  for x in p.base.manifest.layers]
        if p.base.manifest.config is not None and store.has_blob(p.base.manifest.config.digest):
            with contextlib.suppress(ValueError):
                config = json.loads(store.read_blob(p.base.manifest.config.digest))
        config["parent_model"] = p.base_name
    for src in p.sources:
        yield {"status": "parsing GGUF"}
        layers.append(mf.Layer(mediaType=src.media_type, digest=src.digest, size=src.size))
        if src.media_type == mf.MODEL:
            config.update(_config_for(src.info))
    if p.adapters:
        layers = [x for x in layers if x.mediaType != mf.ADAPTER]
        for src in p.adapters:
            yield {"status": "parsing GGUF"}
            layers.append(mf.Layer(mediaType=mf.ADAPTER, digest=src.digest, size=src.size))

    if p.quantize is not None:
        model_layer = next(x for x in layers if x.mediaType == mf.MODEL)
        new_layer, info = None, None
        async for item in _quantize(store, model_layer, p.quantize, threads):
            if isinstance(item, dict):
                yield item
            else:
                new_layer, info = item
        layers = [new_layer if x is model_layer else x for x in layers]
        config["file_type"] = FILE_TYPES.get(info.kv.get("general.file_type", -1), p.quantize[1])

    base_params: dict[str, Any] = {}
    if p.parameters is not None:
        old = next((x for x in reversed(layers) if x.mediaType == mf.PARAMS), None)
        if old is not None:
            with contextlib.suppress(ValueError):
                base_params = json.loads(store.read_blob(old.digest))
    texts = [
        (mf.TEMPLATE, p.template),
        (mf.SYSTEM, p.system),
        (mf.PARAMS, json.dumps({**base_params, **p.parameters}) if p.parameters is not None else None),
        (mf.MESSAGES, json.dumps(p.messages) if p.messages is not None else None),
    ]
    for media_type, text in texts:
        if text is None:
            continue
        layers = [x for x in layers if x.mediaType != media_type]
        layers.append(store.write_blob_bytes(text.encode("utf-8"), media_type))
    if p.license is not None:
        layers = [x for x in layers if x.mediaType != mf.LICENSE]
        for text in p.license:
            layers.append(store.write_blob_bytes(text.encode("utf-8"), mf.LICENSE))

    for layer in layers:
        yield {"status": f"{'creating new' if is_new(layer.digest) else 'using existing'} layer {layer.digest}"}

    config.setdefault("model_format", "gguf")
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    config["rootfs"] = {"type": "layers", "diff_ids": [x.digest for x in layers]}
    if p.requires:
        config["requires"] = p.requires
    config_layer = store.write_blob_bytes(json.dumps(config).encode("utf-8"), mf.CONFIG_MEDIA_TYPE)

    yield {"status": "writing manifest"}
    manifest = mf.Manifest(config=config_layer, layers=layers)
    p.replaced = store.find(p.name)
    store.write_manifest(p.name, manifest)
    p.written = manifest


def _config_for(info: GGUFInfo) -> dict[str, Any]:
    arch = info.architecture
    return {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch] if arch else None,
        "model_type": format_count(info.parameter_count),
        "file_type": FILE_TYPES.get(info.kv.get("general.file_type", -1), ""),
    }


async def _quantize(store: Store, layer: mf.Layer, quant: tuple[int, str], threads: int | None
                    ) -> AsyncIterator[dict | tuple[mf.Layer, GGUFInfo]]:
    """Quantize the model blob with llama.cpp in a worker thread; the result is imported as a new blob."""
    ftype, qname = quant
    src = store.blob_path(layer.digest)
    src_info = await asyncio.to_thread(read_info, str(src))
    src_type = FILE_TYPES.get(src_info.kv.get("general.file_type", -1), "F16")
    status = f"quantizing {src_type} model to {qname}"
    ratio = _QUANT_RATIO.get(qname, 0.5) * (0.5 if src_type == "F32" else 1.0)
    total = max(1, int(layer.size * ratio))
    fd, tmp = tempfile.mkstemp(dir=store.blobs, prefix=".quantize-", suffix=".gguf")
    os.close(fd)
    try:
        yield {"status": status, "digest": PLACEHOLDER_DIGEST, "total": total, "completed": 0}
        task = asyncio.ensure_future(asyncio.to_thread(_llama_quantize, str(src), tmp, ftype, threads))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_EVERY)
                if not task.done():
                    done = min(total, os.path.getsize(tmp)) if os.path.exists(tmp) else 0
                    yield {"status": status, "digest": PLACEHOLDER_DIGEST, "total": total, "completed": done}
            task.result()
        finally:
            if not task.done():
                # the thread cannot be interrupted: let it finish before the temp file goes away
                with contextlib.suppress(BaseException):
                    await asyncio.shield(task)
        yield {"status": status, "digest": PLACEHOLDER_DIGEST, "total": total, "completed": total}
        yield {"status": "verifying conversion"}
        info = await asyncio.to_thread(inspect_gguf, tmp, "quantized model")
        new = await asyncio.to_thread(store.import_file, tmp, None, True)
        yield (mf.Layer(mediaType=mf.MODEL, digest=new.digest, size=new.size), info)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _llama_quantize(src: str, dst: str, ftype: int, threads: int | None) -> None:
    import llama_cpp.llama_cpp as ll

    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    rc = ll.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise CreateError(f"quantization to this type failed for this model (llama.cpp error {rc})")
