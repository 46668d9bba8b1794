"""Wire types of OpenAI's Images API as Corral serves it (`/v1/images/generations`, `/v1/images/edits`).

OpenAI's fields keep OpenAI's meaning; Corral's own options (the same on Ollama's `/api/generate`, in
its `options`) are extra body fields, as the `openai` SDK sends them with `extra_body`. Edits come as
multipart/form-data (the SDK's form: `image` files, `mask` file, the other fields as text) or as JSON
with `image` (and `mask`) as data URLs or base64, the form Ollama accepted.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ImageGenerationRequest(msgspec.Struct, kw_only=True):
    prompt: str = ""  # required: what to draw
    model: str = ""  # an image model in the store (capability "image")
    n: int | str | None = None  # images to make, 1-10 (seeds seed, seed+1, …)
    size: str | None = None  # "WxH" (multiples of 8, at most 4096) or "auto" (the model's own size)
    response_format: str | None = None  # "b64_json" (default) or "url" (an /api/artifacts address)
    output_format: str | None = None  # "png" (default), "jpeg" or "webp"
    output_compression: int | str | None = None  # 0-100, jpeg and webp
    stream: bool | str | None = None  # SSE: partial images, then image_generation.completed
    partial_images: int | str | None = None  # 0-3 previews while denoising (with stream)
    quality: str | None = None  # accepted and echoed; the steps decide quality here
    background: str | None = None  # accepted and echoed
    moderation: str | None = None  # accepted; Corral does not moderate
    style: str | None = None  # accepted, unused
    user: str | None = None  # accepted, unused
    # Corral's options
    negative_prompt: str | None = None  # what the image should not show (replaces the empty prompt)
    guidance_scale: float | str | None = None  # classifier-free guidance, default 7.5 (or the model's)
    steps: int | str | None = None  # denoising steps, default 25 (or the model's)
    seed: int | str | None = None  # the first image's seed; random when absent (reported back)
    scheduler: str | None = None  # "DPM++ 2M", "Euler", "Euler a", "DDIM", … or "default"
    strength: float | str | None = None  # edits: how much of the input image is repainted (0-1]
    adapters: Any = None  # LoRA models and scales: [{"name": "style", "scale": 0.8}] or {"style": 0.8}
    keep_alive: float | int | str | None = None  # how long the pipeline stays loaded (Ollama's keep_alive)
    options: dict[str, Any] | None = None  # the same options as an object (Ollama's form); fields win
    # edits as JSON (Ollama's form): the input image and the inpainting mask, data URLs or base64
    image: str | list[str] | None = None
    mask: str | None = None


class ImageData(msgspec.Struct, omit_defaults=True):
    b64_json: str | None = None  # the image, base64 (response_format b64_json)
    url: str | None = None  # the image's artifact address (response_format url)
    revised_prompt: str | None = None  # never set: prompts are used as given
    seed: int | None = None  # Corral: the seed this image was made with


class ImagesResponse(msgspec.Struct, omit_defaults=True):
    created: int  # Unix seconds
    data: list[ImageData]
    output_format: str | None = None  # png | jpeg | webp
    size: str | None = None  # "WxH" made
    quality: str | None = None  # echoed from the request
    background: str | None = None  # echoed from the request
    usage: ImageUsage | None = None


class ImageUsage(msgspec.Struct):
    input_tokens: int = 0  # the prompt's tokens by the pipeline's tokenizer (with its start/end tokens, at most 77)
    output_tokens: int = 0  # a diffusion pipeline makes no tokens: 0
    total_tokens: int = 0


class ImageStreamEvent(msgspec.Struct, omit_defaults=True):
    type: str  # image_generation.partial_image | image_generation.completed (image_edit.… for edits)
    b64_json: str  # a preview (partial) or the finished image (completed), base64
    created_at: int  # Unix seconds
    size: str  # "WxH"
    output_format: str  # png | jpeg | webp
    quality: str = "auto"
    background: str = "auto"
    partial_image_index: int | None = None  # partial events: 0 … partial_images-1
    usage: ImageUsage | None = None  # completed events
    seed: int | None = None  # Corral: the image's seed


class ImageExportRequest(msgspec.Struct, kw_only=True):
    """`POST /api/images/export`: an image model to ONNX, stored as a new model (format onnx)."""

    model: str = ""  # the new (ONNX) model's name: must not exist yet
    from_: str = msgspec.field(default="", name="from")  # the image model to export (PyTorch, diffusers)
    adapters: Any = None  # LoRA models fused first: [{"name", "scale"}], {name: scale} or ["name:scale"]
    stream: bool | None = None  # false: one JSON object, the last status
