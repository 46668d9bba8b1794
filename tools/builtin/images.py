"""generate_image and edit_image: the image service (server/imaging/) as tools, returning artifacts.

The images are stored in the artifact store (PNG with the settings in its text metadata) and returned
as artifacts with their seeds, so an agent can pass an image's digest on to edit_image.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..results import ToolResult
from ..tool import ToolError, tool


class GenerateImageArgs(BaseModel):
    prompt: str = Field(description="What the image shows")
    model: str = Field("", description="An image model (capability 'image'); empty: the first stored one")
    negative_prompt: str = Field("", description="What the image should not show")
    width: int | None = Field(None, description="Width in pixels (a multiple of 8); default the model's")
    height: int | None = Field(None, description="Height in pixels (a multiple of 8); default the model's")
    steps: int | None = Field(None, description="Denoising steps (default 25)")
    seed: int | None = Field(None, description="Seed: the same seed and settings make the same image")
    scheduler: str = Field("default", description="DPM++ 2M, Euler, Euler a, DDIM or default")
    guidance_scale: float | None = Field(None, description="How closely to follow the prompt (default 7.5)")
    n: int = Field(1, description="How many images (1-4)", ge=1, le=4)


class EditImageArgs(GenerateImageArgs):
    image: str = Field(description="The input image: an artifact digest (sha256:…) from an earlier call")
    mask: str | None = Field(None, description="Inpainting mask artifact (white = repaint), same size as the image")
    strength: float | None = Field(None, description="How much of the image is repainted, 0-1 (default 0.8)")


def _service(ctx: Any):
    if ctx.services is None or getattr(ctx.services, "images", None) is None:
        raise ToolError("image generation needs the server's image service")
    return ctx.services.images


def _artifact_bytes(ctx: Any, digest: str, what: str) -> bytes:
    try:
        path, media_type = ctx.artifacts.open(digest)
    except Exception as exc:
        raise ToolError(f"{what}: {exc}") from None
    if not media_type.startswith("image/"):
        raise ToolError(f"{what}: artifact {digest} is not an image ({media_type})")
    return path.read_bytes()


async def _run(args: GenerateImageArgs, ctx: Any, image: bytes | None = None, mask: bytes | None = None,
               strength: float | None = None) -> ToolResult:
    from server.errors import BadRequest, NotFound
    from server.imaging.request import ImageRequest
    from server.imaging.service import Done, Progress

    svc = _service(ctx)
    model = args.model or next(iter(svc.image_models()), "")
    if not model:
        raise ToolError("no image model is stored (create one with `corral create NAME --diffusers DIR`)")
    req = ImageRequest(model=model, prompt=args.prompt, negative_prompt=args.negative_prompt, width=args.width,
                       height=args.height, steps=args.steps, seed=args.seed, scheduler=args.scheduler,
                       guidance_scale=args.guidance_scale, n=args.n, image=image, mask=mask, strength=strength)
    done = None
    items = svc.generate(req)
    try:
        async for item in items:
            if isinstance(item, Progress):
                ctx.progress(item.completed, item.total, "denoising")
            elif isinstance(item, Done):
                done = item
    except (BadRequest, NotFound) as exc:
        raise ToolError(str(exc)) from None
    finally:
        await items.aclose()
    assert done is not None
    artifacts = [ctx.artifacts.put(img.data, img.media_type, name=f"image-{img.seed}.{img.format}")
                 for img in done.images]
    described = [{"digest": a.digest, "url": a.url, "seed": img.seed, "width": img.width, "height": img.height}
                 for a, img in zip(artifacts, done.images)]
    text = f"{len(artifacts)} image(s) made with {model}: " + ", ".join(
        f"{d['digest']} (seed {d['seed']})" for d in described)
    return ToolResult(text=text, json={"model": model, "images": described}, artifacts=artifacts)


@tool(input=GenerateImageArgs, timeout=600)
async def generate_image(args: GenerateImageArgs, ctx) -> ToolResult:
    """Make an image from a text prompt with a stored image model; returns the image as an artifact."""
    return await _run(args, ctx)


@tool(input=EditImageArgs, timeout=600)
async def edit_image(args: EditImageArgs, ctx) -> ToolResult:
    """Change an image (an artifact from generate_image or an upload) following a prompt; with a mask,
    repaint only its white part. Returns the new image as an artifact."""
    image = _artifact_bytes(ctx, args.image, "image")
    mask = _artifact_bytes(ctx, args.mask, "mask") if args.mask else None
    return await _run(args, ctx, image=image, mask=mask, strength=args.strength)
