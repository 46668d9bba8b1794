"""Where agent threads live: LangGraph checkpointers opened for the service's lifetime.

SQLite at `<data_dir>/agents.db` by default (AsyncSqliteSaver: WAL journal, and each checkpoint and each
node's writes committed as they are saved, so a killed server loses no completed step); PostgreSQL
(AsyncPostgresSaver over a connection pool, tables made by `setup()`) when CORRAL_DATABASE_URL is set.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from .errors import AgentsUnavailable

log = logging.getLogger("corral.agents")


async def open_checkpointer(data_dir: Path, database_url: str, stack: contextlib.AsyncExitStack) -> Any:
    """The checkpointer, its connections closed when `stack` closes."""
    if database_url:
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:
            raise AgentsUnavailable(f"CORRAL_DATABASE_URL needs PostgreSQL's checkpointer ({exc.name} is "
                                    "missing): pip install 'corral[agents]'") from exc

        pool = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False,
                                   kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
        await pool.open(wait=True, timeout=30)
        stack.push_async_callback(pool.close)
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        log.info("agent threads in PostgreSQL")
        return saver
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "agents.db"
    # another connection to this file (the LangGraph API's thread records, a second server, a closing
    # one's last transaction) may hold its write lock for a moment: wait for it rather than fail at 5 s
    conn = await aiosqlite.connect(str(path), timeout=30)
    stack.push_async_callback(conn.close)
    await conn.execute("PRAGMA journal_mode=WAL")
    saver = AsyncSqliteSaver(conn)
    await saver.setup()
    log.info("agent threads in %s", path)
    return saver
