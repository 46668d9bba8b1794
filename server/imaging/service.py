"""ImageService: image generation as an in-process service (HTTP routes, tools and agents call it).

A pipeline is a loaded model of the scheduler like any other (keep_alive, OLLAMA_MAX_LOADED_MODELS, the
memory plan, `/api/ps`): `PipelineLoader` is the scheduler's loader for models with a diffusers index,
and the `PipelineQueue` it makes is that loaded model's runner. Requests wait in the queue (its length
counts toward OLLAMA_MAX_QUEUE, beyond which a 503); the queue's worker takes the first waiting job and
every other waiting job with the same size, steps, scheduler, guidance, strength and adapter set (up to
CORRAL_IMAGE_BATCH images) and runs them as one denoising run in its own thread. Progress comes back per
step; a request whose caller goes away is dropped from the queue, or, running, stops its run between two
steps once every job of that run is gone; in a run shared with others its rows leave the batch between two
steps (pipeline.py: `_drop_rows`), or, where the pipeline cannot drop rows, its images are discarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engine.memory import InsufficientMemory, Plan
from ..errors import BadRequest, EngineError
from ..scheduler import Loaded, ModelLoadError, RunnerOptions, Scheduler
from ..store import manifest as mf
from ..store.model import Model, find_model
from ..store.names import InvalidName, ModelName
from ..store.store import Store
from . import png, require_imaging
from .pipeline import DEFAULT_STEPS, Cancelled, Job
from .request import FORMATS, ImageRequest
from .store import folder_for, is_image_entry, lora_layers, pipeline_model, prune_folders

log = logging.getLogger("corral.imaging")

PIPELINE_OPTIONS = RunnerOptions(num_ctx=0)  # a pipeline has no context; equal options never reload it
BATCH_WINDOW = 0.02  # seconds the worker waits after a first request for others to batch with it
GiB = 1 << 30


@dataclass
class Progress:
    completed: int
    total: int


@dataclass
class GeneratedImage:
    data: bytes
    media_type: str
    format: str
    seed: int
    width: int
    height: int
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Partial:
    index: int  # which preview of the request (0 … partial_images-1)
    images: list[GeneratedImage]


@dataclass
class Done:
    images: list[GeneratedImage]
    load_duration: int  # ns
    total_duration: int
    input_tokens: int = 0  # the prompt's tokens, as the pipeline's (first) tokenizer makes them for its text encoder


class PipelineQueue:
    """A loaded pipeline and its waiting jobs: the scheduler's `Loaded.runner` (and `.llama`) for it."""

    seqs: tuple = ()  # the metrics read these of every runner: a pipeline has no sequences or KV cache
    n_ctx = 1
    n_parallel = 1

    def __init__(self, pipeline: Any, max_batch: int):
        self.pipeline = pipeline
        self.max_batch = max(1, max_batch)
        self._pending: list[Job] = []
        self.stats = {"generated_tokens": 0, "images": 0, "runs": 0}
        self._worker: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-image")
        self._closed = False

    def submit(self, job: Job) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()  # type: ignore[attr-defined]
        self._pending.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())
        return job.future  # type: ignore[attr-defined]

    def withdraw(self, job: Job) -> None:
        job.cancelled.set()
        if job in self._pending:
            self._pending.remove(job)

    def _next_batch(self) -> list[Job]:
        first = self._pending[0]
        batch, images = [], 0
        for job in list(self._pending):
            if job.key == first.key and (not batch or images + len(job.seeds) <= self.max_batch):
                batch.append(job)
                images += len(job.seeds)
                self._pending.remove(job)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(BATCH_WINDOW)
        while self._pending and not self._closed:
            batch = self._next_batch()
            log.info("denoising %d image(s) of %d request(s): %dx%d, %d steps", sum(len(j.seeds) for j in batch),
                     len(batch), batch[0].width, batch[0].height, batch[0].steps)
            try:
                results = await asyncio.shield(loop.run_in_executor(self._thread, self._run, batch))
            except Cancelled:
                for job in batch:
                    _settle(job, exc=asyncio.CancelledError())
                continue
            except Exception as exc:  # the pipeline failed: each request gets the error, the queue goes on
                log.exception("image generation failed")
                for job in batch:
                    _settle(job, exc=EngineError(f"image generation failed: {exc}"))
                continue
            self.stats["runs"] += 1
            self.stats["images"] += sum(len(r) for r in results)
            for job, images in zip(batch, results):
                _settle(job, result=images)

    def _run(self, batch: list[Job]) -> list[list[Any]]:
        """In the queue's thread: the prompts' token counts (here, as a fast tokenizer is not to be used
        from two threads at once), then the run."""
        for job in batch:
            job.prompt_tokens = prompt_tokens(self.pipeline, job.request.prompt)
        return self.pipeline.run(batch)

    def close(self) -> None:
        """Free the pipeline (in the scheduler's thread); a run under way finishes first."""
        if self._closed:
            return
        self._closed = True
        self._thread.shutdown(wait=True)
        self.pipeline.close()


