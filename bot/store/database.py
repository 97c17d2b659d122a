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

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from janus_engine.errors import InvalidRequest

BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "janus_write"  # execution option: this connection's transaction will write
SINGLE_STATEMENT_OPTION = "janus_single_statement"  # execution option: one read, no BEGIN needed


EXAMPLE_URLS = "sqlite+aiosqlite:///PATH/janus-bot.db or postgresql+asyncpg://USER:PASSWORD@HOST/DBNAME"
# The async driver to name when a URL asks for a synchronous one, and the package that provides it.
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}


def display_url(url: str) -> str:
    """The URL without its password, fit for logs and messages (the raw text if it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def check_database_url(url: str) -> URL:
    """Parse ``url`` and make sure the store can use it, or raise :class:`InvalidRequest` with one line
    that says what to write instead: not a URL, an unknown kind of database, a synchronous driver (the
    store is async: ``sqlite+aiosqlite``, ``postgresql+asyncpg``), or an async driver that is not
    installed (``pip install asyncpg``). Touches no file and opens no connection."""
    shown = display_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidRequest(f"{shown!r} is not a database URL; write {EXAMPLE_URLS}") from None
    backend = parsed.get_backend_name()
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise InvalidRequest(
            f"{shown}: unknown database kind {parsed.drivername!r}; write {EXAMPLE_URLS}"
        ) from None
    if not getattr(dialect, "is_async", False):
        driver = ASYNC_DRIVERS.get(backend)
        if driver is None:
            raise InvalidRequest(
                f"{shown}: {parsed.drivername!r} is a synchronous driver; write {EXAMPLE_URLS}"
            )
        fixed = shown.replace(parsed.drivername, f"{backend}+{driver}", 1)
        raise InvalidRequest(
            f"{shown}: {parsed.drivername!r} is a synchronous driver and the bot is async; "
            f"use the {driver} driver: {fixed}"
        )
    try:
        dialect.import_dbapi()
    except ImportError:
        package = parsed.get_driver_name()
        raise InvalidRequest(
            f"{shown}: the {package} driver is not installed; pip install {package}"
        ) from None
    return parsed


def ensure_sqlite_parent_dir(url: str) -> None:
    """Create the folder of a SQLite file so a fresh install starts without a manual mkdir."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``); a URL the store
    cannot use raises :class:`InvalidRequest` (see :func:`check_database_url`)."""
    check_database_url(url)
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
