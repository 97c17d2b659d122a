"""What every part of the store shares: the engine, the transaction helpers, the token counter.

Every public method of the store is one transaction: ``_write`` (BEGIN IMMEDIATE on SQLite, committed when
the block ends, rolled back on any exception), ``_read`` (several reads, one consistent snapshot) or
``_query`` (a single read statement, which needs no transaction around it).

On SQLite, writes from this process also queue on an asyncio lock: SQLite has one writer at a time anyway,
and waiting on the lock is fair and instant where waiting in SQLite's busy handler means polling with
sleeps. The busy timeout still covers other processes (``janus-bot db upgrade`` while the bot runs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import import_module
from typing import Any, Self

from sqlalchemy import CursorResult, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.store.database import SINGLE_STATEMENT_OPTION, WRITE_OPTION, create_engine
from janus_engine.errors import InvalidRequest

TokenCounter = Callable[[str], int]

_IN_CHUNK = 500  # ids per IN (...) list, well under every backend's bound-parameter limit


def estimate_tokens(text: str) -> int:
    """Conservative without a tokenizer: about one token per 3 UTF-8 bytes (the DeepSeek BPE on English
    text), rounded up. :mod:`bot.tokens` counts with it too until the model's tokenizer.json is on disk."""
    return (len(text.encode("utf-8")) + 2) // 3


# The owner of jobs made by a bot process that runs every shard (the usual, single-process install).
UNSHARDED_OWNER = "main"


class StoreBase:
    """The engine and transactions; the feature mixins build on it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        count_tokens: TokenCounter = estimate_tokens,
        owner: str = UNSHARDED_OWNER,
    ) -> None:
        """Wrap an engine made by :func:`bot.store.database.create_engine` (it sets SQLite up).

        ``owner`` names this bot process among those sharing the database (its shard set, see
        :func:`bot.config.DiscordSection.owner`): the jobs it creates carry it, and at start it closes
        only its own interrupted jobs."""
        self.engine = engine
        self.count_tokens = count_tokens
        self.owner = owner
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._single = engine.execution_options(**{SINGLE_STATEMENT_OPTION: True})
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        count_tokens: TokenCounter = estimate_tokens,
        upgrade: bool = True,
        owner: str = UNSHARDED_OWNER,
    ) -> Self:
        """Connect to ``url`` and (by default) upgrade its schema to the newest migration first."""
        engine = create_engine(url)
        if upgrade:
            from bot.store.migrate import upgrade_database

            try:
                await upgrade_database(engine)
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine, count_tokens=count_tokens, owner=owner)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        """One trivial query: raises if the database cannot be reached (for /healthz)."""
        async with self._query() as conn:
            await conn.execute(select(1))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """Several reads in one transaction, so they all see the same snapshot of the database."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _query(self) -> AsyncIterator[AsyncConnection]:
        """For exactly one read statement, which is atomic by itself: no BEGIN/ROLLBACK around it."""
        async with self._single.connect() as conn:
            yield conn


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the one row an INSERT just wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(key[0])


async def insert_missing(
    conn: AsyncConnection, model: Any, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> None:
    """Insert the rows whose primary key (``keys``) is not in the table yet; leave the others alone.

    SQLite and PostgreSQL both say "INSERT ... ON CONFLICT DO NOTHING": one statement, and safe against
    another writer inserting the same key meanwhile (on PostgreSQL the second waits for the first's commit
    and then does nothing). Other backends look first, under the caller's transaction."""
    if not rows:
        return
    if conn.dialect.name in ("sqlite", "postgresql"):
        dialect_insert = import_module(f"sqlalchemy.dialects.{conn.dialect.name}").insert
        await conn.execute(dialect_insert(model).on_conflict_do_nothing(index_elements=list(keys)), rows)
        return
    columns = [getattr(model, key) for key in keys]
    wanted = [tuple(row[key] for key in keys) for row in rows]
    present = set((await conn.execute(select(*columns).where(tuple_(*columns).in_(wanted)))).tuples())
    missing = [row for row, key in zip(rows, wanted, strict=True) if key not in present]
    if missing:
        await conn.execute(insert(model), missing)


def chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def json_dict(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A plain JSON-safe copy, or a clear error now instead of a failed commit later."""
    try:
        copy: dict[str, Any] = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"The {what} must be JSON data (strings, numbers, lists, dicts): {exc}"
        ) from None
    return copy
