"""The retrieval service: collections, ingest, search, rerank and the ONNX embedding models.

Built once by the composition root (server/services.py) as `services.retrieval`; HTTP routes, the
`search_documents` tool, grounded chat (grounding.py) and the CLI all call it. Knows nothing of HTTP.
Blocking work (reading files, tokenizing, onnxruntime, the database) runs in worker threads; a caller
that is cancelled stops it after the batch under way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.config import Settings
from server.errors import BadRequest, NotFound
from server.inference import Embeddings, Inference
from server.store.names import InvalidName, ModelName
from server.store.store import Store
from server.threads import in_thread

from . import chunking, readers
from .fusion import reciprocal_rank_fusion
from .onnx_export import DEFAULT_EMBEDDING_MODEL, ensure_all_minilm, is_onnx
from .records import NAME_RULE, CollectionInfo, CollectionStore, DocumentInfo, Hit, check_filters

log = logging.getLogger("corral.retrieval")

MODES = ("hybrid", "vector", "keyword")
MAX_K = 100
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_RERANK_DOCUMENTS = 1000
EMBED_BATCH = 64  # chunks embedded between two progress reports
Progress = Callable[[dict], Awaitable[None] | None]


@dataclass
class NewDocument:
    """A document to add: its bytes (or text), what it is called and its metadata."""

    data: bytes
    name: str = ""
    id: str = ""  # default: the name, else the content's digest
    format: str = ""  # text, markdown, html, pdf, jsonl; default: from the name, media type or bytes
    media_type: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class Added:
    document: DocumentInfo
    status: str  # "added", "replaced" or "unchanged"


@dataclass
class Reranked:
    index: int
    score: float


@dataclass
class GgufReranker:
    """A GGUF model llama.cpp pools with rank pooling: scored by `Inference.rerank`."""

    name: str
    task: str = "rerank"


def _same_model(a: str, b: str) -> bool:
    try:
        return ModelName.parse(a) == ModelName.parse(b)
    except InvalidName:
        return False


class RetrievalService:
    def __init__(self, settings: Settings, store: Store, inference: Inference):
        self.settings = settings
        self.store = store
        self.inference = inference
        self._db: CollectionStore | None = None
        self._db_lock = threading.Lock()
        self._onnx = None

    # ---- backends -----------------------------------------------------------------------------

    @property
    def db(self) -> CollectionStore:
        """The collection store, opened on first use: PostgreSQL when CORRAL_DATABASE_URL is set, else
        SQLite in the data directory."""
        with self._db_lock:
            if self._db is None:
                if self.settings.database_url:
                    from .pg_store import PgStore

                    self._db = PgStore(self.settings.database_url)
                else:
                    from .sqlite_store import SqliteStore

                    self._db = SqliteStore(self.settings.data_dir / "retrieval.db")
            return self._db

    @property
    def onnx(self):
        if self._onnx is None:
            from .onnx_models import OnnxModels

            self._onnx = OnnxModels(self.store, self.settings.num_threads)
        return self._onnx

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- models -------------------------------------------------------------------------------

    def onnx_model(self, name: str):
        """The loaded ONNX model called `name` (all-minilm is exported on first use), or None when `name`
        is not an ONNX model."""
        if _same_model(name, DEFAULT_EMBEDDING_MODEL):
            entry = ensure_all_minilm(self.store)
        else:
            try:
                entry = self.store.find(ModelName.parse(name))
            except InvalidName as exc:
                raise BadRequest(str(exc)) from exc
        return self.onnx.get(entry) if is_onnx(entry) else None

    def handles(self, name: str) -> bool:
        """Whether `name` is served here (an ONNX model, or all-minilm) rather than by llama.cpp."""
        if _same_model(name, DEFAULT_EMBEDDING_MODEL):
            return True
        try:
            return is_onnx(self.store.find(ModelName.parse(name)))
        except InvalidName:
            return False

    async def embed_api(self, name: str, inputs: list[str], *, truncate: bool = True, normalized: bool = True,
                        dimensions: int | None = None) -> Embeddings:
        """/api/embed, /api/embeddings and /v1/embeddings for an ONNX model (Inference.embed routes here)."""
        model = await in_thread(self.onnx_model, name)
        if model is None or model.task != "embedding":
            raise BadRequest(f"model '{name}' does not support embeddings")
        stop = threading.Event()
        vectors, tokens = await in_thread(model.embed, inputs, truncate, stop, stop=stop)
        if dimensions:
            vectors = vectors[:, :dimensions]
            if normalized:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(vectors.tolist(), tokens, 0)

    async def _embed(self, model_name: str, texts: list[str]) -> np.ndarray:
        model = await in_thread(self.onnx_model, model_name)
        if model is not None:
            if model.task != "embedding":
                raise BadRequest(f"model '{model_name}' is not an embedding model")
            stop = threading.Event()
            return (await in_thread(model.embed, texts, True, stop, stop=stop))[0]
        model = self.inference.model(model_name)
        if "embedding" not in self.inference.capabilities(model):  # a reranker has none
            raise BadRequest(f"model '{model_name}' is not an embedding model")
        result = await self.inference.embed(model_name, texts, truncate=True)
        return np.asarray(result.vectors, dtype=np.float32)

    def _counter(self, model_name: str) -> chunking.CountTokens:
        model = self.onnx_model(model_name)
        if model is not None:
            return model.count_tokens
        from .gguf_tokens import vocab_counter

        path = self.inference.model(model_name).model_path
        if path is None:
            raise BadRequest(f"model '{model_name}' has no weights to tokenize with")
        return vocab_counter(str(path)).count

    # ---- collections --------------------------------------------------------------------------

    async def create_collection(self, name: str, embedding_model: str = DEFAULT_EMBEDDING_MODEL,
                                chunk_tokens: int = 200, chunk_overlap: int = 40,
                                metadata: dict | None = None) -> CollectionInfo:
        if not NAME_RULE.match(name or ""):
            raise BadRequest(f"invalid collection name {name!r}: letters, digits, '_', '.', '-', at most 64, "
                             "starting with a letter or digit")
        if chunk_tokens < 8 or chunk_tokens > 8192:
            raise BadRequest("chunk_tokens must be between 8 and 8192")
        if not 0 <= chunk_overlap < chunk_tokens:
            raise BadRequest("chunk_overlap must be at least 0 and less than chunk_tokens")
        embedding_model = embedding_model or DEFAULT_EMBEDDING_MODEL
        probe = await self._embed(embedding_model, ["dimensions"])
        info = CollectionInfo(name=name, embedding_model=embedding_model, dimensions=int(probe.shape[1]),
                              chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, metadata=metadata or {})
        return await in_thread(self.db.create_collection, info)

    async def collection(self, name: str) -> CollectionInfo:
        info = await in_thread(self.db.get_collection, name)
        if info is None:
            raise NotFound(f"collection '{name}' not found")
        return info

    async def list_collections(self) -> list[CollectionInfo]:
        return await in_thread(self.db.list_collections)

    async def delete_collection(self, name: str) -> None:
        if not await in_thread(self.db.delete_collection, name):
            raise NotFound(f"collection '{name}' not found")

    # ---- documents ----------------------------------------------------------------------------

    async def add_documents(self, collection: str, documents: list[NewDocument],
                            progress: Progress | None = None) -> list[Added]:
        """Read, chunk, embed and store each document; each is written in one transaction (a failure or a
        cancellation leaves it as it was, documents before it stay added). A document whose id exists is
        replaced, unless its bytes and metadata are unchanged."""
        info = await self.collection(collection)
        out = []
        for number, doc in enumerate(documents, 1):
            out.append(await self._add(info, doc, progress, f"{number}/{len(documents)}"))
        return out

    async def _add(self, info: CollectionInfo, doc: NewDocument, progress: Progress | None, where: str) -> Added:
        async def report(status: str, completed: int | None = None, total: int | None = None) -> None:
            if progress is not None:
                line: dict[str, Any] = {"status": status}
                if total is not None:
                    line.update(completed=completed, total=total)
                result = progress(line)
                if asyncio.iscoroutine(result):
                    await result

        if len(doc.data) > MAX_DOCUMENT_BYTES:
            raise BadRequest(f"document {doc.name or doc.id!r} is larger than {MAX_DOCUMENT_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(doc.data).hexdigest()
        doc_id = doc.id or doc.name or digest.removeprefix("sha256:")[:16]
        if len(doc_id) > 512:
            raise BadRequest("a document id is at most 512 characters")
        label = doc.name or doc_id
        fmt = readers.detect_format(doc.format or doc.name, doc.media_type, doc.data)
        if doc.format and doc.format not in readers.FORMATS:
            raise BadRequest(f"unknown format {doc.format!r}: expected one of {', '.join(readers.FORMATS)}")
        old = await in_thread(self.db.get_document, info, doc_id)
        if old is not None and old.digest == digest and old.metadata == doc.metadata:
            await report(f"unchanged {label} ({where})")
            return Added(old, "unchanged")
        await report(f"reading {label} ({where})")
        sections = await in_thread(readers.read, doc.data, fmt)
        counter = await in_thread(self._counter, info.embedding_model)
        chunks = await in_thread(chunking.chunk, sections, counter, info.chunk_tokens, info.chunk_overlap)
        vectors = np.zeros((len(chunks), info.dimensions), dtype=np.float32)
        for start in range(0, len(chunks), EMBED_BATCH):
            await report(f"embedding {label}", start, len(chunks))
            part = await self._embed(info.embedding_model, [c.text for c in chunks[start:start + EMBED_BATCH]])
            if part.shape[1] != info.dimensions:
                raise BadRequest(f"model '{info.embedding_model}' gave {part.shape[1]} dimensions, the collection "
                                 f"has {info.dimensions}")
            vectors[start:start + len(part)] = part
        await report(f"embedding {label}", len(chunks), len(chunks))
        record = DocumentInfo(id=doc_id, name=doc.name or doc_id, format=fmt, digest=digest,
                              metadata=dict(doc.metadata), characters=sum(len(s.text) for s in sections),
                              chunks=len(chunks))
        await report(f"writing {label}")
        await in_thread(self.db.put_document, info, record, chunks, vectors)
        return Added(record, "replaced" if old is not None else "added")

    async def list_documents(self, collection: str, offset: int = 0, limit: int = 1000) -> list[DocumentInfo]:
        info = await self.collection(collection)
        return await in_thread(self.db.list_documents, info, offset, limit)

    async def document(self, collection: str, document_id: str) -> DocumentInfo:
        info = await self.collection(collection)
        found = await in_thread(self.db.get_document, info, document_id)
        if found is None:
            raise NotFound(f"document '{document_id}' not found in collection '{collection}'")
        return found

    async def delete_document(self, collection: str, document_id: str) -> None:
        info = await self.collection(collection)
        if not await in_thread(self.db.delete_document, info, document_id):
            raise NotFound(f"document '{document_id}' not found in collection '{collection}'")

    # ---- search -------------------------------------------------------------------------------

    async def search(self, collection: str, query: str, k: int = 5, mode: str = "hybrid",
                     filters: dict[str, Any] | None = None, rerank: str | None = None,
                     candidates: int | None = None) -> list[Hit]:
        """The `k` best chunks: hybrid (vector and keyword rankings fused by RRF), vector or keyword; then,
        with `rerank`, the best `candidates` (default 4 × k) reordered by that reranker's scores."""
        if mode not in MODES:
            raise BadRequest(f"invalid mode {mode!r}: expected one of {', '.join(MODES)}")
        if not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be between 1 and {MAX_K}")
        if not query or not query.strip():
            raise BadRequest("query is required")
        checked = check_filters(filters)
        info = await self.collection(collection)
        if rerank:
            await in_thread(self.reranker, rerank)
        pool = min(MAX_K * 4, max(k, candidates or (4 * k if rerank else k)))
        wide = pool if mode != "hybrid" else max(pool, 2 * k, 20)  # each ranking deeper than k before fusion
        rankings = []
        if mode in ("hybrid", "vector"):
            vector = (await self._embed(info.embedding_model, [query]))[0]
            rankings.append(await in_thread(self.db.vector_search, info, vector, wide, checked))
        if mode in ("hybrid", "keyword"):
            rankings.append(await in_thread(self.db.keyword_search, info, query, wide, checked))
        hits = reciprocal_rank_fusion(rankings, pool) if mode == "hybrid" else rankings[0][:pool]
        if rerank:
            ranked, _ = await self.rerank(rerank, query, [h.text for h in hits]) if hits else ([], 0)
            hits = [_with_score(hits[r.index], r.score) for r in ranked]
        return hits[:k]

    def reranker(self, model_name: str):
        """The ONNX cross-encoder called `model_name`, or a GgufReranker for a GGUF that llama.cpp
        rank-pools; NotFound, or BadRequest when it is no reranker."""
        model = self.onnx_model(model_name)
        if model is None:
            try:
                found = self.store.find(ModelName.parse(model_name))
            except InvalidName as exc:
                raise BadRequest(str(exc)) from exc
            if found is None:
                raise NotFound(f"model '{model_name}' not found")
            if self.inference.model(model_name).is_reranker:
                return GgufReranker(model_name)
            raise BadRequest(f"model '{model_name}' is not a reranker: Corral reranks with cross-encoders "
                             "exported to ONNX (corral onnx export NAME DIR --task rerank) and GGUF rerankers "
                             "(pooling type rank)")
        if model.task != "rerank":
            raise BadRequest(f"model '{model_name}' is not a reranker")
        return model

    async def rerank(self, model_name: str, query: str, documents: list[str],
                     top_n: int | None = None) -> tuple[list[Reranked], int]:
        """Each document's relevance to the query by a cross-encoder (its raw logit), best first, cut to
        `top_n`; and the tokens the model read."""
        if not model_name:
            raise BadRequest("model is required")
        if not documents:
            raise BadRequest("documents must hold at least one document")
        if len(documents) > MAX_RERANK_DOCUMENTS:
            raise BadRequest(f"too many documents: at most {MAX_RERANK_DOCUMENTS}")
        if top_n is not None and top_n < 1:
            raise BadRequest("top_n must be at least 1")
        model = await in_thread(self.reranker, model_name)
        if isinstance(model, GgufReranker):  # llama.cpp's rank pooling (server/engine/ranker.py)
            scores, tokens = await self.inference.rerank(model.name, query, documents)
        else:
            stop = threading.Event()
            scores, tokens = await in_thread(model.score, query, documents, stop, stop=stop)
        ranked = sorted((Reranked(i, s) for i, s in enumerate(scores)), key=lambda r: (-r.score, r.index))
        return (ranked[:top_n] if top_n else ranked), tokens

    def grounded_chat(self, params):
        """A chat answered from `params.options["collections"]` (grounding.py); Inference.chat routes here."""
        from .grounding import grounded_chat

        return grounded_chat(self, params)


def _with_score(hit: Hit, score: float) -> Hit:
    from dataclasses import replace

    return replace(hit, score=score)



