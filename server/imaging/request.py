"""One image request's settings (both wire formats and the tools build one), checked before anything loads.

Corral's options, the same names on every route (Ollama: in `options`; OpenAI: extra body fields):
`negative_prompt`, `guidance_scale`, `scheduler` (see schedulers.py), `strength` (image-to-image, 0-1],
`seed`, `adapters` (LoRA: `[{"name": MODEL, "scale": 0.8}]` or `{MODEL: 0.8}`), `mask` (inpainting:
base64 or a data URL; white is repainted, black kept), `steps`, `width`, `height`.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest
from . import schedulers

MAX_SIDE = 4096  # as Ollama: a width or height above this is a 400
MAX_STEPS = 500
MAX_IMAGES = 10  # n, as OpenAI
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


@dataclass
class ImageRequest:
    model: str
    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the pipeline's own size (or the input image's, for an edit)
    height: int | None = None
    steps: int | None = None  # None: the model's `steps` parameter, else 25
    guidance_scale: float | None = None  # None: the model's parameter, else 7.5
    seed: int | None = None  # None: a random seed (reported with the image)
    scheduler: str = schedulers.DEFAULT  # a canonical name (schedulers.canonical)
    strength: float | None = None  # image-to-image: how much of the input image is repainted
    n: int = 1
    image: bytes | None = None  # an edit's input image (any format Pillow reads)
    mask: bytes | None = None  # inpainting: same size as `image`; white = repaint
    adapters: list[tuple[str, float]] = field(default_factory=list)  # (LoRA model name, scale)
    keep_alive: Any = None
    output_format: str = "png"
    output_compression: int | None = None  # 0-100 for jpeg/webp
    partial_images: int = 0  # previews sent while denoising (OpenAI's partial_images, 0-3)

    @property
    def mode(self) -> str:
        if self.image is None:
            return "text2img"
        return "inpaint" if self.mask is not None else "img2img"

    def check(self) -> "ImageRequest":
        """Every rule that needs no model: BadRequest (400) with the field's name otherwise."""
        if not self.model:
            raise BadRequest("model is required")
        if not isinstance(self.prompt, str):
            raise BadRequest("prompt must be a string")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            value = _int(value, name)
            if value > MAX_SIDE:
                raise BadRequest(f"{name} must be at most {MAX_SIDE}, got {value}")
            if value < 8 or value % 8:
                raise BadRequest(f"{name} must be a positive multiple of 8, got {value}")
            setattr(self, name, value)
        if self.steps is not None:
            self.steps = _int(self.steps, "steps")
            if not 1 <= self.steps <= MAX_STEPS:
                raise BadRequest(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.guidance_scale is not None:
            self.guidance_scale = _float(self.guidance_scale, "guidance_scale")
            if not 0 <= self.guidance_scale <= 100:
                raise BadRequest("guidance_scale must be between 0 and 100")
        if self.strength is not None:
            self.strength = _float(self.strength, "strength")
            if not 0 < self.strength <= 1:
                raise BadRequest("strength must be greater than 0 and at most 1")
            if self.image is None:
                raise BadRequest("strength needs an input image (an edit)")
        if self.seed is not None:
            self.seed = _int(self.seed, "seed")
            if self.seed < 0:
                self.seed = None  # as Ollama's seed -1: a random one
            elif self.seed >= 2**63:
                raise BadRequest("seed must be below 2^63")
        self.n = _int(self.n, "n")
        if not 1 <= self.n <= MAX_IMAGES:
            raise BadRequest(f"n must be between 1 and {MAX_IMAGES}, got {self.n}")
        self.scheduler = schedulers.canonical(self.scheduler)
        if self.mask is not None and self.image is None:
            raise BadRequest("a mask needs an input image")
        fmt = (self.output_format or "png").lower()
        if fmt not in FORMATS:
            raise BadRequest(f"output_format must be png, jpeg or webp, got {self.output_format!r}")
        self.output_format = "jpeg" if fmt == "jpg" else fmt
        if self.output_compression is not None:
            self.output_compression = _int(self.output_compression, "output_compression")
            if not 0 <= self.output_compression <= 100:
                raise BadRequest("output_compression must be between 0 and 100")
        self.partial_images = _int(self.partial_images or 0, "partial_images")
        if not 0 <= self.partial_images <= 3:
            raise BadRequest("partial_images must be between 0 and 3")
        return self

    def seeds(self) -> list[int]:
        """The seed of each of the n images: the request's seed and the ones after it (or random)."""
        if self.seed is None:
            self.seed = secrets.randbits(31)
        return [self.seed + i for i in range(self.n)]


def parse_adapters(value: Any) -> list[tuple[str, float]]:
    """`[{"name": M, "scale": s}]`, `{M: s}` or `["M", "M:0.5"]` → [(name, scale)] (scale defaults to 1)."""
    if value is None:
        return []
    items: list[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for x in value:
            if isinstance(x, dict):
                items.append((x.get("name", x.get("model")), x.get("scale", x.get("weight", 1.0))))
            elif isinstance(x, str):
                name, _, scale = x.rpartition(":") if ":" in x and _is_number(x.rpartition(":")[2]) else (x, "", 1.0)
                items.append((name, scale))
            else:
                raise BadRequest("adapters must be a list of {\"name\", \"scale\"} objects or names")
    else:
        raise BadRequest("adapters must be a list of {\"name\", \"scale\"} objects or an object {name: scale}")
    out = []
    for name, scale in items:
        if not isinstance(name, str) or not name:
            raise BadRequest("every adapter needs a name (a LoRA model in the store)")
        scale = _float(scale, f"the scale of adapter {name!r}")
        if not -10 <= scale <= 10:
            raise BadRequest(f"the scale of adapter {name!r} must be between -10 and 10")
        out.append((name, scale))
    if len({n for n, _ in out}) != len(out):
        raise BadRequest("an adapter is named twice")
    return out


def from_options(model: str, prompt: str, options: dict | None, **fields: Any) -> ImageRequest:
    """An ImageRequest from a wire request's fields and its Corral options (unknown option keys are
    ignored, as Ollama ignores them)."""
    opts = dict(options or {})
    req = ImageRequest(model=model, prompt=prompt)
    for key in ("negative_prompt", "guidance_scale", "seed", "strength", "width", "height", "steps"):
        if opts.get(key) is not None:
            setattr(req, key, opts[key])
    if opts.get("scheduler") is not None:
        req.scheduler = opts["scheduler"]
    if opts.get("adapters") is not None:
        req.adapters = parse_adapters(opts["adapters"])
    for key, value in fields.items():
        if value is not None:
            setattr(req, key, value)
    if req.negative_prompt is not None and not isinstance(req.negative_prompt, str):
        raise BadRequest("negative_prompt must be a string")
    return req


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    return int(number)


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"{name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be a finite number")
    return number
