"""A loaded diffusion pipeline: one denoising run for a batch of compatible jobs, in a worker thread.

The pipeline class comes from the model's own `model_index.json` (`DiffusionPipeline.from_pretrained`);
image-to-image and inpainting use diffusers' auto pipelines made from it (`from_pipe`: the same weights).
On CUDA it runs in fp16 with attention slicing and VAE slicing and tiling; on the CPU in fp32.

LoRA adapters stay loaded on the pipeline (`load_lora_weights` once per adapter file, at most
MAX_ADAPTERS, least recently used dropped first); each run sets the batch's adapters and scales with
`set_adapters`, and a run with none disables them, so the base weights compute exactly as before.

Each image has its own `torch.Generator` seeded with its seed, so an image is the same whether it is
made alone or in a batch with others. A job that leaves a run shared with others has its rows taken out of
the batch at the next step's end (`_drop_rows`: latents, prompt embeddings, the scheduler's per-row state,
the generators), where the pipeline allows it (`_can_drop_rows`); elsewhere its images are discarded.

diffusers' LoRA hot-swap (`enable_lora_hotswap`, `load_lora_weights(hotswap=True)`) is not used: it only
saves a recompilation of a `torch.compile`d UNet (not compiled here), needs one rank for every adapter
chosen before the first load and the same target layers as the adapter replaced, and skips text encoders.
"""

from __future__ import annotations

import gc
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schedulers
from .request import ImageRequest

log = logging.getLogger("corral.imaging")

MAX_ADAPTERS = 8
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5  # where a pipeline's call names no default of its own


def call_default(pipe: Any, name: str, fallback: float) -> float:
    """The default a diffusers pipeline's own call gives parameter `name` (guidance_scale: 7.5 for
    Stable Diffusion 1.x and its ONNX pipeline, 5.0 for SDXL, 8.5 for LCM), else `fallback`."""
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    default = None if param is None else param.default
    return float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else fallback


class Cancelled(Exception):
    """Every job of a run went away: the run stops between two steps."""


@dataclass
class Job:
    """One request in a pipeline's queue, resolved against the loaded pipeline."""

    request: ImageRequest
    width: int
    height: int
    steps: int
    guidance: float
    seeds: list[int]
    adapters: tuple[tuple[str, str, float], ...]  # (adapter name, file, scale)
    image: Any = None  # PIL input image (edits), already at width x height
    mask: Any = None
    # set by the service: called from the worker thread
    on_step: Callable[[int, int], None] = lambda k, n: None
    on_partial: Callable[[int, list], None] = lambda index, images: None  # (partial index, PIL images)
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0  # set by the queue's worker thread (service.py: prompt_tokens)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys run as one batch."""
        r = self.request
        # an empty negative prompt is not batched with a set one: SDXL zeroes the negative embeddings of a
        # call without one (force_zeros_for_empty_prompt), which a batch can only do for all of its rows
        return (r.mode, self.width, self.height, self.steps, r.scheduler, self.guidance, r.strength, self.adapters,
                bool(r.negative_prompt))


