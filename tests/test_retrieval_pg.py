"""The PostgreSQL backend (pgvector HNSW + full-text search) against a real server (pgserver), through the
same RetrievalService the HTTP routes use: collections, every search mode, filters, replace, delete, an
ingest that fails inside its transaction, and two services (replicas) sharing one database."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from server.config import Settings
from server.retrieval.onnx_export import ensure_all_minilm
from server.retrieval.service import NewDocument
from server.services import build_services
from server.store.store import Store
from tests.retrieval_fixtures import write_pdf

pgserver = pytest.importorskip("pgserver")


@pytest.fixture(scope="module")
def postgres():
    """Data outside pytest's temporary root (see tests/test_agents.py's fixture for why)."""
    data = Path(tempfile.mkdtemp(prefix="corral-pg-retrieval-"))
    srv = pgserver.get_server(data, cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pg-models")
    ensure_all_minilm(Store(root))
    return root


def _services(models: Path, data: Path, url: str):
    return build_services(Settings(models_dir=models, data_dir=data, embed_default_model=False, database_url=url))


async def test_postgres_collections(models, postgres, tmp_path):
    services = _services(models, tmp_path / "a", postgres)
    svc = services.retrieval
    info = await svc.create_collection("pgdocs", chunk_tokens=24, chunk_overlap=4)
    assert info.dimensions == 384
    pdf = write_pdf(tmp_path / "s.pdf", ["Fish breathe through gills in the ocean.", "The Earth orbits the Sun."])
    added = await svc.add_documents("pgdocs", [
        NewDocument(b"# Bread\n\nBread needs flour, water and yeast.", name="bread.md", metadata={"topic": "food"}),
        NewDocument(b"<p>Paris is the capital of France.</p>", name="paris.html", metadata={"topic": "places"}),
        NewDocument(b'{"text": "Cats purr.", "animal": "cat"}\n{"text": "Dogs bark.", "animal": "dog"}',
                    name="pets.jsonl", metadata={"topic": "animals"}),
        NewDocument(pdf.read_bytes(), name="s.pdf", metadata={"topic": "science"}),
    ])
    assert [a.status for a in added] == ["added"] * 4
    assert (await svc.collection("pgdocs")).documents == 4 and (await svc.collection("pgdocs")).chunks == 6
    assert not (tmp_path / "a" / "retrieval.db").exists()

    assert (await svc.search("pgdocs", "capital of France", k=2))[0].document_id == "paris.html"
    vector = await svc.search("pgdocs", "feline", mode="vector", k=1)
    assert vector[0].metadata["animal"] == "cat" and -1 <= vector[0].score <= 1
    keyword = await svc.search("pgdocs", "yeast!", mode="keyword")
    assert [h.document_id for h in keyword] == ["bread.md"] and keyword[0].heading == "Bread"
    gills = (await svc.search("pgdocs", "gills", mode="keyword"))[0]
    assert gills.page == 1 and gills.document_name == "s.pdf"
    assert [h.metadata["animal"] for h in await svc.search("pgdocs", "animals", filters={"animal": "dog"})] == ["dog"]
    assert {h.document_id for h in await svc.search("pgdocs", "things", k=10, filters={"topic": ["food", "places"]})} \
        == {"bread.md", "paris.html"}

    # replace: the old chunks go, the new ones come
    added = await svc.add_documents("pgdocs", [NewDocument(b"Rye bread is dense.", name="bread.md")])
    assert added[0].status == "replaced"
    assert await svc.search("pgdocs", "yeast", mode="keyword") == []

    # a failure inside the transaction leaves the document as it was
    info = await svc.collection("pgdocs")
    before = svc.db.chunk_texts(info, "paris.html")
    real = svc.db.put_document

    def failing(collection, doc, chunks, vectors):
        return real(collection, doc, chunks + chunks[:1], vectors)  # one vector short: zip(strict) raises mid-insert

    svc.db.put_document = failing
    with pytest.raises(ValueError):
        await svc.add_documents("pgdocs", [NewDocument(b"<p>Lyon is a city in France.</p>", name="paris.html")])
    svc.db.put_document = real
    assert svc.db.chunk_texts(info, "paris.html") == before

    # a second service on the same database (another replica) sees the same collection
    other = _services(models, tmp_path / "b", postgres)
    assert [c.name for c in await other.retrieval.list_collections()] == ["pgdocs"]
    assert (await other.retrieval.search("pgdocs", "Rye", mode="keyword"))[0].document_id == "bread.md"

    # the store keeps its connections in a pool: a server that ends them all costs no failed request
    pool = svc.db.pool
    assert pool.get_stats()["pool_size"] <= 8
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = '' AND pid <> pg_backend_pid() "
                              "AND datname = current_database()").fetchone()[0]
    assert ended >= 1
    assert (await svc.search("pgdocs", "Rye", mode="keyword"))[0].document_id == "bread.md"

    await svc.delete_document("pgdocs", "pets.jsonl")
    assert sorted(d.id for d in await svc.list_documents("pgdocs")) == ["bread.md", "paris.html", "s.pdf"]
    await svc.delete_collection("pgdocs")
    assert await other.retrieval.list_collections() == []
    await services.close()
    await other.close()
    assert pool.closed
