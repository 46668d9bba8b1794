"""Collections in PostgreSQL (when CORRAL_DATABASE_URL is set): pgvector for vectors, with an HNSW index
per collection (a partial index on the collection's rows, the column cast to its dimensions), and
full-text search (a generated `tsvector`, GIN index, `ts_rank_cd`). The backend several Corral replicas
share. Same interface and transactions as the SQLite store: one transaction per write.

A pool of connections (psycopg 3, psycopg_pool) used from the caller's worker thread; each connection
is checked as it is taken, so a restarted server costs no failed request.
"""

from __future__ import annotations

import json
import struct
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from server.errors import NotFound

from .chunking import Chunk
from .errors import require
from .records import CollectionExists, CollectionInfo, DocumentInfo, Hit, as_vector, query_words

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS corral_collections (
    id BIGSERIAL PRIMARY KEY, name TEXT UNIQUE NOT NULL, embedding_model TEXT NOT NULL,
    dimensions INTEGER NOT NULL, chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}', created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS corral_documents (
    collection_id BIGINT NOT NULL REFERENCES corral_collections(id) ON DELETE CASCADE, id TEXT NOT NULL,
    name TEXT NOT NULL, format TEXT NOT NULL, digest TEXT NOT NULL, metadata JSONB NOT NULL,
    characters INTEGER NOT NULL, chunks INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (collection_id, id));
CREATE TABLE IF NOT EXISTS corral_chunks (
    id BIGSERIAL PRIMARY KEY,
    collection_id BIGINT NOT NULL REFERENCES corral_collections(id) ON DELETE CASCADE,
    document_id TEXT NOT NULL, seq INTEGER NOT NULL, text TEXT NOT NULL, start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL, page INTEGER, heading TEXT, metadata JSONB NOT NULL, embedding vector NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED);
CREATE INDEX IF NOT EXISTS corral_chunks_by_document ON corral_chunks (collection_id, document_id);
CREATE INDEX IF NOT EXISTS corral_chunks_tsv ON corral_chunks USING gin (tsv);
"""

_HIT = ("c.id, c.document_id, d.name, c.text, c.start_offset, c.end_offset, c.page, c.heading, c.metadata")
_JOIN = "JOIN corral_documents d ON d.collection_id = c.collection_id AND d.id = c.document_id"


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.8g}" for x in vector.tolist()) + "]"


def _binary(vector: np.ndarray) -> bytes:
    """pgvector's binary form (vector_recv): int16 dimensions, int16 unused, big-endian float4s."""
    return struct.pack(">HH", vector.shape[0], 0) + vector.astype(">f4").tobytes()


# One COPY per document: the chunks in binary (vectors in pgvector's binary form, written as raw bytes:
# binary COPY carries no types, the server reads each field with its column's own input function).
_COPY_CHUNKS = ("COPY corral_chunks (collection_id, document_id, seq, text, start_offset, end_offset, page, heading, "
                "metadata, embedding) FROM STDIN (FORMAT BINARY)")
_COPY_TYPES = ["int8", "text", "int4", "text", "int4", "int4", "int4", "text", "jsonb", "bytea"]


