"""The manifest format: Docker's image manifest v2, with Ollama's layer media types."""

from __future__ import annotations

import msgspec

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"

MODEL = "application/vnd.ollama.image.model"
ADAPTER = "application/vnd.ollama.image.adapter"
PROJECTOR = "application/vnd.ollama.image.projector"
TEMPLATE = "application/vnd.ollama.image.template"
SYSTEM = "application/vnd.ollama.image.system"
PARAMS = "application/vnd.ollama.image.params"
MESSAGES = "application/vnd.ollama.image.messages"
LICENSE = "application/vnd.ollama.image.license"
# Corral's own layers for diffusion pipelines (server/imaging/): every file of a diffusers folder is a
# DIFFUSERS_FILE layer; the DIFFUSERS_INDEX layer maps each file's path in the folder to its digest
# (`{"files": {"unet/config.json": "sha256:…"}, "variant": "pytorch" | "onnx"}`); a DIFFUSION_LORA layer is
# a LoRA safetensors file for such a pipeline
DIFFUSERS_INDEX = "application/vnd.corral.diffusers.index"
DIFFUSERS_FILE = "application/vnd.corral.diffusers.file"
DIFFUSION_LORA = "application/vnd.corral.diffusers.lora"
# Corral's own layers: a model exported to ONNX (server/retrieval/onnx_export.py), its tokenizer.json and
# its Corral config (task "embedding" or "rerank", pooling, max_length)
ONNX_MODEL = "application/vnd.corral.onnx.model"
ONNX_TOKENIZER = "application/vnd.corral.onnx.tokenizer"
ONNX_CONFIG = "application/vnd.corral.onnx.config"


class Layer(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    # Ollama records the layer's origin for some layers; kept as-is when present.
    from_: str | None = msgspec.field(default=None, name="from")


class Manifest(msgspec.Struct, omit_defaults=True):
    schemaVersion: int = 2
    mediaType: str = MANIFEST_MEDIA_TYPE
    config: Layer | None = None
    layers: list[Layer] = msgspec.field(default_factory=list)

    def layer(self, media_type: str) -> Layer | None:
        """The last layer of a media type (Ollama lets later layers override earlier ones)."""
        found = None
        for layer in self.layers:
            if layer.mediaType == media_type:
                found = layer
        return found

    def all_layers(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.mediaType == media_type]

    def digests(self) -> list[str]:
        out = [layer.digest for layer in self.layers]
        if self.config is not None:
            out.append(self.config.digest)
        return out

    @property
    def size(self) -> int:
        """What `ollama list` reports: every layer plus the config blob."""
        return sum(layer.size for layer in self.layers) + (self.config.size if self.config else 0)


class ModelConfig(msgspec.Struct, omit_defaults=True):
    """The config blob: what /api/show's details are made from."""

    model_format: str = "gguf"
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    architecture: str = "amd64"
    os: str = "linux"
    rootfs: dict | None = None
    parent_model: str = ""


def decode(data: bytes) -> Manifest:
    return msgspec.json.decode(data, type=Manifest)


def encode(manifest: Manifest) -> bytes:
    """The manifest as Ollama writes it: `schemaVersion` and `mediaType` always present (registries
    such as distribution's registry:2 refuse a manifest without them), then config and layers; a
    layer's unset optional fields (`from`) are left out."""
    body = msgspec.to_builtins(manifest)  # omit_defaults: drops the two header fields at their defaults
    out = {
        "schemaVersion": manifest.schemaVersion,
        "mediaType": manifest.mediaType or MANIFEST_MEDIA_TYPE,
    }
    if "config" in body:
        out["config"] = body["config"]
    out["layers"] = body.get("layers", [])
    return msgspec.json.encode(out)
