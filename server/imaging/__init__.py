"""Image generation: diffusion pipelines from the model store behind one in-process service.

    store.py       a pipeline's files as layers of a model (create) and as a folder again (load)
    request.py     ImageRequest: one request's settings, checked before anything loads
    schedulers.py  scheduler names (DPM++ 2M, Euler, Euler a, DDIM, default) → diffusers classes
    pipeline.py    a loaded pipeline: device and dtype, LoRA adapters cached on it, one denoising run
    service.py     ImageService: a queue per pipeline, batching, progress, cancel, the scheduler's loader
    onnx.py        export to an ONNX variant in the store and the onnxruntime pipeline
    png.py         encoding (png/jpeg/webp), PNG text metadata, decoding input images and masks

torch, diffusers and transformers are imported only here, lazily: without them an image request is a
501-style error naming the extra (`pip install 'corral[imaging]'`), and the rest of the server runs.
"""

from __future__ import annotations

from ..errors import BadRequest

EXTRA = "pip install 'corral[imaging]'"


class ImagingUnavailable(BadRequest):
    """The imaging extra is not installed (the API answers 501)."""

    def __init__(self, missing: str):
        super().__init__(f"image generation needs the imaging extra ({missing} is not installed): {EXTRA}")


def require_imaging() -> None:
    """Import the heavy packages once, or raise ImagingUnavailable naming the one that is missing."""
    for module in ("torch", "diffusers", "transformers"):
        try:
            __import__(module)
        except ImportError:
            raise ImagingUnavailable(module) from None
