"""Users' own LangGraph graphs, named in a `langgraph.json`-style file the operator writes.

    {"graphs": {"research": "./research.py:graph", "triage": "./pkg/triage.py:make_graph"}}

at `<data_dir>/langgraph.json` or `CORRAL_GRAPHS_CONFIG`; paths are relative to the file. Each module is
loaded by path and the attribute taken: a compiled graph, a StateGraph (compiled here), or a callable
(sync or async, taking nothing or a RunnableConfig) returning either. Corral's checkpointer is attached
to graphs that bring none. Only this file can load code: no request names a module. A graph that fails
to load is logged and left out; the server still starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .spec import NAME_RULE

log = logging.getLogger("corral.agents")


async def load_graphs(config_path: Path, checkpointer: Any) -> dict[str, Any]:
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        graphs = config.get("graphs") if isinstance(config, dict) else None
        if not isinstance(graphs, dict):
            raise ValueError("expected {\"graphs\": {\"name\": \"./file.py:attribute\"}}")
    except (OSError, ValueError) as exc:
        log.error("graphs config %s not read: %s", config_path, exc)
        return {}
    out: dict[str, Any] = {}
    for name, target in graphs.items():
        try:
            if not isinstance(name, str) or not NAME_RULE.match(name):
                raise ValueError(f"invalid graph name {name!r}: it must match {NAME_RULE.pattern}")
            if isinstance(target, dict):
                target = target.get("path")
            if not isinstance(target, str) or ":" not in target:
                raise ValueError(f"expected \"./file.py:attribute\", got {target!r}")
            out[name] = await _load(config_path.parent, name, target, checkpointer)
            log.info("graph %s loaded from %s", name, target)
        except Exception as exc:  # a user's module can raise anything; the others still load
            log.error("graph %r from %s left out: %s: %s", name, config_path, type(exc).__name__, exc)
    return out


async def _load(base: Path, name: str, target: str, checkpointer: Any) -> Any:
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    file, _, attribute = target.rpartition(":")
    path = (base / file).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    module_name = f"corral_user_graph_{name.replace('.', '_').replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))  # the module's own imports of files beside it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))
    value: Any = module
    for part in attribute.split("."):
        value = getattr(value, part)
    if not isinstance(value, (Pregel, StateGraph)) and callable(value):
        takes = len(inspect.signature(value).parameters)
        value = value({}) if takes else value()
        if inspect.isawaitable(value):
            value = await value
    if isinstance(value, StateGraph):
        value = value.compile(checkpointer=checkpointer)
    if not isinstance(value, Pregel):
        raise TypeError(f"{target} is a {type(value).__name__}, not a LangGraph graph")
    if value.checkpointer is None:
        value = value.copy(update={"checkpointer": checkpointer})
    return value
