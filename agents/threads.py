"""Thread and run records for the LangGraph API, in a real database.

LangGraph keeps a thread's *state* in its checkpointer; the LangGraph API also needs what the
checkpointer does not hold: which threads exist (a thread may have no checkpoint yet), their metadata
and status, a snapshot of their values for search, and the runs made on them. Those live here, in
the same database the checkpointer uses (SQLite at `<data_dir>/agents.db`, or PostgreSQL when
`CORRAL_DATABASE_URL` is set), in tables of their own (`agent_threads`, `agent_runs`).

Both dialects share one schema of TEXT columns (JSON as text, timestamps as UTC ISO 8601 strings,
which sort as they compare) so the same statements serve both; JSON filters (metadata and values
containment) are applied in Python. Every write is one transaction, and one lock serialises this
store's statements so that two requests never interleave inside a transaction on the one connection.
The store assumes it is the only server writing these tables: at open, runs left `pending` or
`running` by a server that died are marked `error` and their threads set back to `idle`.

Also here: the JSON LangGraph's server writes for what graph states hold (LangChain messages as their
`model_dump()`, interrupts as `{value, id}`), and its ThreadState shape for a StateSnapshot, which the
snapshots stored here and the state endpoints share.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS agent_threads (
        thread_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata TEXT NOT NULL,
        status TEXT NOT NULL,
        state_values TEXT,
        interrupts TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS agent_runs (
        run_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        assistant_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        metadata TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        multitask_strategy TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS agent_runs_thread ON agent_runs (thread_id, created_at)",
]

THREAD_COLUMNS = ("thread_id", "created_at", "updated_at", "metadata", "status", "state_values", "interrupts")
RUN_COLUMNS = ("run_id", "thread_id", "assistant_id", "status", "created_at", "updated_at", "metadata", "kwargs",
               "multitask_strategy")
_JSON_THREAD = {"metadata", "state_values", "interrupts"}
_JSON_RUN = {"metadata", "kwargs"}
THREAD_SORTS = {"thread_id", "status", "created_at", "updated_at", "state_updated_at"}


def now() -> str:
    """A timestamp as the LangGraph API writes them: ISO 8601 with microseconds and +00:00."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def contains(superset: Any, subset: Any) -> bool:
    """JSONB containment (`@>`), the rule LangGraph's metadata and values filters use."""
    if isinstance(subset, dict):
        return isinstance(superset, dict) and all(k in superset and contains(superset[k], v) for k, v in subset.items())
    if isinstance(subset, list):
        return isinstance(superset, list) and all(any(contains(s, v) for s in superset) for v in subset)
    return superset == subset


# -- JSON: what LangGraph's server writes for the objects graphs hold, and its ThreadState shape --

def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump") and callable(obj.model_dump):  # pydantic v2: LangChain messages
        return obj.model_dump()
    if hasattr(obj, "dict") and callable(obj.dict):  # pydantic v1
        return obj.dict()
    if type(obj).__name__ == "Send" and hasattr(obj, "node"):
        return {"node": obj.node, "arg": obj.arg}
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_default)


def dumps(obj: Any) -> bytes:
    return _encoder.encode(obj)


def jsonable(obj: Any) -> Any:
    """Plain JSON values (dicts, lists, strings, numbers) for anything a graph's state holds."""
    return msgspec.json.decode(_encoder.encode(obj))


def checkpoint_of(config: dict | None) -> dict | None:
    """A RunnableConfig → the API's Checkpoint (thread_id, checkpoint_ns, checkpoint_id, checkpoint_map)."""
    if not config or "configurable" not in config:
        return None
    c = config["configurable"]
    return {"thread_id": c.get("thread_id"), "checkpoint_ns": c.get("checkpoint_ns", ""),
            "checkpoint_id": c.get("checkpoint_id"), "checkpoint_map": c.get("checkpoint_map")}


def interrupt_of(i: Any) -> dict:
    out = {"value": getattr(i, "value", None), "id": getattr(i, "id", None)}
    if getattr(i, "response_schema", None) is not None:
        out["response_schema"] = i.response_schema
    return jsonable(out)


