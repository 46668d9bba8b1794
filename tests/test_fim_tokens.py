"""Fill-in-the-middle for every vocabulary llama.cpp finds FIM tokens in (issue 20).

The `insert` capability (/api/show, the capability check) comes from llama.cpp's own detection (a
vocabulary-only load, `server.engine.llama.fim_token_ids`), the same detection the prompt builder
uses on the loaded model, so a model either is offered FIM and serves it, or is refused with
`does not support insert`; never one without the other. Each model is a tiny random-weight Llama
with the Llama 3 vocabulary plus one family's FIM tokens as control tokens."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gguf import GGUFValueType, GGUFWriter

from server.engine.llama import fim_token_ids
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import start_server
from tests.gguf_factory import LLAMA_BPE_VOCAB, _tokenizer_fields, write_random_llama

# family → its FIM token texts (prefix, suffix, middle, then extras such as pad/repo/file separator)
DETECTED = {
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<reponame>"),
    "qwen25-coder": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>",
                     "<|file_sep|>"),
    "deepseek-coder": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # FULLWIDTH bars, ▁ (U+2581)
    "codellama": ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"),
    "codellama-plain": ("<PRE>", "<SUF>", "<MID>"),
    "refact": ("<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"),
    "glm": ("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),
}
# Codestral's tokens: llama.cpp does not know them by their text; it finds them when the GGUF's
# metadata names them (tokenizer.ggml.fim_{pre,suf,mid}_token_id), as for any vocabulary
CODESTRAL = ("[PREFIX]", "[SUFFIX]", "[MIDDLE]")
# vocabularies llama.cpp finds no FIM tokens in
UNDETECTED = {
    "plain": (),
    "codestral-text-only": CODESTRAL,
    "deepseek-ascii-bars": ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),  # not DeepSeek's spelling
}


def write_model(path: Path, tokens, seed: int, fim_ids: bool = False) -> Path:
    extra = [(t, "control") for t in tokens]
    if not fim_ids:
        return write_random_llama(path, extra_tokens=extra, seed=seed, n_layer=1, d=32)
    # a tokenizer source whose metadata names the FIM tokens' ids; write_random_llama copies it
    fields = _tokenizer_fields(str(LLAMA_BPE_VOCAB))
    base = next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens")
    vocab = path.with_suffix(".vocab.gguf")
    w = GGUFWriter(str(vocab), "llama")
    for key, val, vtype, sub in fields:
        if key == "tokenizer.ggml.tokens":
            val = list(val) + list(tokens)
        elif key == "tokenizer.ggml.token_type":
            val = list(val) + [3] * len(tokens)
        elif key == "tokenizer.ggml.scores":
            val = list(val) + [0.0] * len(tokens)
        w.add_key_value(key, val, vtype, sub_type=sub)
    for i, name in enumerate(("pre", "suf", "mid")):
        w.add_key_value(f"tokenizer.ggml.fim_{name}_token_id", len(base) + i, GGUFValueType.UINT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return write_random_llama(path, vocab=str(vocab), seed=seed, n_layer=1, d=32)


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fimmodels")
    store = Store(d / "models")
    files = {}
    for seed, (name, tokens) in enumerate({**DETECTED, **UNDETECTED}.items()):
        files[name] = write_model(d / f"{name}.gguf", tokens, seed)
    files["codestral"] = write_model(d / "codestral.gguf", CODESTRAL, 99, fim_ids=True)
    for name, path in files.items():
        register_gguf(store, name, path)
    s = start_server(d / "models", log_dir=d)
    s.files = files
    yield s
    s.stop()


def generate(server, model: str):
    return httpx.post(server.url + "/api/generate", timeout=120, json={
        "model": model, "stream": False, "prompt": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n",
        "options": {"num_predict": 4, "temperature": 0}})


@pytest.mark.parametrize("name", [*DETECTED, "codestral"])
def test_fim_family_is_offered_and_served(fim_server, name):
    fim = fim_token_ids(str(fim_server.files[name]))
    assert fim is not None and min(fim["pre"], fim["suf"], fim["mid"]) >= 0, fim  # llama.cpp finds them
    show = httpx.post(fim_server.url + "/api/show", json={"model": name}).json()
    assert "insert" in show["capabilities"]
    r = generate(fim_server, name)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] and isinstance(body["response"], str) and body["eval_count"] >= 1
    # the prompt is built from the tokens llama.cpp found, in prefix-suffix-middle order
    r = httpx.post(fim_server.url + "/api/generate", timeout=120, json={
        "model": name, "prompt": "A", "suffix": "B", "_debug_render_only": True, "stream": False})
    assert r.status_code == 200, r.text
    rendered = r.json()["_debug_info"]["rendered_template"]
    tokens = DETECTED.get(name, CODESTRAL)
    assert rendered.index(tokens[0]) < rendered.index("A") < rendered.index(tokens[1]) < rendered.index("B") \
        < rendered.index(tokens[2]), rendered


@pytest.mark.parametrize("name", list(UNDETECTED))
def test_model_without_fim_tokens_is_refused(fim_server, name):
    assert min(fim_token_ids(str(fim_server.files[name]))[k] for k in ("pre", "suf", "mid")) < 0
    show = httpx.post(fim_server.url + "/api/show", json={"model": name}).json()
    assert "insert" not in show["capabilities"]
    r = generate(fim_server, name)
    assert r.status_code == 400
    assert r.json() == {"error": f"registry.ollama.ai/library/{name}:latest does not support insert"}


def test_vocabulary_is_loaded_once_per_blob(fim_server):
    """Capabilities are computed on every request: llama.cpp's look at a vocabulary (a
    vocabulary-only load, ~0.3 s for 128k tokens) is kept per blob."""
    from server.store import model as model_module
    from server.store.names import ModelName

    fim_token_ids.cache_clear()
    store = Store(fim_server.models)
    for _ in range(3):
        for name in ("qwen25-coder", "plain"):
            model = model_module.Model(store, store.find(ModelName.parse(name)))
            assert ("insert" in model.capabilities()) == (name == "qwen25-coder")
    info = fim_token_ids.cache_info()
    assert info.misses == 2 and info.hits == 4
