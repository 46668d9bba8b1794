"""Images in and out: encoding with the settings in the PNG's text metadata, decoding inputs and masks.

A PNG carries two text chunks: `parameters` (the line format most image tools read: prompt, then
`Negative prompt: …`, then `Steps: …, Sampler: …, CFG scale: …, Seed: …, Size: WxH, Model: …`) and
`corral` (the same settings as JSON), so an image can be made again from the file alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from ..errors import BadRequest

MAX_INPUT_BYTES = 64 << 20
MAX_INPUT_PIXELS = 4096 * 4096


def settings_text(settings: dict[str, Any]) -> str:
    lines = [settings.get("prompt", "")]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    parts = [f"Steps: {settings.get('steps')}", f"Sampler: {settings.get('scheduler')}",
             f"CFG scale: {settings.get('guidance_scale')}", f"Seed: {settings.get('seed')}",
             f"Size: {settings.get('width')}x{settings.get('height')}", f"Model: {settings.get('model')}"]
    if settings.get("strength") is not None:
        parts.append(f"Denoising strength: {settings['strength']}")
    if settings.get("adapters"):
        parts.append("Lora: " + " ".join(f"{n}:{s}" for n, s in settings["adapters"]))
    lines.append(", ".join(parts))
    return "\n".join(lines)


def encode(image: Any, fmt: str, settings: dict[str, Any] | None = None, compression: int | None = None) -> bytes:
    """A PIL image as png/jpeg/webp bytes; PNGs carry `settings` as text metadata."""
    from PIL import PngImagePlugin

    out = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        if settings is not None:
            info.add_text("parameters", settings_text(settings))
            info.add_text("corral", json.dumps(settings, sort_keys=True))
        # compression is OpenAI's 0-100 for jpeg/webp; PNG stays lossless at the default level
        image.save(out, format="PNG", pnginfo=info)
    elif fmt == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=compression if compression is not None else 90)
    else:
        image.save(out, format="WEBP", quality=compression if compression is not None else 90)
    return out.getvalue()


def read_settings(png: bytes) -> dict[str, Any]:
    """The `corral` settings of a PNG this module wrote ({} when there are none)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        text = img.info.get("corral")
    return json.loads(text) if text else {}


def decode_b64(value: str, what: str) -> bytes:
    """Base64 or a `data:image/…;base64,` URL → bytes (400 otherwise)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a base64 string or a data URL")
    text = value.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise BadRequest(f"{what}: only base64 data URLs are accepted")
    if len(text) > MAX_INPUT_BYTES * 4 // 3 + 4:
        raise BadRequest(f"{what} is larger than {MAX_INPUT_BYTES >> 20} MiB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def open_image(data: bytes, what: str, mode: str = "RGB") -> Any:
    """Bytes → a PIL image in `mode`, or a 400 naming `what` (not an image, too many pixels)."""
    from PIL import Image

    if len(data) > MAX_INPUT_BYTES:
        raise BadRequest(f"{what} is larger than {MAX_INPUT_BYTES >> 20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise BadRequest(f"{what} has more than {MAX_INPUT_PIXELS} pixels")
            return img.convert(mode)
    except BadRequest:
        raise
    except Exception:
        raise BadRequest(f"{what} is not an image Corral can read (PNG, JPEG, WebP, …)") from None
