"""Collections in SQLite (the embedded default): `retrieval.db` in Corral's data directory, sqlite-vec for
vectors (one `vec0` table per collection, cosine distance) and FTS5 for keywords (bm25).

Short-lived connections, one per operation, in the caller's worker thread; WAL so readers never wait for
a writer; each write one `BEGIN IMMEDIATE` transaction, so a failed or killed ingest leaves the collection
as it was. Python's own sqlite3 often cannot load extensions: then `pysqlite3` (the same module built
with a current SQLite that can) is used.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from server.errors import NotFound

from .chunking import Chunk
from .errors import RetrievalUnavailable
from .records import CollectionExists, CollectionInfo, DocumentInfo, Hit, as_vector, query_words

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, embedding_model TEXT NOT NULL,
    dimensions INTEGER NOT NULL, chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE, id TEXT NOT NULL,
    name TEXT NOT NULL, format TEXT NOT NULL, digest TEXT NOT NULL, metadata TEXT NOT NULL,
    characters INTEGER NOT NULL, chunks INTEGER NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (collection_id, id));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, collection_id INTEGER NOT NULL, document_id TEXT NOT NULL, seq INTEGER NOT NULL,
    text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL, page INTEGER, heading TEXT,
    metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (collection_id, document_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
"""

_HIT_COLUMNS = 'c.id, c.document_id, d.name, c.text, c.start, c."end", c.page, c.heading, c.metadata'


def _sqlite():
    """A sqlite3 module that can load extensions, with sqlite-vec."""
    try:
        import sqlite_vec
    except ImportError:
        raise RetrievalUnavailable("document collections (sqlite-vec)") from None
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3, sqlite_vec
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        raise RetrievalUnavailable("document collections (this Python's sqlite3 cannot load extensions; "
                                   "pysqlite3-binary can)") from None
    return dbapi2, sqlite_vec


class SqliteStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.sqlite, self.vec = _sqlite()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        db = self.sqlite.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.enable_load_extension(True)
            self.vec.load(db)
            db.enable_load_extension(False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One transaction: committed whole, or rolled back on any error (a killed process leaves the
        journal, which SQLite rolls back on the next open)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- collections --------------------------------------------------------------------------

    def create_collection(self, info: CollectionInfo) -> CollectionInfo:
        with self._write() as db:
            if db.execute("SELECT 1 FROM collections WHERE name = ?", (info.name,)).fetchone():
                raise CollectionExists(f"collection '{info.name}' already exists")
            info.created_at = info.created_at or time.time()
            cur = db.execute("INSERT INTO collections (name, embedding_model, dimensions, chunk_tokens, chunk_overlap,"
                             " metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (info.name, info.embedding_model, info.dimensions, info.chunk_tokens, info.chunk_overlap,
                              json.dumps(info.metadata), info.created_at))
            info.id = cur.lastrowid
            db.execute(f"CREATE VIRTUAL TABLE vec_{info.id} USING vec0(embedding float[{info.dimensions}] "
                       "distance_metric=cosine)")
        return info

    def _collections(self, db, where: str = "", args: tuple = ()) -> list[CollectionInfo]:
        rows = db.execute(
            "SELECT c.id, c.name, c.embedding_model, c.dimensions, c.chunk_tokens, c.chunk_overlap, c.metadata, "
            "c.created_at, (SELECT count(*) FROM documents d WHERE d.collection_id = c.id), "
            "(SELECT coalesce(sum(d.chunks), 0) FROM documents d WHERE d.collection_id = c.id) "
            f"FROM collections c {where} ORDER BY c.name", args).fetchall()
        return [CollectionInfo(id=r[0], name=r[1], embedding_model=r[2], dimensions=r[3], chunk_tokens=r[4],
                               chunk_overlap=r[5], metadata=json.loads(r[6]), created_at=r[7], documents=r[8],
                               chunks=r[9]) for r in rows]

    def get_collection(self, name: str) -> CollectionInfo | None:
        with self._connect() as db:
            found = self._collections(db, "WHERE c.name = ?", (name,))
        return found[0] if found else None

    def list_collections(self) -> list[CollectionInfo]:
        with self._connect() as db:
            return self._collections(db)

    def delete_collection(self, name: str) -> bool:
        with self._write() as db:
            row = db.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM chunks WHERE collection_id = ?", (row[0],))
            db.execute("DELETE FROM documents WHERE collection_id = ?", (row[0],))
            db.execute("DELETE FROM collections WHERE id = ?", (row[0],))
            db.execute(f"DROP TABLE IF EXISTS vec_{int(row[0])}")
        return True

    # ---- documents ----------------------------------------------------------------------------

    def _remove_chunks(self, db, collection: CollectionInfo, document_id: str) -> None:
        ids = [r[0] for r in db.execute("SELECT id FROM chunks WHERE collection_id = ? AND document_id = ?",
                                        (collection.id, document_id))]
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            db.execute(f"DELETE FROM vec_{collection.id} WHERE rowid IN ({marks})", part)
            db.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)

    def put_document(self, collection: CollectionInfo, doc: DocumentInfo, chunks: list[Chunk],
                     vectors: np.ndarray) -> None:
        """Add or replace a document and its chunks, in one transaction."""
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM collections WHERE id = ?", (collection.id,)).fetchone():
                raise NotFound(f"collection '{collection.name}' not found (deleted during the ingest)")
            self._remove_chunks(db, collection, doc.id)
            db.execute("DELETE FROM documents WHERE collection_id = ? AND id = ?", (collection.id, doc.id))
            doc.created_at = doc.created_at or time.time()
            db.execute("INSERT INTO documents (collection_id, id, name, format, digest, metadata, characters, chunks, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (collection.id, doc.id, doc.name, doc.format, doc.digest, json.dumps(doc.metadata),
                        doc.characters, len(chunks), doc.created_at))
            for seq, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                self._insert_chunk(db, collection, doc, seq, chunk, as_vector(vector, collection.dimensions))

    def _insert_chunk(self, db, collection: CollectionInfo, doc: DocumentInfo, seq: int, chunk: Chunk,
                      vector: np.ndarray) -> None:
        cur = db.execute('INSERT INTO chunks (collection_id, document_id, seq, text, start, "end", page, heading, '
                         "metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (collection.id, doc.id, seq, chunk.text, chunk.start, chunk.end, chunk.page, chunk.heading,
                          json.dumps({**doc.metadata, **chunk.metadata})))
        db.execute(f"INSERT INTO vec_{collection.id} (rowid, embedding) VALUES (?, ?)",
                   (cur.lastrowid, vector.tobytes()))

    def _documents(self, db, collection: CollectionInfo, where: str, args: tuple) -> list[DocumentInfo]:
        rows = db.execute("SELECT id, name, format, digest, metadata, characters, chunks, created_at FROM documents "
                          f"WHERE collection_id = ? {where}", (collection.id, *args)).fetchall()
        return [DocumentInfo(id=r[0], name=r[1], format=r[2], digest=r[3], metadata=json.loads(r[4]),
                             characters=r[5], chunks=r[6], created_at=r[7]) for r in rows]

    def get_document(self, collection: CollectionInfo, document_id: str) -> DocumentInfo | None:
        with self._connect() as db:
            found = self._documents(db, collection, "AND id = ?", (document_id,))
        return found[0] if found else None

    def list_documents(self, collection: CollectionInfo, offset: int = 0, limit: int = 1000) -> list[DocumentInfo]:
        with self._connect() as db:
            return self._documents(db, collection, "ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset))

    def delete_document(self, collection: CollectionInfo, document_id: str) -> bool:
        with self._write() as db:
            self._remove_chunks(db, collection, document_id)
            cur = db.execute("DELETE FROM documents WHERE collection_id = ? AND id = ?", (collection.id, document_id))
            return cur.rowcount > 0

    def chunk_texts(self, collection: CollectionInfo, document_id: str) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT text FROM chunks WHERE collection_id = ? AND document_id = ? "
                                             "ORDER BY seq", (collection.id, document_id))]

    # ---- search -------------------------------------------------------------------------------

    @staticmethod
    def _filter_sql(filters: dict[str, list]) -> tuple[str, list]:
        sql, args = [], []
        for key, values in filters.items():
            column = "c.document_id" if key == "document_id" else f"json_extract(c.metadata, '$.\"{key}\"')"
            sql.append(f"{column} IN ({','.join('?' * len(values))})")
            args += [int(v) if isinstance(v, bool) else v for v in values]
        return "".join(f" AND {s}" for s in sql), args

    def _hits(self, db, scored: list[tuple[int, float]]) -> list[Hit]:
        if not scored:
            return []
        ids = [i for i, _ in scored]
        rows = db.execute(f"SELECT {_HIT_COLUMNS} FROM chunks c JOIN documents d ON d.collection_id = c.collection_id "
                          f"AND d.id = c.document_id WHERE c.id IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: r for r in rows}
        return [Hit(chunk_id=r[0], document_id=r[1], document_name=r[2], text=r[3], start=r[4], end=r[5], page=r[6],
                    heading=r[7], metadata=json.loads(r[8]), score=score)
                for i, score in scored if (r := by_id.get(i)) is not None]

    def vector_search(self, collection: CollectionInfo, vector: np.ndarray, k: int,
                      filters: dict[str, list]) -> list[Hit]:
        """Nearest chunks by cosine similarity: sqlite-vec's KNN, or an exact scan of the chunks that
        pass the filters."""
        blob = as_vector(vector, collection.dimensions).tobytes()
        with self._connect() as db:
            if filters:
                where, args = self._filter_sql(filters)
                rows = db.execute(f"SELECT c.id, vec_distance_cosine(v.embedding, ?) AS d FROM chunks c "
                                  f"JOIN vec_{collection.id} v ON v.rowid = c.id WHERE c.collection_id = ?{where} "
                                  "ORDER BY d LIMIT ?", (blob, collection.id, *args, k)).fetchall()
            else:
                rows = db.execute(f"SELECT rowid, distance FROM vec_{collection.id} WHERE embedding MATCH ? "
                                  "AND k = ? ORDER BY distance", (blob, k)).fetchall()
            return self._hits(db, [(r[0], 1.0 - float(r[1])) for r in rows])

    def keyword_search(self, collection: CollectionInfo, query: str, k: int, filters: dict[str, list]) -> list[Hit]:
        words = query_words(query)
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        where, args = self._filter_sql(filters)
        with self._connect() as db:
            # CROSS JOIN: SQLite then runs the full-text match first (otherwise it may walk the collection's
            # chunks and match each one: a thousand times slower at 10k chunks)
            rows = db.execute("SELECT c.id, bm25(chunks_fts) AS r FROM chunks_fts CROSS JOIN chunks c "
                              "ON c.id = chunks_fts.rowid "
                              f"WHERE chunks_fts MATCH ? AND c.collection_id = ?{where} ORDER BY r LIMIT ?",
                              (match, collection.id, *args, k)).fetchall()
            return self._hits(db, [(r[0], -float(r[1])) for r in rows])

    def close(self) -> None:
        pass
