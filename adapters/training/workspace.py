"""What a trainer works with besides its job: the model store, the device, creating the output model,
and saving the PEFT adapter it trained.

The output model is made through /api/create's own path (server/create.py), run to completion on the
job's thread: the same checks, the same layers, the manifest written last.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server import create as creating
from server.store.store import Store

from .errors import TrainingError


@dataclass
class Workspace:
    store: Store
    device: str  # "cpu" or "cuda"
    threads: int  # llama.cpp threads for a quantize at create
    cache: Path  # what jobs share: tokenizers converted from GGUF files, by blob (<data_dir>/training/cache)

    def ensure_name_free(self, name: str) -> None:
        if self.store.find(name) is not None:
            raise TrainingError(f"a model named '{name}' was created while the job ran: the job's output is kept "
                                "in its folder, and no model was written")

    def create_model(self, spec: creating.CreateSpec, on_status: Any = None) -> None:
        """Create a model as /api/create does; each progress status goes to `on_status`."""

        async def run() -> None:
            async for item in creating.create(self.store, spec, threads=self.threads or None):
                if on_status is not None and item.get("status"):
                    on_status(item)

        try:
            asyncio.run(run())
        except creating.CreateError as exc:
            raise TrainingError(f"creating the model failed: {exc}") from None


def save_adapter(model: Any, directory: Path) -> Path:
    """The PEFT adapter (adapter_config.json + adapter_model.safetensors) in `directory/adapter`, written
    to a temporary folder and renamed into place."""
    final = directory / "adapter"
    tmp = directory / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    config = tmp / "adapter_config.json"
    json.loads(config.read_text())  # written whole
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
