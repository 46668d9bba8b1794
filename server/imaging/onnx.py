"""ONNX: export a pipeline (text encoder, UNet, VAE decoder) into a second model in the store, and serve
that model on onnxruntime through diffusers' OnnxStableDiffusionPipeline.

The export uses `torch.onnx.export` (the TorchScript exporter: no onnxscript needed) on the CPU in
fp32; LoRA adapters are fused into the UNet weights before the export (`fuse_lora`), since the ONNX
graph has no adapters of its own. The exported folder (`model_index.json` naming the ONNX pipeline,
`*/model.onnx`, the tokenizer and scheduler configs) is stored with the same layers as any pipeline,
variant "onnx". Serving picks the CUDA execution provider where `onnxruntime-gpu` and a GPU are present,
the CPU one otherwise. Text-to-image only; each image's starting noise is drawn with a torch.Generator
seeded with its seed, exactly as the PyTorch pipeline draws it, so the same seed gives a close image.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import schedulers
from .pipeline import DEFAULT_GUIDANCE, Cancelled, Job, call_default

log = logging.getLogger("corral.imaging")
OPSET = 17


def export(folder: Path, out: Path, adapters: list[tuple[str, float]] = (),
           progress: Callable[[int, int, str], None] = lambda k, n, s: None) -> Path:
    """Export the diffusers pipeline in `folder` (LoRA files fused at their scales) to an ONNX pipeline folder."""
    import torch
    from diffusers import DiffusionPipeline, OnnxRuntimeModel, OnnxStableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True,
                                             local_files_only=True)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "text_encoder"):
        raise ValueError(f"{type(pipe).__name__}: only Stable Diffusion-style pipelines (UNet, CLIP) export to ONNX")
    if adapters:
        names = []
        for i, (path, scale) in enumerate(adapters):
            pipe.load_lora_weights(path, adapter_name=f"fuse{i}")
            names.append(f"fuse{i}")
        pipe.set_adapters(names, adapter_weights=[s for _, s in adapters])
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out.parent))
    try:
        unet, vae, text = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval()
        latent = unet.config.sample_size
        hidden = text.config.hidden_size
        max_len = pipe.tokenizer.model_max_length
        with torch.no_grad():
            progress(0, 3, "exporting the text encoder")
            (work / "text_encoder").mkdir()
            torch.onnx.export(_TextEncoder(text), (torch.zeros(1, max_len, dtype=torch.int32),),
                              str(work / "text_encoder" / "model.onnx"), dynamo=False, opset_version=OPSET,
                              input_names=["input_ids"], output_names=["last_hidden_state", "pooler_output"],
                              dynamic_axes={"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"},
                                            "pooler_output": {0: "batch"}})
            progress(1, 3, "exporting the UNet")
            (work / "unet").mkdir()
            torch.onnx.export(_UNet(unet), (torch.randn(2, unet.config.in_channels, latent, latent),
                                            torch.tensor([1.0]), torch.randn(2, max_len, hidden)),
                              str(work / "unet" / "model.onnx"), dynamo=False, opset_version=OPSET,
                              input_names=["sample", "timestep", "encoder_hidden_states"], output_names=["out_sample"],
                              dynamic_axes={"sample": {0: "batch", 2: "height", 3: "width"},
                                            "encoder_hidden_states": {0: "batch"}, "out_sample": {0: "batch"}})
            _one_weights_file(work / "unet")
            progress(2, 3, "exporting the VAE decoder")
            (work / "vae_decoder").mkdir()
            torch.onnx.export(_VaeDecoder(vae), (torch.randn(1, vae.config.latent_channels, latent, latent),),
                              str(work / "vae_decoder" / "model.onnx"), dynamo=False, opset_version=OPSET,
                              input_names=["latent_sample"], output_names=["sample"],
                              dynamic_axes={"latent_sample": {0: "batch", 2: "height", 3: "width"},
                                            "sample": {0: "batch"}})
        onnx_pipe = OnnxStableDiffusionPipeline(
            vae_encoder=None, vae_decoder=OnnxRuntimeModel.from_pretrained(str(work / "vae_decoder"), provider_options={}),
            text_encoder=OnnxRuntimeModel.from_pretrained(str(work / "text_encoder"), provider_options={}), tokenizer=pipe.tokenizer,
            unet=OnnxRuntimeModel.from_pretrained(str(work / "unet"), provider_options={}), scheduler=pipe.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        onnx_pipe.save_pretrained(str(out))
        (out / "corral_export.json").write_text(json.dumps({"sample_size": latent * pipe.vae_scale_factor,
                                                            "source": type(pipe).__name__}))
        progress(3, 3, "exported")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _one_weights_file(folder: Path) -> None:
    """A graph over protobuf's 2 GB limit (an SD 1.5 UNet in fp32) is exported with a file per weight
    beside model.onnx; gather them into the one external file (`weights.pb`) that diffusers' ONNX
    models save and load, so the exported folder is model.onnx and weights.pb."""
    extra = [p for p in folder.iterdir() if p.name != "model.onnx"]
    if not extra:
        return
    import onnx

    model = onnx.load(str(folder / "model.onnx"))  # reads the external files too
    for p in extra:
        p.unlink()
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.pb")


def _modules():
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids.long(), return_dict=True)
            return out.last_hidden_state, out.pooler_output

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, latent_sample):
            return self.model.decode(latent_sample, return_dict=False)[0]

    return TextEncoder, UNet, VaeDecoder


def _TextEncoder(m):
    return _modules()[0](m)


def _UNet(m):
    return _modules()[1](m)


def _VaeDecoder(m):
    return _modules()[2](m)


class OnnxPipeline:
    """An exported pipeline on onnxruntime, with the same `run(jobs)` as pipeline.Pipeline."""

    def __init__(self, folder: Path, *, use_gpu: bool = True):
        import onnxruntime as ort
        from diffusers import OnnxStableDiffusionPipeline

        cuda = use_gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        self.provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        self.base = OnnxStableDiffusionPipeline.from_pretrained(
            str(folder), provider=self.provider, provider_options={}, local_files_only=True, vae_encoder=None,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.base.set_progress_bar_config(disable=True)
        self.default_scheduler = self.base.scheduler
        info = Path(folder) / "corral_export.json"
        self.info = json.loads(info.read_text()) if info.is_file() else {}

    @property
    def default_guidance(self) -> float:
        return call_default(self.base, "guidance_scale", DEFAULT_GUIDANCE)

    @property
    def default_size(self) -> tuple[int, int]:
        side = int(self.info.get("sample_size", 512))
        return side, side

    def refuses(self, mode: str) -> str | None:
        """Why this pipeline cannot run a request of `mode` (None: it can), as Pipeline.refuses."""
        return None if mode == "text2img" else "an ONNX model makes images from text only (edit with its PyTorch model)"

    def run(self, jobs: list[Job]) -> list[list[Any]]:
        import numpy as np
        import torch

        first = jobs[0]
        if first.request.mode != "text2img":
            raise ValueError("the ONNX pipeline makes images from text only")
        pipe = self.base
        if first.request.scheduler == schedulers.DEFAULT:
            pipe.scheduler = type(self.default_scheduler).from_config(self.default_scheduler.config)
        else:
            pipe.scheduler = schedulers.make(first.request.scheduler, self.default_scheduler.config)
        prompts, negatives, latents, owners = [], [], [], []
        for j, job in enumerate(jobs):
            for seed in job.seeds:
                prompts.append(job.request.prompt)
                negatives.append(job.request.negative_prompt or "")
                latents.append(torch.randn((1, 4, first.height // 8, first.width // 8),
                                           generator=torch.Generator("cpu").manual_seed(seed)).numpy())
                owners.append(j)

        def callback(i: int, t: Any, lat: Any) -> None:
            if all(job.cancelled.is_set() for job in jobs):
                log.info("denoising run stopped after step %d of %d: its requests went away", i + 1, first.steps)
                raise Cancelled()
            for job in jobs:
                if not job.cancelled.is_set():
                    job.on_step(i + 1, first.steps)

        out = pipe(prompt=prompts, negative_prompt=negatives, height=first.height, width=first.width,
                   num_inference_steps=first.steps, guidance_scale=first.guidance,
                   latents=np.concatenate(latents).astype(np.float32), output_type="pil", callback=callback,
                   callback_steps=1).images
        results: list[list[Any]] = [[] for _ in jobs]
        for owner, image in zip(owners, out):
            results[owner].append(image)
        return results

    def close(self) -> None:
        self.base = None
