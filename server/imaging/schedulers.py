"""Scheduler names a request may give → diffusers scheduler classes and the config changes they need.

Names are matched without case, spaces, `+` or `_`-vs-`-` differences, so "DPM++ 2M", "dpmpp_2m" and
"dpm++2m" are one. "default" (or no name) keeps the scheduler in the model's own `model_index.json`.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest

# canonical name → (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
DEFAULT = "default"


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch == "+").replace("+", "p")


_ALIASES = {_key(name): name for name in SCHEDULERS}
_ALIASES.update({"dpmpp2m": "DPM++ 2M", "dpmpp2mkarras": "DPM++ 2M Karras", "eulera": "Euler a",
                 "eulerancestral": "Euler a", "k_euler": "Euler", "ke": "Euler"})


def canonical(name: str | None) -> str:
    """The table's name for a scheduler name; BadRequest listing the choices for an unknown one."""
    if name is None or not str(name).strip() or _key(str(name)) == DEFAULT:
        return DEFAULT
    if not isinstance(name, str):
        raise BadRequest(f"scheduler must be a string, not {type(name).__name__}")
    found = _ALIASES.get(_key(name))
    if found is None:
        raise BadRequest(f"unknown scheduler {name!r}: use one of {', '.join([DEFAULT, *SCHEDULERS])}")
    return found


def make(name: str, default_config: Any) -> Any:
    """A scheduler instance for `name` built from the model's own scheduler config."""
    import diffusers

    cls_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config(default_config, **overrides)
