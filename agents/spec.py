"""An agent as a person writes it: a model, a system prompt, the tools it may call, and its limits.

Stored as `<data_dir>/agents/<name>.json` (written to a temporary file, then renamed, so a crash never
leaves half a file). JSON only: the API takes JSON, and one format is one parser to trust.

`tools` and `approve` hold registry names or fnmatch globs (`files_*`). Every entry must match a tool
when the agent is created: a typo would otherwise leave an agent silently without its tool.
`approve` says which calls wait for a person's approval: None (the default) means the tools marked
`side_effects` (what the registry's flag is for), [] means none, a list means the tools it matches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from server.services import Services
    from tools import Tool, ToolRegistry

log = logging.getLogger("corral.agents")

NAME_RULE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
MAX_STEPS_LIMIT = 100
_GLOB = re.compile(r"[*?\[]")


@dataclass
class AgentSpec:
    name: str
    model: str
    system: str = ""
    tools: list[str] = field(default_factory=list)
    max_steps: int = 8  # model calls in one turn; the run ends with done_reason "length" past it
    options: dict[str, Any] = field(default_factory=dict)  # model options; `tool_choice` forces step 1's choice
    approve: list[str] | None = None  # None: tools with side effects; []: none; else names/globs
    output_schema: dict | None = None  # JSON Schema the final answer follows
    description: str = ""

    # ---- shape ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any) -> "AgentSpec":
        """A spec from JSON, every field type-checked (BadRequest naming the field)."""
        if not isinstance(d, dict):
            raise BadRequest("an agent must be a JSON object")
        known = {f.name for f in fields(cls)}
        label = d.get("name") if isinstance(d.get("name"), str) else "?"
        for key in d:
            if key not in known:
                raise BadRequest(f"agent '{label}': unknown field '{key}'")
        for key in ("name", "model"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BadRequest(f"agent '{label}': '{key}' is required and must be a string")
        spec = cls(**{k: v for k, v in d.items() if v is not None or k in ("approve", "output_schema")})
        spec.check_shape()
        return spec

    def to_dict(self) -> dict:
        return asdict(self)

    def check_shape(self) -> None:
        """Types and the name rule: what can be checked without the model store or the registry."""
        where = f"agent '{self.name}'"
        if not isinstance(self.name, str) or not NAME_RULE.match(self.name):
            raise BadRequest(f"invalid agent name {self.name!r}: it must match {NAME_RULE.pattern}")
        for key in ("model", "system", "description"):
            if not isinstance(getattr(self, key), str):
                raise BadRequest(f"{where}: '{key}' must be a string")
        for key in ("tools", "approve"):
            value = getattr(self, key)
            if value is None and key == "approve":
                continue
            if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
                raise BadRequest(f"{where}: '{key}' must be a list of tool names or globs")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) \
                or not 1 <= self.max_steps <= MAX_STEPS_LIMIT:
            raise BadRequest(f"{where}: 'max_steps' must be an integer from 1 to {MAX_STEPS_LIMIT}")
        if not isinstance(self.options, dict):
            raise BadRequest(f"{where}: 'options' must be an object")
        if self.output_schema is not None and not isinstance(self.output_schema, dict):
            raise BadRequest(f"{where}: 'output_schema' must be a JSON schema object")

    # ---- against the service -----------------------------------------------------------------

    def validate(self, services: "Services") -> None:
        """Everything `create` checks: the shape, the model, each tool entry, the options, the schema."""
        self.check_shape()
        where = f"agent '{self.name}'"
        try:
            model = services.inference.model(self.model)
        except (NotFound, BadRequest):
            raise BadRequest(f"{where}: unknown model '{self.model}'") from None
        if "completion" not in services.inference.capabilities(model):
            raise BadRequest(f"{where}: model '{self.model}' cannot chat (it is an embedding model)")
        names = self.tool_names(services.tools, strict=True)
        for entry in self.approve or []:
            if not any(fnmatchcase(n, entry) for n in names):
                raise BadRequest(f"{where}: approve entry '{entry}' matches none of the agent's tools")
        options = dict(self.options)
        choice = options.pop("tool_choice", None)
        if choice is not None and choice not in ("auto", "none", "required") and choice not in names:
            raise BadRequest(f"{where}: options.tool_choice {choice!r} is not one of the agent's tools")
        from server.options import OptionError, parse_options

        try:
            parse_options(model.parameters, options)
        except OptionError as exc:
            raise BadRequest(f"{where}: invalid options: {exc}") from None
        if self.output_schema is not None:
            check_output_schema(self.output_schema, where)

    def tool_names(self, registry: "ToolRegistry", *, strict: bool = False) -> list[str]:
        """The registry tools the entries name, in entry order. strict: an entry matching nothing is a
        BadRequest; otherwise (a tool gone since the agent was made) it is logged and left out."""
        available = [t.name for t in registry.list()]
        out: list[str] = []
        for entry in self.tools:
            matched = [n for n in available if fnmatchcase(n, entry)] if _GLOB.search(entry) else \
                [entry] if entry in registry else []
            if not matched:
                message = (f"agent '{self.name}': no tool matches '{entry}'" if _GLOB.search(entry)
                           else f"agent '{self.name}': unknown tool '{entry}'")
                if strict:
                    raise BadRequest(message)
                log.warning("%s; left out", message)
            out += [n for n in matched if n not in out]
        return out

    def needs_approval(self, tool: "Tool") -> bool:
        if self.approve is None:
            return tool.side_effects
        return any(fnmatchcase(tool.name, entry) for entry in self.approve)


def check_output_schema(schema: dict, where: str) -> None:
    """A schema the engine's grammar can enforce (so a final answer can be made to follow it)."""
    import jsonschema

    from server.grammar import SchemaError, schema_grammar

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
        schema_grammar(schema)
    except (jsonschema.SchemaError, SchemaError, ValueError) as exc:
        raise BadRequest(f"{where}: invalid output_schema: {getattr(exc, 'message', exc)}") from None


class SpecStore:
    """The spec files of one directory: `<name>.json`, each written atomically."""

    def __init__(self, directory: Path):
        self.dir = directory

    def path(self, name: str) -> Path:
        if not NAME_RULE.match(name or ""):
            raise BadRequest(f"invalid agent name {name!r}: it must match {NAME_RULE.pattern}")
        return self.dir / f"{name}.json"

    def load_all(self) -> dict[str, AgentSpec]:
        """Every readable spec; one that does not parse is logged and left out, never fatal."""
        specs: dict[str, AgentSpec] = {}
        if not self.dir.is_dir():
            return specs
        for p in sorted(self.dir.glob("*.json")):
            try:
                spec = AgentSpec.from_dict(json.loads(p.read_text(encoding="utf-8")))
                if spec.name != p.stem:
                    raise BadRequest(f"the file is named {p.name} but the agent '{spec.name}'")
                specs[spec.name] = spec
            except (OSError, ValueError) as exc:  # BadRequest and JSON errors are ValueErrors
                log.warning("agent file %s left out: %s", p, exc)
        return specs

    def save(self, spec: AgentSpec) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.path(spec.name)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{spec.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(spec.to_dict(), f, indent=2, ensure_ascii=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
