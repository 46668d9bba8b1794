"""Token counts for chunking with a GGUF embedding model's own vocabulary: a vocabulary-only llama.cpp
load (no weights read), one per blob, kept for the process."""

from __future__ import annotations

import functools
import threading

_lock = threading.Lock()


class VocabCounter:
    def __init__(self, path: str):
        import llama_cpp.llama_cpp as C

        from server.engine.llama import init_backend

        init_backend()
        params = C.llama_model_default_params()
        params.vocab_only = True
        params.n_gpu_layers = 0
        self.C = C
        with _lock:
            self.model = C.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise ValueError(f"cannot read the vocabulary of {path}")
        self.vocab = C.llama_model_get_vocab(self.model)
        self.lock = threading.Lock()

    def count(self, texts: list[str]) -> list[int]:
        out = []
        with self.lock:
            for text in texts:
                data = text.encode("utf-8")
                n_max = len(data) + 8
                buf = (self.C.llama_token * n_max)()
                n = self.C.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, False)
                out.append(abs(n))  # negative: the buffer was too small, -n tokens needed
        return out


@functools.lru_cache(maxsize=8)
def vocab_counter(path: str) -> VocabCounter:
    return VocabCounter(path)
