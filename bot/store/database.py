"""Async engine creation with the connection settings the store relies on.

SQLite needs four things set on every connection to be a safe multi-writer store:
- WAL journal: readers never block the writer, and a commit is one append to the log;
- a busy timeout: another process (``janus-bot db upgrade``, a second bot) waits instead of failing;
- foreign keys ON (off by default in SQLite): cascades delete a conversation's turns and images' links;
- ``BEGIN IMMEDIATE`` for transactions that write: a deferred transaction that reads first and then
  writes can fail at once with "database is locked" (no busy wait is possible for it), because another
  writer committed after its snapshot. Taking the write lock up front makes writers queue instead.
PostgreSQL needs none of this; the hooks are only installed for SQLite URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "janus_write"  # execution option: this connection's transaction will write
SINGLE_STATEMENT_OPTION = "janus_single_statement"  # execution option: one read, no BEGIN needed


def ensure_sqlite_parent_dir(url: str) -> None:
    """Create the folder of a SQLite file so a fresh install starts without a manual mkdir."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``)."""
    ensure_sqlite_parent_dir(url)
    if make_url(url).get_backend_name() == "sqlite":
        # Every store call ends its transaction itself (commit or rollback through SQLAlchemy), so the
        # pool's extra rollback on return is one more round trip to aiosqlite's thread for nothing.
        kwargs.setdefault("pool_reset_on_return", None)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        install_sqlite_pragmas(engine)
    return engine


def install_sqlite_pragmas(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL loses no committed transaction when the process dies (kill -9); only a
            # power cut can cost the last commits, and the database stays consistent either way.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get(SINGLE_STATEMENT_OPTION):
            connection.exec_driver_sql("BEGIN")  # several reads that must see one snapshot
        # else: a single statement is atomic on its own; skipping BEGIN saves a round trip per read.