def prompt_tokens(pipeline: Any, prompt: str) -> int:
    """The tokens of `prompt` its text encoder reads: the pipeline's (first) tokenizer with its start and end
    tokens, cut at the tokenizer's length as the pipeline cuts it (77 for CLIP), no padding; 0 without one."""
    tokenizer = getattr(getattr(pipeline, "base", None), "tokenizer", None)
    if tokenizer is None or not prompt:
        return 0
    try:
        return len(tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)
    except Exception:  # a tokenizer that takes other arguments: not counted
        return 0


def _settle(job: Job, result: Any = None, exc: BaseException | None = None) -> None:
    future: asyncio.Future = job.future  # type: ignore[attr-defined]
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    elif exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class PipelineLoader:
    """The scheduler's loader for diffusion pipelines (Scheduler.loaders)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir / "imaging" / "pipelines"

    def serves(self, model: Model) -> bool:
        return model.diffusers_index is not None

    def _weights(self, model: Model) -> int:
        files = (model.diffusers_index or {}).get("files", {})
        return sum(model.store.blob_path(d).stat().st_size for rel, d in files.items()
                   if rel.endswith((".safetensors", ".onnx", ".onnx_data", ".pb")))

    def plan(self, model: Model, options: RunnerOptions, *, gpu_free: int, ram_free: int) -> Plan:
        """Weights plus room for activations (a quarter of the weights, at least 256 MiB): on the GPU
        when it fits there, else in system memory."""
        need = self._weights(model)
        need += max(256 << 20, need // 4)
        if gpu_free >= need and _cuda():
            return Plan(gpu_layers=1, gpu_bytes=need, cpu_bytes=0)
        if need > ram_free:
            raise InsufficientMemory(f"model requires more system memory ({need / GiB:.1f} GiB) "
                                     f"than is available ({ram_free / GiB:.1f} GiB)")
        return Plan(gpu_layers=0, gpu_bytes=0, cpu_bytes=need)

    def load(self, model: Model, options: RunnerOptions, placement: Plan) -> Loaded:
        require_imaging()
        try:
            folder = folder_for(model, self.root)
            if (model.diffusers_index or {}).get("variant") == "onnx":
                from .onnx import OnnxPipeline

                pipeline: Any = OnnxPipeline(folder, use_gpu=placement.gpu_layers > 0)
            else:
                from .pipeline import Pipeline

                pipeline = Pipeline(folder, use_gpu=placement.gpu_layers > 0, threads=self.settings.num_threads)
        except Exception as exc:
            raise ModelLoadError(f"unable to load model {model.name}: {exc}") from exc
        log.info("loaded image pipeline %s (%s, %.2f GiB)", model.name, type(pipeline.base).__name__,
                 (placement.gpu_bytes + placement.cpu_bytes) / GiB)
        queue = PipelineQueue(pipeline, self.settings.image_batch)
        return Loaded(model=model, options=options, llama=queue, runner=queue,  # type: ignore[arg-type]
                      keep_alive=self.settings.keep_alive, plan=placement)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class ImageService:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler):
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.loader = PipelineLoader(settings)
        scheduler.loaders.append(self.loader)
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, once a request used this service
        self._unloading: set[asyncio.Task] = set()
        store.on_removed.append(self._blobs_removed)
        try:  # folders of pipelines deleted while no server ran
            gone = prune_folders(store, self.loader.root)
        except OSError as exc:
            log.warning("could not clean %s: %s", self.loader.root, exc)
        else:
            if gone:
                log.info("removed %d pipeline folder(s) no model uses", len(gone))

    def _blobs_removed(self, removed: list[str]) -> None:
        """Store.remove_unused removed these blobs (a delete, or a replaced model): a pipeline whose index
        went is used by no model any more, so its folder goes (it holds hard links: the disk space stays
        taken until then) and, loaded, it is unloaded (a delete unloads the model's own digest, and a
        pipeline is loaded as its index's)."""
        for name in prune_folders(self.store, self.loader.root, removed):
            log.info("removed the folder of pipeline %s (no model uses it)", name[:12])
        loop = self._loop
        for digest in removed:
            hexdigest = digest.removeprefix("sha256:")
            if loop is not None and hexdigest in self.scheduler.loaded:
                loop.call_soon_threadsafe(self._unload, hexdigest)

    def _unload(self, hexdigest: str) -> None:
        task = asyncio.ensure_future(self.scheduler.unload(hexdigest))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    # ---- lookup --------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        return find_model(self.store, name)

    def is_image_model(self, name: str) -> bool:
        """Whether `name` is a stored image model (False for unknown or invalid names)."""
        try:
            return is_image_entry(self.store.find(ModelName.parse(name)))
        except InvalidName:
            return False

    def image_models(self) -> list[str]:
        return sorted(e.name.display for e in self.store.list() if is_image_entry(e))

    def _image_model(self, name: str) -> Model:
        model = self.model(name)
        if model.diffusers_index is None:
            raise BadRequest(f'"{name}" does not support image generation')
        return model

    def _adapters(self, model: Model, req: ImageRequest) -> tuple[tuple[str, str, float], ...]:
        """(adapter name, file, scale) of the model's own LoRA layers (scale 1) and the request's."""
        if req.adapters and (model.diffusers_index or {}).get("variant") == "onnx":
            raise BadRequest("LoRA adapters on an ONNX model are fused when it is exported "
                             "(ImageService.export_onnx with adapters)")
        chosen: dict[str, tuple[str, float]] = {}
        for layer in lora_layers(model):
            chosen[_adapter_name(layer)] = (str(self.store.blob_path(layer.digest)), 1.0)
        index = model.manifest.layer(mf.DIFFUSERS_INDEX)
        for name, scale in req.adapters:
            other = self.model(name)
            layers = lora_layers(other)
            if not layers:
                raise BadRequest(f"adapter {name!r} is not a LoRA model (create one with --diffusers-lora)")
            theirs = other.manifest.layer(mf.DIFFUSERS_INDEX)
            if theirs is None or index is None or theirs.digest != index.digest:
                raise BadRequest(f"adapter {name!r} was made for another pipeline than {model.name!r}")
            for layer in layers:
                chosen[_adapter_name(layer)] = (str(self.store.blob_path(layer.digest)), scale)
        return tuple(sorted((n, path, scale) for n, (path, scale) in chosen.items()))

    def keep_alive(self, value: Any) -> float | None:
        from ..config import parse_duration

        try:
            return parse_duration(value, None)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc

    # ---- load / unload -------------------------------------------------------------------

    async def load(self, name: str, keep_alive: Any = None) -> str:
        """The empty-prompt form: load the pipeline ("load"), or unload it with keep_alive 0 ("unload")."""
        self._loop = asyncio.get_running_loop()
        model = pipeline_model(self._image_model(name))
        keep = self.keep_alive(keep_alive)
        if keep == 0:
            await self.scheduler.unload(model.digest)
            return "unload"
        require_imaging()
        await self.scheduler.load(model, PIPELINE_OPTIONS, keep)
        return "load"

    # ---- generation ----------------------------------------------------------------------

    async def generate(self, req: ImageRequest) -> AsyncIterator[Progress | Partial | Done]:
        """Progress per step (and previews), then Done with the images. Errors before the first item
        are the caller's (BadRequest 400, NotFound 404, QueueFull 503, ModelLoadError)."""
        start = time.perf_counter_ns()
        self._loop = asyncio.get_running_loop()
        req.check()
        model = self._image_model(req.model)
        adapters = self._adapters(model, req)
        if (model.diffusers_index or {}).get("variant") == "onnx" and req.mode != "text2img":
            raise BadRequest(f"{req.model} is an ONNX model: it makes images from text only (edit with its PyTorch model)")
        image = mask = None
        if req.image is not None:
            image = await asyncio.to_thread(png.open_image, req.image, "image")
        if req.mask is not None:
            mask = await asyncio.to_thread(png.open_image, req.mask, "mask", "L")
            if mask.size != image.size:
                raise BadRequest(f"mask must be the same size as the image ({image.width}x{image.height}), "
                                 f"got {mask.width}x{mask.height}")
        keep = self.keep_alive(req.keep_alive)
        require_imaging()
        base = pipeline_model(model)
        async with self.scheduler.use(base, PIPELINE_OPTIONS, keep) as loaded:
            load_ns = time.perf_counter_ns() - start
            queue: PipelineQueue = loaded.runner  # type: ignore[assignment]
            refusal = queue.pipeline.refuses(req.mode)
            if refusal:
                raise BadRequest(f"{req.model} cannot make this image: {refusal}")
            job = self._job(queue, model, req, image, mask, adapters)
            async for item in self._run(queue, job):
                yield item
            images = job.future.result()  # type: ignore[attr-defined]
        out = await asyncio.to_thread(self._encode_all, images, job)
        yield Done(images=out, load_duration=load_ns, total_duration=time.perf_counter_ns() - start,
                   input_tokens=job.prompt_tokens)

    def _job(self, queue: PipelineQueue, model: Model, req: ImageRequest, image: Any, mask: Any,
             adapters: tuple) -> Job:
        params = model.parameters
        for key in ("negative_prompt", "scheduler"):
            if getattr(req, key) in ("", "default") and params.get(key):
                setattr(req, key, params[key])
        req.check()
        width, height = req.width or params.get("width"), req.height or params.get("height")
        if image is not None and not (width and height):
            width, height = (image.width // 8) * 8 or 8, (image.height // 8) * 8 or 8
        if not (width and height):
            width, height = queue.pipeline.default_size
        steps = req.steps or int(params.get("steps") or DEFAULT_STEPS)
        guidance = req.guidance_scale if req.guidance_scale is not None else float(
            params.get("guidance_scale", queue.pipeline.default_guidance))
        if image is not None and image.size != (width, height):
            image = image.resize((width, height))
            if mask is not None:
                mask = mask.resize((width, height))
        return Job(request=req, width=int(width), height=int(height), steps=steps, guidance=guidance,
                   seeds=req.seeds(), adapters=adapters, image=image, mask=mask)

    async def _run(self, queue: PipelineQueue, job: Job) -> AsyncIterator[Progress | Partial]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job.on_step = lambda k, n: loop.call_soon_threadsafe(events.put_nowait, Progress(k, n))
        job.on_partial = lambda i, imgs: loop.call_soon_threadsafe(events.put_nowait, (i, imgs))
        future = queue.submit(job)
        total = job.steps if job.request.mode == "text2img" else max(1, int(job.steps * (job.request.strength or 0.8)))
        try:
            yield Progress(0, total)
            while True:
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, future}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                item = get.result()
                if isinstance(item, tuple):
                    index, imgs = item
                    encoded = await asyncio.to_thread(self._encode_all, imgs, job)
                    yield Partial(index=index, images=encoded)
                else:
                    yield item
            while not events.empty():
                item = events.get_nowait()
                if isinstance(item, Progress):
                    yield item
            future.result()  # the run's error, if any
        finally:
            if not future.done():
                queue.withdraw(job)  # the caller left: out of the queue, or its run stops between steps

    def _encode_all(self, images: list, job: Job) -> list[GeneratedImage]:
        req = job.request
        out = []
        for seed, img in zip(job.seeds, images):
            settings = {"model": req.model, "prompt": req.prompt, "negative_prompt": req.negative_prompt,
                        "steps": job.steps, "guidance_scale": job.guidance, "scheduler": req.scheduler,
                        "seed": seed, "width": job.width, "height": job.height, "mode": req.mode,
                        "strength": req.strength, "adapters": [list(a) for a in req.adapters]}
            data = png.encode(img, req.output_format, settings, req.output_compression)
            out.append(GeneratedImage(data=data, media_type=FORMATS[req.output_format], format=req.output_format,
                                      seed=seed, width=job.width, height=job.height, settings=settings))
        return out

    async def export_onnx(self, name: str, target: str, adapters: list[tuple[str, float]] | None = None
                          ) -> AsyncIterator[dict]:
        """Export an image model to ONNX as the new model `target` (LoRA adapters fused at their scales);
        Ollama-style progress (`{"status"}`, with `completed`/`total` of the three parts), "success" last.
        Every bad input fails before the first item: an unknown model 404, a model that is not a PyTorch
        image model, a taken or invalid target name, a bad adapter 400."""
        import tempfile

        from . import onnx, store as image_store

        if not target:
            raise BadRequest("the new model's name is required")
        try:
            taken = self.store.find(ModelName.parse(target))
        except InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        if taken is not None:
            raise BadRequest(f"model {target!r} already exists (delete it first, or choose another name)")
        model = self._image_model(name)
        if (model.diffusers_index or {}).get("variant") == "onnx":
            raise BadRequest(f"{name} is already an ONNX model")
        fused = self._adapters(model, ImageRequest(model=name, prompt="", adapters=list(adapters or [])))
        require_imaging()
        folder = folder_for(pipeline_model(model), self.loader.root)
        work = self.settings.data_dir / "imaging" / "exports"
        work.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def progress(k: int, n: int, status: str) -> None:
            loop.call_soon_threadsafe(events.put_nowait, {"status": status, "completed": k, "total": n})

        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=work) as tmp:
            yield {"status": "exporting to ONNX"}
            task = asyncio.ensure_future(asyncio.to_thread(onnx.export, folder, Path(tmp) / "onnx",
                                                           [(p, s) for _, p, s in fused], progress))
            try:
                while not task.done() or not events.empty():
                    get = asyncio.ensure_future(events.get())
                    await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                    if get.done():
                        yield get.result()
                    else:
                        get.cancel()
                out = task.result()
            except ValueError as exc:  # a pipeline the exporter does not take (not UNet + CLIP)
                raise BadRequest(str(exc)) from exc
            finally:
                if not task.done():  # the caller left: the export thread finishes, then its folder goes
                    with contextlib.suppress(Exception):
                        await asyncio.shield(task)
            files = {}
            for file in sorted(out.rglob("*")):
                if file.is_file():
                    files[file.relative_to(out).as_posix()] = (await asyncio.to_thread(self.store.import_file,
                                                                                       file)).digest
            async for item in image_store.create(self.store, target, files, "", {}, None):
                yield item

    async def generate_once(self, req: ImageRequest) -> Done:
        """All of `generate`, the images only (tools and scripts)."""
        it = self.generate(req)
        try:
            async for item in it:
                if isinstance(item, Done):
                    return item
        finally:
            await it.aclose()
        raise EngineError("no image was made")


def _adapter_name(layer: mf.Layer) -> str:
    return "lora_" + layer.digest.removeprefix("sha256:")[:16]