class PgStore:
    def __init__(self, url: str, max_connections: int = 8):
        require("psycopg", "document collections in PostgreSQL (psycopg)")
        pool = require("psycopg_pool", "document collections in PostgreSQL (psycopg_pool)")
        self.pool = pool.ConnectionPool(url, min_size=1, max_size=max_connections, kwargs={"autocommit": True},
                                        check=pool.ConnectionPool.check_connection, open=False,
                                        name="corral-collections")
        self.pool.open(wait=True, timeout=15)  # a server that cannot be reached fails here
        try:
            self._create_schema()
        except BaseException:
            self.pool.close()
            raise

    def _create_schema(self) -> None:
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(7243311)")  # replicas starting together
            db.execute(_SCHEMA)

    def _connect(self):
        return self.pool.connection()  # a context manager: the connection goes back to the pool after

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.pool.connection() as db, db.transaction():  # commits on success, rolls back on an error
            yield db

    # ---- collections --------------------------------------------------------------------------

    def create_collection(self, info: CollectionInfo) -> CollectionInfo:
        with self._write() as db:
            if db.execute("SELECT 1 FROM corral_collections WHERE name = %s", (info.name,)).fetchone():
                raise CollectionExists(f"collection '{info.name}' already exists")
            info.created_at = info.created_at or time.time()
            info.id = db.execute(
                "INSERT INTO corral_collections (name, embedding_model, dimensions, chunk_tokens, chunk_overlap, "
                "metadata, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (info.name, info.embedding_model, info.dimensions, info.chunk_tokens, info.chunk_overlap,
                 json.dumps(info.metadata), info.created_at)).fetchone()[0]
            cid, dims = int(info.id), int(info.dimensions)
            db.execute(f"CREATE INDEX corral_chunks_hnsw_{cid} ON corral_chunks USING hnsw "
                       f"((embedding::vector({dims})) vector_cosine_ops) WHERE collection_id = {cid}")
        return info

    def _collections(self, db, where: str = "", args: tuple = ()) -> list[CollectionInfo]:
        rows = db.execute(
            "SELECT c.id, c.name, c.embedding_model, c.dimensions, c.chunk_tokens, c.chunk_overlap, c.metadata, "
            "c.created_at, (SELECT count(*) FROM corral_documents d WHERE d.collection_id = c.id), "
            "(SELECT coalesce(sum(d.chunks), 0) FROM corral_documents d WHERE d.collection_id = c.id) "
            f"FROM corral_collections c {where} ORDER BY c.name", args).fetchall()
        return [CollectionInfo(id=r[0], name=r[1], embedding_model=r[2], dimensions=r[3], chunk_tokens=r[4],
                               chunk_overlap=r[5], metadata=r[6], created_at=r[7], documents=int(r[8]),
                               chunks=int(r[9])) for r in rows]

    def get_collection(self, name: str) -> CollectionInfo | None:
        with self._connect() as db:
            found = self._collections(db, "WHERE c.name = %s", (name,))
        return found[0] if found else None

    def list_collections(self) -> list[CollectionInfo]:
        with self._connect() as db:
            return self._collections(db)

    def delete_collection(self, name: str) -> bool:
        with self._write() as db:
            row = db.execute("DELETE FROM corral_collections WHERE name = %s RETURNING id", (name,)).fetchone()
            if row is not None:
                db.execute(f"DROP INDEX IF EXISTS corral_chunks_hnsw_{int(row[0])}")
        return row is not None

    # ---- documents ----------------------------------------------------------------------------

    def put_document(self, collection: CollectionInfo, doc: DocumentInfo, chunks: list[Chunk],
                     vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM corral_collections WHERE id = %s FOR SHARE", (collection.id,)).fetchone():
                raise NotFound(f"collection '{collection.name}' not found (deleted during the ingest)")
            db.execute("DELETE FROM corral_chunks WHERE collection_id = %s AND document_id = %s", (collection.id, doc.id))
            db.execute("DELETE FROM corral_documents WHERE collection_id = %s AND id = %s", (collection.id, doc.id))
            doc.created_at = doc.created_at or time.time()
            db.execute("INSERT INTO corral_documents (collection_id, id, name, format, digest, metadata, characters, "
                       "chunks, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                       (collection.id, doc.id, doc.name, doc.format, doc.digest, json.dumps(doc.metadata),
                        doc.characters, len(chunks), doc.created_at))
            # an error mid-COPY (a bad vector, zip's strict) aborts the COPY and rolls the document back. Most of
            # an ingest's time is pgvector adding each row to the collection's HNSW graph, not this writing.
            with db.cursor() as cur, cur.copy(_COPY_CHUNKS) as copy:
                copy.set_types(_COPY_TYPES)
                for seq, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                    copy.write_row((collection.id, doc.id, seq, chunk.text, chunk.start, chunk.end, chunk.page,
                                    chunk.heading, {**doc.metadata, **chunk.metadata},
                                    _binary(as_vector(vector, collection.dimensions))))

    def _documents(self, db, collection: CollectionInfo, where: str, args: tuple) -> list[DocumentInfo]:
        rows = db.execute("SELECT id, name, format, digest, metadata, characters, chunks, created_at "
                          f"FROM corral_documents WHERE collection_id = %s {where}", (collection.id, *args)).fetchall()
        return [DocumentInfo(id=r[0], name=r[1], format=r[2], digest=r[3], metadata=r[4], characters=r[5],
                             chunks=r[6], created_at=r[7]) for r in rows]

    def get_document(self, collection: CollectionInfo, document_id: str) -> DocumentInfo | None:
        with self._connect() as db:
            found = self._documents(db, collection, "AND id = %s", (document_id,))
        return found[0] if found else None

    def list_documents(self, collection: CollectionInfo, offset: int = 0, limit: int = 1000) -> list[DocumentInfo]:
        with self._connect() as db:
            return self._documents(db, collection, "ORDER BY created_at, id LIMIT %s OFFSET %s", (limit, offset))

    def delete_document(self, collection: CollectionInfo, document_id: str) -> bool:
        with self._write() as db:
            db.execute("DELETE FROM corral_chunks WHERE collection_id = %s AND document_id = %s",
                       (collection.id, document_id))
            cur = db.execute("DELETE FROM corral_documents WHERE collection_id = %s AND id = %s",
                             (collection.id, document_id))
            return cur.rowcount > 0

    def chunk_texts(self, collection: CollectionInfo, document_id: str) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT text FROM corral_chunks WHERE collection_id = %s AND "
                                             "document_id = %s ORDER BY seq", (collection.id, document_id))]

    # ---- search -------------------------------------------------------------------------------

    @staticmethod
    def _filter_sql(filters: dict[str, list]) -> tuple[str, list]:
        sql, args = [], []
        for key, values in filters.items():
            if key == "document_id":
                sql.append("c.document_id = ANY(%s)")
                args.append([str(v) for v in values])
            else:
                sql.append("(" + " OR ".join(["c.metadata @> %s::jsonb"] * len(values)) + ")")
                args += [json.dumps({key: v}) for v in values]
        return "".join(f" AND {s}" for s in sql), args

    @staticmethod
    def _hits(rows) -> list[Hit]:
        return [Hit(chunk_id=r[0], document_id=r[1], document_name=r[2], text=r[3], start=r[4], end=r[5], page=r[6],
                    heading=r[7], metadata=r[8], score=float(r[9])) for r in rows]

    def vector_search(self, collection: CollectionInfo, vector: np.ndarray, k: int,
                      filters: dict[str, list]) -> list[Hit]:
        cid, dims = int(collection.id), int(collection.dimensions)
        literal = _literal(as_vector(vector, dims))
        where, args = self._filter_sql(filters)
        with self._write() as db:
            db.execute(f"SET LOCAL hnsw.ef_search = {max(100, min(1000, 4 * k))}")  # pgvector's default 40 misses
            rows = db.execute(f"SELECT {_HIT}, 1 - ((c.embedding::vector({dims})) <=> %s::vector({dims})) AS s "
                              f"FROM corral_chunks c {_JOIN} WHERE c.collection_id = {cid}{where} "
                              f"ORDER BY (c.embedding::vector({dims})) <=> %s::vector({dims}) LIMIT %s",
                              (literal, *args, literal, k)).fetchall()
        return self._hits(rows)

    def keyword_search(self, collection: CollectionInfo, query: str, k: int, filters: dict[str, list]) -> list[Hit]:
        words = query_words(query)
        if not words:
            return []
        where, args = self._filter_sql(filters)
        with self._connect() as db:
            rows = db.execute(f"SELECT {_HIT}, ts_rank_cd(c.tsv, q) AS s FROM corral_chunks c {_JOIN}, "
                              "to_tsquery('simple', %s) q WHERE c.collection_id = %s AND c.tsv @@ q"
                              f"{where} ORDER BY s DESC, c.id LIMIT %s",
                              (" | ".join(words), collection.id, *args, k)).fetchall()
        return self._hits(rows)

    def close(self) -> None:
        self.pool.close()