class Pipeline:
    """A diffusers pipeline loaded from a folder, on the GPU (fp16) when `use_gpu` and CUDA is present."""

    def __init__(self, folder: Path, *, use_gpu: bool = True, threads: int = 0):
        import torch
        from diffusers import DiffusionPipeline

        if threads:
            torch.set_num_threads(threads)
        self.cuda = use_gpu and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.dtype = torch.float16 if self.cuda else torch.float32
        pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=self.dtype, use_safetensors=True,
                                                 local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        if self.cuda:
            pipe.enable_attention_slicing()
            if hasattr(pipe, "vae"):
                pipe.vae.enable_slicing()
                pipe.vae.enable_tiling()
        self.base = pipe
        self.default_scheduler = pipe.scheduler
        self._modes: dict[str, Any] = {"text2img": pipe}
        self._adapters: OrderedDict[str, str] = OrderedDict()  # adapter name → file, loaded on the pipeline
        self.lock = threading.Lock()
        self.dropped_rows = 0  # images of requests that left a shared run, no longer computed

    @property
    def default_guidance(self) -> float:
        return call_default(self.base, "guidance_scale", DEFAULT_GUIDANCE)

    @property
    def default_size(self) -> tuple[int, int]:
        unet = getattr(self.base, "unet", None) or getattr(self.base, "transformer", None)
        factor = getattr(self.base, "vae_scale_factor", 8)
        side = int(getattr(unet.config, "sample_size", 64)) * factor if unet is not None else 512
        return side, side

    def refuses(self, mode: str) -> str | None:
        """Why this pipeline cannot run a request of `mode` (None: it can). An inpainting UNet (9 input
        channels: the latents, the mask, the masked image) makes images only from an image and a mask."""
        unet = getattr(self.base, "unet", None)
        if unet is not None and getattr(unet.config, "in_channels", 4) == 9 and mode != "inpaint":
            return "it is an inpainting model (its UNet takes a mask): send an image and a mask"
        return None

    def _pipe_for(self, mode: str) -> Any:
        if mode not in self._modes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            pipe = cls.from_pipe(self.base)
            pipe.set_progress_bar_config(disable=True)
            self._modes[mode] = pipe
        return self._modes[mode]

    def _set_adapters(self, adapters: tuple[tuple[str, str, float], ...]) -> None:
        pipe = self.base
        for name, path, _ in adapters:
            if name in self._adapters:
                self._adapters.move_to_end(name)
                continue
            if len(self._adapters) >= MAX_ADAPTERS:
                old, _ = self._adapters.popitem(last=False)
                pipe.delete_adapters([old])
            pipe.load_lora_weights(path, adapter_name=name)
            self._adapters[name] = path
        if not self._adapters:
            return
        if adapters:
            pipe.enable_lora()
            pipe.set_adapters([n for n, _, _ in adapters], adapter_weights=[s for _, _, s in adapters])
        else:
            pipe.disable_lora()

    def run(self, jobs: list[Job]) -> list[list[Any]]:
        """One denoising run for jobs with one key: each job's PIL images, in its seeds' order."""
        import torch

        first = jobs[0]
        mode = first.request.mode
        with self.lock:
            pipe = self._pipe_for(mode)
            if first.request.scheduler == schedulers.DEFAULT:
                pipe.scheduler = type(self.default_scheduler).from_config(self.default_scheduler.config)
            else:
                pipe.scheduler = schedulers.make(first.request.scheduler, self.default_scheduler.config)
            self._set_adapters(first.adapters)
            prompts, negatives, generators, images, masks, owners = [], [], [], [], [], []
            for j, job in enumerate(jobs):
                for seed in job.seeds:
                    prompts.append(job.request.prompt)
                    negatives.append(job.request.negative_prompt or "")
                    generators.append(torch.Generator(self.device).manual_seed(seed))
                    images.append(job.image)
                    masks.append(job.mask)
                    owners.append(j)
            kwargs: dict[str, Any] = dict(prompt=prompts, negative_prompt=negatives if any(negatives) else None,
                                          num_inference_steps=first.steps,
                                          guidance_scale=first.guidance, generator=generators, output_type="pil")
            if mode == "text2img":
                kwargs.update(height=first.height, width=first.width)
            else:
                kwargs["image"] = images
                if first.request.strength is not None:
                    kwargs["strength"] = first.request.strength
                if mode == "inpaint":
                    kwargs.update(mask_image=masks, height=first.height, width=first.width)
            partial_at = {j: _partial_steps(job, first.steps) for j, job in enumerate(jobs)}
            rows = list(range(len(owners)))  # the run's batch rows still computed → index into owners
            droppable = _can_drop_rows(pipe)
            left: set[int] = set()  # jobs whose leaving was already handled

            def on_step_end(p: Any, i: int, t: Any, tensors: dict) -> dict:
                nonlocal rows
                total = int(getattr(p, "num_timesteps", 0) or first.steps)
                if all(job.cancelled.is_set() for job in jobs):
                    log.info("denoising run stopped after step %d of %d: its requests went away", i + 1, total)
                    raise Cancelled()
                gone = {j for j, job in enumerate(jobs) if job.cancelled.is_set()} - left
                if gone:
                    left.update(gone)
                    keep = [k for k, row in enumerate(rows) if owners[row] not in left]
                    if droppable:
                        tensors = _drop_rows(p, tensors, keep, len(rows), generators)
                        dropped, rows = len(rows) - len(keep), [rows[k] for k in keep]
                        self.dropped_rows += dropped
                        log.info("dropped %d row(s) of %d request(s) that went away after step %d of %d: "
                                 "%d image(s) go on", dropped, len(gone), i + 1, total, len(rows))
                    else:
                        log.info("%d request(s) went away after step %d of %d: %s cannot drop rows mid-run, "
                                 "their images are finished and discarded", len(gone), i + 1, total, type(p).__name__)
                for j, job in enumerate(jobs):
                    if job.cancelled.is_set():
                        continue
                    job.on_step(i + 1, total)
                    if i + 1 in partial_at[j]:
                        mine = [k for k, row in enumerate(rows) if owners[row] == j]
                        latents = tensors["latents"][mine[0]:mine[-1] + 1]
                        job.on_partial(sorted(partial_at[j]).index(i + 1), self._decode(p, latents))
                return tensors

            kwargs["callback_on_step_end"] = on_step_end
            kwargs["callback_on_step_end_tensor_inputs"] = droppable or ["latents"]
            with torch.inference_mode():
                out = pipe(**kwargs).images
        results: list[list[Any]] = [[] for _ in jobs]
        for row, image in zip(rows, out):
            if owners[row] not in left:
                results[owners[row]].append(image)
        return results

    def _decode(self, pipe: Any, latents: Any) -> list[Any]:
        """A preview of latents mid-run (OpenAI's partial images)."""
        vae = pipe.vae
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")

    def close(self) -> None:
        with self.lock:
            self._modes.clear()
            self.base = None
            gc.collect()
            if self.cuda:
                import torch

                torch.cuda.empty_cache()


