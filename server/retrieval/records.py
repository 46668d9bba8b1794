"""What the collection stores keep and return, shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from server.errors import BadRequest

from .chunking import Chunk

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_QUERY_WORD = re.compile(r"\w+", re.UNICODE)
MAX_FILTER_VALUES = 100


class CollectionExists(BadRequest):
    pass


@dataclass
class CollectionInfo:
    name: str
    embedding_model: str
    dimensions: int
    chunk_tokens: int
    chunk_overlap: int
    metadata: dict = field(default_factory=dict)
    created_at: float = 0.0
    documents: int = 0
    chunks: int = 0
    id: int = 0  # the backend's key


@dataclass
class DocumentInfo:
    id: str
    name: str
    format: str
    digest: str  # sha256 of the document's bytes: re-adding unchanged bytes is a no-op
    metadata: dict = field(default_factory=dict)
    characters: int = 0
    chunks: int = 0
    created_at: float = 0.0


@dataclass
class Hit:
    chunk_id: int
    document_id: str
    document_name: str
    text: str
    start: int
    end: int
    page: int | None
    heading: str | None
    metadata: dict
    score: float  # the ranking's own score (cosine similarity, bm25, RRF or the reranker's)


class CollectionStore(Protocol):
    """One interface, two backends (sqlite_store.SqliteStore, pg_store.PgStore). Synchronous: the
    service calls it in worker threads. Every write is one transaction."""

    def create_collection(self, info: CollectionInfo) -> CollectionInfo: ...
    def get_collection(self, name: str) -> CollectionInfo | None: ...
    def list_collections(self) -> list[CollectionInfo]: ...
    def delete_collection(self, name: str) -> bool: ...
    def put_document(self, collection: CollectionInfo, doc: DocumentInfo, chunks: list[Chunk],
                     vectors: np.ndarray) -> None: ...
    def get_document(self, collection: CollectionInfo, document_id: str) -> DocumentInfo | None: ...
    def list_documents(self, collection: CollectionInfo, offset: int, limit: int) -> list[DocumentInfo]: ...
    def delete_document(self, collection: CollectionInfo, document_id: str) -> bool: ...
    def vector_search(self, collection: CollectionInfo, vector: np.ndarray, k: int,
                      filters: dict[str, Any]) -> list[Hit]: ...
    def keyword_search(self, collection: CollectionInfo, query: str, k: int, filters: dict[str, Any]) -> list[Hit]: ...
    def close(self) -> None: ...


def check_filters(filters: dict[str, Any] | None) -> dict[str, list]:
    """Metadata filters: {key: value} (equal) or {key: [values]} (equal to any); values are strings,
    numbers or booleans. `document_id` filters on the document. BadRequest naming what is wrong."""
    out: dict[str, list] = {}
    for key, value in (filters or {}).items():
        if not isinstance(key, str) or not _FILTER_KEY.match(key):
            raise BadRequest(f"invalid filter key {key!r}: letters, digits, '_', '.', '-' (at most 64)")
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise BadRequest(f"filter {key!r}: give 1 to {MAX_FILTER_VALUES} values")
        for v in values:
            if not isinstance(v, (str, int, float, bool)):
                raise BadRequest(f"filter {key!r}: values are strings, numbers or booleans")
        out[key] = values
    return out


def query_words(query: str) -> list[str]:
    """The words of a keyword query (punctuation and query syntax dropped), lower-cased, at most 64."""
    seen: dict[str, None] = {}
    for w in _QUERY_WORD.findall(query.lower()):
        seen.setdefault(w, None)
    return list(seen)[:64]


def as_vector(vector: np.ndarray | list[float], dimensions: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dimensions:
        raise BadRequest(f"the vector has {v.shape[0]} dimensions, the collection {dimensions}")
    return v
