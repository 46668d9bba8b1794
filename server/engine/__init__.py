"""The llama.cpp engine: models, contexts, the continuous-batching runner, embeddings, memory plans.

Importing this package first chooses the llama.cpp build the process loads. `scripts/install.sh`
installs two: the package's own, with llama.cpp's default kernels (llamafile's matrix kernels: the
fastest on a CPU, but their numbers change with the batch size), and an exact one built with
`-DGGML_LLAMAFILE=OFF` whose libraries lie in `<prefix>/lib/corral-llama-exact`. With
CORRAL_DETERMINISTIC=1 the exact one is loaded (llama-cpp-python's LLAMA_CPP_LIB_PATH), so
deterministic mode gets batch-invariant kernels without imposing them on everyone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXACT_LIBRARY = Path(sys.prefix) / "lib" / "corral-llama-exact"


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _choose_library() -> None:
    if "llama_cpp.llama_cpp" in sys.modules or os.environ.get("LLAMA_CPP_LIB_PATH"):
        return  # already loaded, or chosen by the operator
    if _on(os.environ.get("CORRAL_DETERMINISTIC")) and (EXACT_LIBRARY / "libllama.so").exists():
        os.environ["LLAMA_CPP_LIB_PATH"] = str(EXACT_LIBRARY)


def loaded_build() -> str:
    """Which llama.cpp build this process uses: "exact", "default" or the operator's path."""
    chosen = os.environ.get("LLAMA_CPP_LIB_PATH")
    if not chosen:
        return "default"
    return "exact" if Path(chosen) == EXACT_LIBRARY else chosen


_choose_library()
