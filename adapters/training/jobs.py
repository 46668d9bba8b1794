"""Training jobs and their progress lines, in a real database.

SQLite at `<data_dir>/training.db` by default; PostgreSQL when CORRAL_DATABASE_URL is set (the same
database agents use). Two tables of TEXT columns (JSON as text, timestamps as UTC ISO 8601 strings,
which sort as they compare), so the same statements serve both:

- `training_jobs`: one row per job: its output model name, task, status (queued, running, succeeded,
  failed, cancelled), the spec it runs with, its latest progress line, its result or error;
- `training_events`: every progress line a job reported, numbered from 1, so a client following a job
  later (GET /api/train/<id>) reads the whole history before the live lines.

The runner's thread writes here and request handlers read (through `asyncio.to_thread`), so the access
is synchronous: one connection per store, one lock, and every write one transaction.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import require

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS training_jobs (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        spec TEXT NOT NULL,
        progress TEXT NOT NULL,
        result TEXT,
        error TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS training_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS training_jobs_created ON training_jobs (created_at)",
]
COLUMNS = ("id", "model", "task", "status", "created_at", "updated_at", "spec", "progress", "result", "error")
_JSON = {"spec", "progress", "result"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def new_id() -> str:
    return "train-" + uuid.uuid4().hex[:16]


@dataclass
class Job:
    id: str
    model: str  # the output model's name
    task: str
    status: str
    created_at: str
    updated_at: str
    spec: dict[str, Any]  # TrainSpec.to_dict(), defaults filled in, plus the resolved base ("resolved")
    progress: dict[str, Any] = field(default_factory=dict)  # the latest progress line
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    def __init__(self, conn: Any, dialect: str):
        self._conn = conn  # a sqlite3 connection (autocommit mode) or a psycopg connection (autocommit)
        self._dialect = dialect  # "sqlite" or "postgres"
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path, database_url: str = "") -> "JobStore":
        if database_url:
            psycopg = require("psycopg", "keeping training jobs in PostgreSQL (CORRAL_DATABASE_URL)")
            conn = psycopg.connect(database_url, autocommit=True)
            store = cls(conn, "postgres")
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(data_dir / "training.db"), timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            store = cls(conn, "sqlite")
        try:
            store._transaction([(sql, ()) for sql in SCHEMA])
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ---- statements ----------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._dialect == "postgres" else sql

    def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            cursor = self._conn.execute(self._sql(sql), params)
            try:
                return list(cursor.fetchall())
            finally:
                cursor.close()

    def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements atomically; the number of rows each changed."""
        with self._lock:
            counts = []
            if self._dialect == "postgres":
                with self._conn.transaction():
                    for sql, params in statements:
                        counts.append(self._conn.execute(self._sql(sql), params).rowcount)
                return counts
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    counts.append(self._conn.execute(sql, params).rowcount)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return counts

    @staticmethod
    def _job(row: tuple) -> Job:
        values = {k: (json.loads(v) if k in _JSON and v is not None else v) for k, v in zip(COLUMNS, row)}
        return Job(**values)

    # ---- jobs ------------------------------------------------------------------------------

    def create(self, job_id: str, model: str, task: str, spec: dict[str, Any], first_line: dict[str, Any]) -> Job:
        """A new queued job with its first progress line, in one transaction."""
        stamp = now()
        self._transaction([
            (f"INSERT INTO training_jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
             (job_id, model, task, QUEUED, stamp, stamp, json.dumps(spec), json.dumps(first_line), None, None)),
            ("INSERT INTO training_events (job_id, seq, line) VALUES (?, 1, ?)", (job_id, json.dumps(first_line))),
        ])
        return Job(job_id, model, task, QUEUED, stamp, stamp, spec, first_line)

    def get(self, job_id: str) -> Job | None:
        rows = self._fetch(f"SELECT {', '.join(COLUMNS)} FROM training_jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def list(self, statuses: tuple[str, ...] = ()) -> list[Job]:
        """Newest first."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM training_jobs"
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
        return [self._job(r) for r in self._fetch(sql + " ORDER BY created_at DESC, id", tuple(statuses))]

    def claim(self, job_id: str) -> bool:
        """queued → running; False when the job is no longer queued (cancelled meanwhile)."""
        (count,) = self._transaction([("UPDATE training_jobs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
                                       (RUNNING, now(), job_id, QUEUED))])
        return count == 1

    def requeue(self, job_id: str, line: dict[str, Any]) -> None:
        """running → queued with a line saying why: the server stopped in the middle of the job (it
        resumes from its last checkpoint)."""
        self._transaction([
            ("UPDATE training_jobs SET status = ?, updated_at = ?, progress = ? WHERE id = ? AND status = ?",
             (QUEUED, now(), json.dumps(line), job_id, RUNNING)),
            _append_statement(job_id, line),
        ])

    def cancel_queued(self, job_id: str, line: dict[str, Any]) -> bool:
        """queued → cancelled with its last line, atomically; False when the job is not queued."""
        (count,) = self._transaction([
            ("UPDATE training_jobs SET status = ?, updated_at = ?, progress = ? WHERE id = ? AND status = ?",
             (CANCELLED, now(), json.dumps(line), job_id, QUEUED)),
        ])
        if count == 1:  # the line only after the status changed: a job claimed meanwhile reports its own end
            self.append(job_id, line, progress=False)
        return count == 1

    def finish(self, job_id: str, status: str, line: dict[str, Any], *, result: dict | None = None,
               error: str | None = None) -> None:
        """The job's final status, result or error and its last progress line, in one transaction."""
        stamp = now()
        self._transaction([
            ("UPDATE training_jobs SET status = ?, updated_at = ?, progress = ?, result = ?, error = ? WHERE id = ?",
             (status, stamp, json.dumps(line), None if result is None else json.dumps(result), error, job_id)),
            _append_statement(job_id, line),
        ])

    def remove(self, job_id: str) -> bool:
        """A finished job's record and its lines."""
        counts = self._transaction([
            ("DELETE FROM training_events WHERE job_id = ?", (job_id,)),
            (f"DELETE FROM training_jobs WHERE id = ? AND status IN ({', '.join('?' * len(FINISHED))})",
             (job_id, *FINISHED)),
        ])
        return counts[1] == 1

    # ---- progress lines --------------------------------------------------------------------

    def append(self, job_id: str, line: dict[str, Any], *, progress: bool = True) -> None:
        """Add a progress line (and make it the job's latest, unless `progress` is False)."""
        statements = [_append_statement(job_id, line)]
        if progress:
            statements.append(("UPDATE training_jobs SET progress = ?, updated_at = ? WHERE id = ?",
                               (json.dumps(line), now(), job_id)))
        self._transaction(statements)

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        rows = self._fetch("SELECT seq, line FROM training_events WHERE job_id = ? AND seq > ? ORDER BY seq",
                           (job_id, after))
        return [(int(seq), json.loads(line)) for seq, line in rows]


def _append_statement(job_id: str, line: dict[str, Any]) -> tuple[str, tuple]:
    return ("INSERT INTO training_events (job_id, seq, line) "
            "SELECT ?, COALESCE(MAX(seq), 0) + 1, ? FROM training_events WHERE job_id = ?",
            (job_id, json.dumps(line), job_id))