def state_of(snapshot: Any) -> dict:
    """A StateSnapshot → the API's ThreadState."""
    tasks = []
    for t in snapshot.tasks:
        sub = t.state
        tasks.append({
            "id": t.id, "name": t.name, "error": str(t.error) if t.error else None,
            "interrupts": [interrupt_of(i) for i in t.interrupts],
            "checkpoint": checkpoint_of(sub) if isinstance(sub, dict) else None,
            "state": state_of(sub) if sub is not None and not isinstance(sub, dict) else None,
            "result": jsonable(t.result) if getattr(t, "result", None) is not None else None,
        })
    metadata = jsonable(snapshot.metadata or {})
    if metadata.get("checkpoint_ns") == "":
        metadata.pop("checkpoint_ns")
    return {"values": jsonable(snapshot.values), "next": list(snapshot.next), "tasks": tasks,
            "checkpoint": checkpoint_of(snapshot.config), "metadata": metadata, "created_at": snapshot.created_at,
            "parent_checkpoint": checkpoint_of(snapshot.parent_config),
            "interrupts": [interrupt_of(i) for i in snapshot.interrupts]}


class ThreadStore:
    """Thread and run records (plain dicts with the LangGraph API's field names, `values` included)."""

    def __init__(self, db: Any, dialect: str):
        self._db = db  # an aiosqlite connection, or a psycopg pool (which replaces broken connections)
        self._dialect = dialect  # "sqlite" or "postgres"
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, data_dir: Path, database_url: str = "") -> "ThreadStore":
        """SQLite at `<data_dir>/agents.db`, or PostgreSQL at `database_url` when one is given."""
        if database_url:
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True, "prepare_threshold": None})
            await pool.open(wait=True, timeout=30)
            store = cls(pool, "postgres")
        else:
            import aiosqlite

            data_dir.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(data_dir / "agents.db", isolation_level=None)  # explicit BEGIN/COMMIT
            await conn.execute("PRAGMA journal_mode=WAL")  # the checkpointer's connection reads beside ours
            await conn.execute("PRAGMA busy_timeout=10000")
            store = cls(conn, "sqlite")
        try:
            await store._transaction([(sql, ()) for sql in SCHEMA])
            await store._recover()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    # -- statements ---------------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        async with self._lock:
            if self._dialect == "postgres":
                async with self._db.connection() as conn:
                    cursor = await conn.execute(sql.replace("?", "%s"), params)
                    return list(await cursor.fetchall())
            cursor = await self._db.execute(sql, params)
            rows = await cursor.fetchall()
            await cursor.close()
            return list(rows)

    async def _transaction(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """Run statements atomically; the number of rows each changed."""
        async with self._lock:
            counts = []
            if self._dialect == "postgres":
                async with self._db.connection() as conn, conn.transaction():
                    for sql, params in statements:
                        cursor = await conn.execute(sql.replace("?", "%s"), params)
                        counts.append(cursor.rowcount)
                return counts
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    cursor = await self._db.execute(sql, params)
                    counts.append(cursor.rowcount)
                    await cursor.close()
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            return counts

    async def _recover(self) -> None:
        stamp = now()
        await self._transaction([
            ("UPDATE agent_runs SET status = 'error', updated_at = ? WHERE status IN ('pending', 'running')", (stamp,)),
            ("UPDATE agent_threads SET status = 'idle', updated_at = ? WHERE status = 'busy'", (stamp,)),
        ])

    # -- threads ------------------------------------------------------------------------------------

    @staticmethod
    def _thread(row: tuple) -> dict[str, Any]:
        record = {k: (json.loads(v) if k in _JSON_THREAD and v is not None else v) for k, v in zip(THREAD_COLUMNS, row)}
        record["values"] = record.pop("state_values")
        return record

    async def create_thread(self, thread_id: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
        """A new idle thread; None if one with this id exists."""
        stamp = now()
        sql = ("INSERT INTO agent_threads (thread_id, created_at, updated_at, metadata, status, state_values,"
               " interrupts) VALUES (?, ?, ?, ?, 'idle', NULL, '{}') ON CONFLICT (thread_id) DO NOTHING")
        (count,) = await self._transaction([(sql, (thread_id, stamp, stamp, json.dumps(metadata)))])
        if count == 0:
            return None
        return {"thread_id": thread_id, "created_at": stamp, "updated_at": stamp, "metadata": metadata,
                "status": "idle", "values": None, "interrupts": {}}

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        rows = await self._fetch(f"SELECT {', '.join(THREAD_COLUMNS)} FROM agent_threads WHERE thread_id = ?",
                                 (thread_id,))
        return self._thread(rows[0]) if rows else None

    async def update_thread(self, thread_id: str, *, status: str | None = None, metadata: dict | None = None,
                            values: Any = ..., interrupts: dict | None = None) -> None:
        """Set the given fields (`metadata` is merged into the stored one by the caller)."""
        sets, params = ["updated_at = ?"], [now()]
        for column, value in (("status", status), ("metadata", metadata), ("interrupts", interrupts)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value if column == "status" else json.dumps(value))
        if values is not ...:
            sets.append("state_values = ?")
            params.append(None if values is None else json.dumps(values))
        await self._transaction([(f"UPDATE agent_threads SET {', '.join(sets)} WHERE thread_id = ?",
                                  (*params, thread_id))])

    async def delete_thread(self, thread_id: str) -> bool:
        """The thread and its runs, in one transaction."""
        counts = await self._transaction([("DELETE FROM agent_runs WHERE thread_id = ?", (thread_id,)),
                                          ("DELETE FROM agent_threads WHERE thread_id = ?", (thread_id,))])
        return counts[1] > 0

    async def search_threads(self, *, metadata: dict | None = None, values: dict | None = None,
                             ids: list[str] | None = None, status: str | None = None, sort_by: str = "created_at",
                             sort_order: str = "desc", limit: int | None = None, offset: int = 0) -> list[dict]:
        where, params = [], []
        if ids is not None:
            if not ids:
                return []
            where.append(f"thread_id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        if status:
            where.append("status = ?")
            params.append(status)
        column = "updated_at" if sort_by == "state_updated_at" else sort_by
        sql = (f"SELECT {', '.join(THREAD_COLUMNS)} FROM agent_threads"
               f"{' WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY {column} {'ASC' if sort_order == 'asc' else 'DESC'}, thread_id")
        filtered = bool(metadata or values)
        if not filtered and limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        threads = [self._thread(row) for row in await self._fetch(sql, tuple(params))]
        if not filtered:
            return threads
        threads = [t for t in threads if contains(t["metadata"], metadata or {})
                   and (not values or contains(t["values"], values))]
        return threads[offset:offset + limit] if limit is not None else threads[offset:]

    # -- runs ---------------------------------------------------------------------------------------

    @staticmethod
    def _run(row: tuple) -> dict[str, Any]:
        return {k: (json.loads(v) if k in _JSON_RUN else v) for k, v in zip(RUN_COLUMNS, row)}

    async def put_run(self, run: dict[str, Any], thread_status: str, thread_metadata: dict) -> None:
        """Insert a run and mark its thread (status, metadata) in one transaction."""
        row = tuple(json.dumps(run[k]) if k in _JSON_RUN else run[k] for k in RUN_COLUMNS)
        await self._transaction([
            (f"INSERT INTO agent_runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})", row),
            ("UPDATE agent_threads SET status = ?, metadata = ?, updated_at = ? WHERE thread_id = ?",
             (thread_status, json.dumps(thread_metadata), run["created_at"], run["thread_id"])),
        ])

    async def finish_run(self, run_id: str, status: str, thread_id: str, thread_fields: dict[str, Any]) -> None:
        """A run's final status and its thread's new status and values snapshot, in one transaction."""
        stamp = now()
        statements = [("UPDATE agent_runs SET status = ?, updated_at = ? WHERE run_id = ?", (status, stamp, run_id))]
        if thread_fields:
            sets = ", ".join(f"{'state_values' if k == 'values' else k} = ?" for k in thread_fields)
            params = tuple(v if k == "status" else (None if v is None else json.dumps(v))
                           for k, v in thread_fields.items())
            statements.append((f"UPDATE agent_threads SET {sets}, updated_at = ? WHERE thread_id = ?",
                               (*params, stamp, thread_id)))
        await self._transaction(statements)

    async def set_run_status(self, run_id: str, status: str) -> None:
        await self._transaction([("UPDATE agent_runs SET status = ?, updated_at = ? WHERE run_id = ?",
                                  (status, now(), run_id))])

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = await self._fetch(f"SELECT {', '.join(RUN_COLUMNS)} FROM agent_runs WHERE run_id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    async def list_runs(self, thread_id: str, *, limit: int = 10, offset: int = 0,
                        status: str | None = None) -> list[dict]:
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM agent_runs WHERE thread_id = ?"
        params: tuple = (thread_id,)
        if status:
            sql += " AND status = ?"
            params += (status,)
        sql += f" ORDER BY created_at DESC, run_id DESC LIMIT {int(limit)} OFFSET {int(offset)}"
        return [self._run(row) for row in await self._fetch(sql, params)]

    async def delete_run(self, run_id: str) -> bool:
        (count,) = await self._transaction([("DELETE FROM agent_runs WHERE run_id = ?", (run_id,))])
        return count > 0
