"""GGUF rerankers through llama.cpp's rank pooling (server/engine/ranker.py), end to end.

The reranker is a real GGUF: the tiny BERT cross-encoder of tests/retrieval_fixtures.py written into a
GGUF with the same weights (tests/rerank_factory.py), `bert.pooling_type` 4. Its llama.cpp scores are
checked against the transformers model's logits on /rerank, /v1/rerank, /v2/rerank and a collection
search's rerank step.

llama.cpp feeds token type 0 ("sentence A") to every token, the document's too (src/models/bert.cpp),
where transformers gives the document type 1; so the twin's cross-encoder has its type-1 embedding set
equal to type 0, and both compute the same function. The remaining difference is llama.cpp's GELU (the
tanh approximation through an f16 table) against transformers' exact erf GELU: measured 0.013 at most on
these logits (about ±3), checked with an absolute tolerance of 0.03.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from server.retrieval.onnx_export import ensure_all_minilm
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import TINY_TEMPLATE, start_server
from tests.gguf_factory import write_random_llama
from tests.rerank_factory import write_bert_reranker_gguf
from tests.retrieval_fixtures import write_tiny_cross_encoder

TOLERANCE = 0.03  # absolute, on raw logits; measured 0.013 (GELU approximation)
QUERY = "where do cats sleep"
DOCUMENTS = ["cats sleep on the bread", "rockets burn fuel", "dogs bark in the city", "the moon and the earth",
             "fish in the ocean", "cats purr and cats sleep"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    import torch
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("rerank-gguf-models")
    store = Store(root)
    ensure_all_minilm(store)
    encoder = write_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))
    model = BertForSequenceClassification.from_pretrained(encoder).eval()
    with torch.no_grad():  # llama.cpp gives every token type 0: make type 1 the same embedding
        types = model.bert.embeddings.token_type_embeddings.weight
        types[1] = types[0]
    model.save_pretrained(encoder)
    gguf = write_bert_reranker_gguf(encoder, tmp_path_factory.mktemp("gguf") / "rerank.gguf")
    register_gguf(store, "tiny-rerank-gguf", gguf)
    tiny = write_random_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", chat_template=TINY_TEMPLATE,
                              n_layer=2, d=64)
    register_gguf(store, "tiny", tiny)
    return {"models": root, "encoder": encoder, "gguf": gguf}


@pytest.fixture(scope="module")
def http(models, tmp_path_factory):
    srv = start_server(models["models"], {"CORRAL_DATA_DIR": str(tmp_path_factory.mktemp("rerank-gguf-data"))},
                       log_dir=tmp_path_factory.mktemp("logs"))
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        yield client
    srv.stop()


@pytest.fixture(scope="module")
def expected(models) -> np.ndarray:
    """The transformers cross-encoder's logits for (QUERY, each document)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(models["encoder"])
    model = BertForSequenceClassification.from_pretrained(models["encoder"]).eval()
    with torch.no_grad():
        return model(**tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, truncation=True,
                                 return_tensors="pt")).logits[:, 0].numpy()


def test_llama_cpp_scores_equal_the_transformers_logits(models, expected):
    """Directly on the engine: the pair's tokens are transformers' own, the scores its logits."""
    from transformers import AutoTokenizer

    from server.engine.embedder import Embedder
    from server.engine.llama import LlamaModel
    from server.engine.ranker import pair_tokens

    llama = LlamaModel(models["gguf"], n_gpu_layers=0)
    embedder = Embedder(llama, n_ctx=64, n_threads=1)
    try:
        tokenizer = AutoTokenizer.from_pretrained(models["encoder"])
        tokens = [pair_tokens(llama, QUERY, d, 64) for d in DOCUMENTS]
        assert tokens == [tokenizer(QUERY, d)["input_ids"] for d in DOCUMENTS]
        scores = np.array([v[0] for v in embedder.embed(tokens)])
        assert np.abs(scores - expected).max() < TOLERANCE, (scores, expected)
        assert len(set(np.round(scores, 4))) == len(DOCUMENTS)
        again = np.array([v[0] for v in embedder.embed(list(reversed(tokens)))])[::-1]  # other batch order
        assert np.allclose(scores, again, atol=1e-5)
    finally:
        embedder.close()
        llama.close()