# pipeline class → the per-row tensors its loop takes back from the step callback (every one it holds per row)
DROPPABLE = {
    "StableDiffusionPipeline": ["latents", "prompt_embeds"],
    "StableDiffusionImg2ImgPipeline": ["latents", "prompt_embeds"],
    "StableDiffusionXLPipeline": ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
    "StableDiffusionXLImg2ImgPipeline": ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
    # a 9-channel (inpainting) UNet only: a 4-channel one blends in `image_latents` and `noise` rows each step,
    # which the callback cannot reach
    "StableDiffusionInpaintPipeline": ["latents", "prompt_embeds", "negative_prompt_embeds", "mask",
                                       "masked_image_latents"],
    "StableDiffusionXLInpaintPipeline": ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                                         "masked_image_latents"],
    # LCM: its guidance embedding (`w_embedding`, a row each) and the step's denoised image come back too
    "LatentConsistencyModelPipeline": ["latents", "denoised", "prompt_embeds", "w_embedding"],
    "LatentConsistencyModelImg2ImgPipeline": ["latents", "denoised", "prompt_embeds", "w_embedding"],
}


def _can_drop_rows(pipe: Any) -> list[str]:
    """The tensors to cut when rows leave this pipeline's batch between steps (empty: it cannot): Stable
    Diffusion and SDXL text-to-image, image-to-image and inpainting (a 9-channel UNet), and LCM, whose loops
    take back every per-row tensor from the step callback; not a guidance-embedding UNet in another
    pipeline (its `timestep_cond` is sized once per run) nor an asymmetric VAE (inpainting re-encodes the
    images after)."""
    unet = getattr(pipe, "unet", None)
    names = DROPPABLE.get(type(pipe).__name__, [])
    if not names or unet is None or type(getattr(pipe, "vae", None)).__name__ == "AsymmetricAutoencoderKL":
        return []
    if getattr(unet.config, "time_cond_proj_dim", None) is not None and "w_embedding" not in names:
        return []
    if "mask" in names and getattr(unet.config, "in_channels", 4) != 9:
        return []
    return names


def _drop_rows(pipe: Any, tensors: dict, keep: list[int], batch: int, generators: list) -> dict:
    """Keep only the batch rows `keep` of a run between two steps: the latents and the callback's other
    per-row tensors (prompt embeddings, SDXL's pooled embeddings and time ids, inpainting's mask and masked
    image latents: with classifier-free guidance [negative; positive], each `batch` rows), the per-row state
    the scheduler holds (multistep solvers' previous outputs: any tensor of the latents' rank with `batch`
    rows), and the generators (in place: the scheduler's step and the VAE hold the same list)."""
    import torch

    index = torch.tensor(keep, dtype=torch.long)
    latents = tensors["latents"]

    def cut(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.ndim == latents.ndim and x.shape[0] == batch:
            return x.index_select(0, index.to(x.device))
        return x

    out = dict(tensors)
    out["latents"] = cut(latents)
    for name, value in tensors.items():
        if name == "latents" or not isinstance(value, torch.Tensor):
            continue
        if value.shape[0] == 2 * batch:  # with classifier-free guidance: [negative rows; positive rows]
            out[name] = value.index_select(0, torch.cat([index, index + batch]).to(value.device))
        elif value.shape[0] == batch:
            out[name] = value.index_select(0, index.to(value.device))
    scheduler = pipe.scheduler
    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, cut(value))
        elif isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
            setattr(scheduler, name, [cut(v) for v in value])
    generators[:] = [generators[k] for k in keep]
    return out


def _partial_steps(job: Job, steps: int) -> set[int]:
    k = job.request.partial_images
    if not k:
        return set()
    n = max(1, steps if job.request.mode == "text2img" else int(steps * (job.request.strength or 0.8)))
    return {max(1, round(n * (p + 1) / (k + 1))) for p in range(k)} - {n}
