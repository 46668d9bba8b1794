"""Tools that installed packages add: entry points in the group `corral.tools`.

An entry point names a Tool, a list of Tools, or a function that returns either:

    [project.entry-points."corral.tools"]
    weather = "my_package.tools:weather"

A package that fails to load is logged and left out; the server starts without it.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from .tool import Tool

GROUP = "corral.tools"
log = logging.getLogger("corral.tools")


def discover() -> list[Tool]:
    found: list[Tool] = []
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, Tool):
                obj = obj()
            tools = [obj] if isinstance(obj, Tool) else list(obj)
            for t in tools:
                if not isinstance(t, Tool):
                    raise TypeError(f"{t!r} is not a corral Tool")
                t.source = f"entry point {ep.name} ({ep.value})"
            found += tools
        except Exception as exc:
            log.warning("tools of entry point %s (%s) not loaded: %s", ep.name, ep.value, exc)
    return found