def test_gguf_reranker_on_every_route(http, expected):
    order = [int(i) for i in np.argsort(-expected, kind="stable")]
    gaps = np.diff(np.sort(expected))
    assert gaps.min() > 2 * TOLERANCE  # the ordering is decided beyond the tolerance

    r = http.post("/v1/rerank", json={"model": "tiny-rerank-gguf", "query": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny-rerank-gguf" and body["usage"]["prompt_tokens"] > 0
    assert [x["index"] for x in body["results"]] == order
    scores = [x["relevance_score"] for x in body["results"]]
    assert np.allclose(scores, expected[order], atol=TOLERANCE) and scores == sorted(scores, reverse=True)
    again = http.post("/v1/rerank", json={"model": "tiny-rerank-gguf", "query": QUERY, "documents": DOCUMENTS})
    assert [x["relevance_score"] for x in again.json()["results"]] == scores  # deterministic

    top = http.post("/rerank", json={"model": "tiny-rerank-gguf", "query": QUERY, "documents": DOCUMENTS,
                                     "top_n": 2, "return_documents": True}).json()["results"]
    assert [x["index"] for x in top] == order[:2] and top[0]["document"]["text"] == DOCUMENTS[order[0]]
    cohere = http.post("/v2/rerank", json={"model": "tiny-rerank-gguf", "query": QUERY, "top_n": 3,
                                           "documents": [{"text": d} for d in DOCUMENTS]}).json()
    assert [x["index"] for x in cohere["results"]] == order[:3] and cohere["meta"]["api_version"]["version"] == "2"

    def bad(path, body, status, match, shape="openai"):
        r = http.post(path, json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"] if shape != "cohere" else r.json()["message"]
        message = error["message"] if shape == "openai" else error
        assert match in message, message

    base = {"model": "tiny-rerank-gguf", "query": QUERY}
    bad("/v1/rerank", {**base, "documents": []}, 400, "at least one document")
    bad("/rerank", {**base, "documents": ["a"], "top_n": 0}, 400, "top_n must be at least 1")
    bad("/v1/rerank", {**base, "model": "tiny", "documents": ["a"]}, 400, "is not a reranker")
    bad("/v2/rerank", {**base, "model": "tiny", "documents": ["a"]}, 400, "is not a reranker", shape="cohere")
    bad("/v1/rerank", {**base, "documents": [7]}, 400, "documents[0]")
    bad("/v2/rerank", {**base, "documents": ["a"], "top_n": -1}, 400, "top_n", shape="cohere")
    # a document longer than the context is cut, not refused
    long = http.post("/v1/rerank", json={**base, "documents": ["cats " * 500, "fish"]})
    assert long.status_code == 200 and len(long.json()["results"]) == 2, long.text

    # a collection search with the GGUF reranker: it decides the order of the candidates
    r = http.post("/api/collections", json={"name": "gguf-reranked"})
    assert r.status_code == 200, r.text
    r = http.post("/api/collections/gguf-reranked/documents",
                  json={"documents": [{"name": f"d{i}", "text": d} for i, d in enumerate(DOCUMENTS)]})
    assert r.status_code == 200, r.text
    hits = http.post("/api/collections/gguf-reranked/search",
                     json={"query": QUERY, "k": 3, "rerank": "tiny-rerank-gguf", "candidates": 6}).json()["results"]
    assert [h["document_id"] for h in hits] == [f"d{i}" for i in order[:3]]
    assert np.allclose([h["score"] for h in hits], expected[order[:3]], atol=TOLERANCE)
    bad("/api/collections/gguf-reranked/search", {"query": QUERY, "rerank": "tiny"}, 400, "not a reranker",
        shape="ollama")
    # the reranker is no embedding model for a collection
    r = http.post("/api/collections", json={"name": "wrong", "embedding_model": "tiny-rerank-gguf"})
    assert r.status_code == 400 and "not an embedding model" in r.text, r.text
    http.delete("/api/collections/gguf-reranked")


def test_embeddings_on_a_gguf_reranker_are_refused(http):
    """Rank pooling gives one score per pair, not a vector (llama-server refuses embeddings on a reranker
    too): /api/embed, /api/embeddings and /v1/embeddings answer 400 in their own error shape, naming why."""
    for path, body in (("/api/embed", {"input": ["where do cats sleep", "fish"]}), ("/api/embed", {"input": "x"}),
                       ("/api/embeddings", {"prompt": "where do cats sleep"}), ("/v1/embeddings", {"input": "x"})):
        r = http.post(path, json={"model": "tiny-rerank-gguf", **body})
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        if path.startswith("/v1/"):
            assert error["type"] == "invalid_request_error"
            error = error["message"]
        assert "'tiny-rerank-gguf' is a reranker, not an embedding model" in error and "/v1/rerank" in error, error
    # /api/show lists no capability for it (no embedding, no completion), as for an ONNX reranker
    assert http.post("/api/show", json={"model": "tiny-rerank-gguf"}).json()["capabilities"] == []
    r = http.post("/api/generate", json={"model": "tiny-rerank-gguf", "prompt": "hi"})
    assert r.status_code == 400 and "does not support generate" in r.json()["error"], r.text
    # the same model still reranks, and an embedding model beside it still embeds
    r = http.post("/v1/rerank", json={"model": "tiny-rerank-gguf", "query": QUERY, "documents": DOCUMENTS[:2]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
    r = http.post("/api/embed", json={"model": "all-minilm", "input": "cats"})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384, r.text
