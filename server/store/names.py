"""Model names: `[host/][namespace/]model[:tag]`, as Ollama writes and matches them.

A name's parts map one to one onto the manifest path
`manifests/<host>/<namespace>/<model>/<tag>`, so every part is checked against a strict
character set: a name can never climb out of the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's isValidPart (types/model/name.go): every part starts with a letter, digit or `_`;
# the namespace may not hold a `.` (the model and tag may), only the host a `:`.
_NAMESPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,349}(:[0-9]{1,5})?$")


class InvalidName(ValueError):
    """The string is not a valid model name."""


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str
    # "http" or "https" when the name was written with one (`http://host/ns/model`); not part of
    # the model's identity. A pull or push of an `http://` name needs `insecure`.
    scheme: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        """Parse a name, filling in Ollama's defaults; raise InvalidName when it is malformed."""
        raw = text.strip()
        if not raw:
            raise InvalidName("model name is required")
        scheme = ""
        for prefix in ("https://", "http://"):
            if raw.startswith(prefix):
                raw = raw[len(prefix):]
                scheme = prefix[:-3]
        digest_free = raw.split("@", 1)[0]
        path, tag = digest_free, DEFAULT_TAG
        slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > slash:
            path, tag = path[:colon], path[colon + 1:]
        parts = path.split("/")
        if len(parts) == 1:
            host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            host, namespace, model = DEFAULT_HOST, parts[0], parts[1]
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            raise InvalidName(f"invalid model name {text!r}")
        if not _HOST.match(host) or not _NAMESPACE.match(namespace) or not _PART.match(model) or not _TAG.match(tag):
            raise InvalidName(f"invalid model name {text!r}")
        for part in (host, namespace, model, tag):
            if part in (".", "..") or part.startswith("."):
                raise InvalidName(f"invalid model name {text!r}")
        return cls(host, namespace, model, tag, scheme)

    @property
    def display(self) -> str:
        """Shortest form, as `ollama list` prints it: `llama3.2:latest`, `user/m:tag`, `host/ns/m:tag`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Case-insensitive identity."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display
