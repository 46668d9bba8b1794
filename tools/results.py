"""What a tool returns: text, a JSON value, citations and artifacts (files kept by content)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Citation:
    """Where a piece of the result came from."""

    source: str  # a document's name or URI
    location: str = ""  # page, line range, chunk id ...
    score: float | None = None
    quote: str = ""  # the quoted text


@dataclass
class Artifact:
    """A file a tool made, kept in the artifact store under its sha256."""

    digest: str  # "sha256:<hex>"
    media_type: str
    size: int
    name: str = ""

    @property
    def url(self) -> str:
        return f"/api/artifacts/{self.digest}"


@dataclass
class ToolResult:
    text: str = ""
    json: Any = None
    citations: list[Citation] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)

    @classmethod
    def of(cls, value: Any) -> "ToolResult":
        """A handler's return value as a result: text stays text, other values become JSON."""
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if value is None:
            return cls()
        return cls(json=value)

    def as_text(self) -> str:
        """The result as a model reads it in a tool message."""
        parts = [self.text] if self.text else []
        if self.json is not None:
            parts.append(json.dumps(self.json, ensure_ascii=False))
        for i, c in enumerate(self.citations, 1):
            where = f" ({c.location})" if c.location else ""
            parts.append(f"[{i}] {c.source}{where}: {c.quote}")
        for a in self.artifacts:
            parts.append(f"artifact {a.name or a.digest} ({a.media_type}, {a.size} bytes): {a.url}")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"content": self.text}
        if self.json is not None:
            out["json"] = self.json
        if self.citations:
            out["citations"] = [asdict(c) for c in self.citations]
        if self.artifacts:
            out["artifacts"] = [dict(asdict(a), url=a.url) for a in self.artifacts]
        return out
