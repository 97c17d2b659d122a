"""``janus-bot db copy-to URL``: copy a whole deployment's database into another one (SQLite -> PostgreSQL).

The source is read in one transaction (one consistent snapshot) and never written; stop the bot first so
nothing written after the snapshot is left behind. The target is migrated to the newest revision, must be
empty, and receives every row in one transaction, table by table in foreign-key order, with the same
primary keys (so buttons on old Discord messages, which carry job ids, and replies, which carry message
ids, keep working). Before the commit every table's row count is compared with the source's: a mismatch
rolls the whole copy back. PostgreSQL's id sequences are moved past the copied ids so the next insert
does not collide. Rows go through the models' types, so times stay timezone-aware UTC and JSON stays JSON.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.store.database import WRITE_OPTION, check_database_url, create_engine, display_url
from bot.store.inspect import head_revision
from bot.store.migrate import current_revision, database_url_from_args, upgrade_database
from bot.store.models import Base
from janus_engine.errors import InvalidRequest

BATCH_ROWS = 200  # rows per INSERT: images are up to a few MB each


@dataclass(frozen=True)
class CopiedTable:
    name: str
    source_rows: int
    target_rows: int


async def copy_database(source_url: str, target_url: str) -> list[CopiedTable]:
    """Copy every row of ``source_url`` into the empty database ``target_url``; the per-table counts.

    Raises :class:`InvalidRequest` (one line) when the source is not at the newest revision, the target
    already holds rows, the two URLs are the same database, or the counts differ (nothing is kept then)."""
    check_database_url(source_url)
    check_database_url(target_url)
    if display_url(source_url) == display_url(target_url):
        raise InvalidRequest("the source and the target are the same database")
    head = head_revision()
    source = create_engine(source_url)
    target = create_engine(target_url)
    try:
        revision = await current_revision(source)
        if revision != head:
            raise InvalidRequest(
                f"{display_url(source_url)} is at revision {revision or 'none (empty)'}, not {head}: "
                "run janus-bot db upgrade on it first"
            )
        await upgrade_database(target)
        return await _copy_rows(source, target)
    finally:
        await source.dispose()
        await target.dispose()


async def _copy_rows(source: AsyncEngine, target: AsyncEngine) -> list[CopiedTable]:
    tables = Base.metadata.sorted_tables  # parents before children
    copied: list[CopiedTable] = []
    async with source.connect() as reader, target.execution_options(**{WRITE_OPTION: True}).begin() as writer:
        for table in tables:
            if await _count(writer, table):
                raise InvalidRequest(
                    f"the target already holds rows in {table.name}: copy into an empty database"
                )
        for table in tables:
            stream = await reader.stream(select(table).order_by(*table.primary_key.columns))
            async for batch in stream.mappings().partitions(BATCH_ROWS):
                await writer.execute(insert(table), [dict(row) for row in batch])
            copied.append(CopiedTable(table.name, await _count(reader, table), await _count(writer, table)))
        wrong = [c for c in copied if c.source_rows != c.target_rows]
        if wrong:
            details = ", ".join(f"{c.name} {c.source_rows} -> {c.target_rows}" for c in wrong)
            raise InvalidRequest(f"row counts differ ({details}); nothing was kept")
        if writer.dialect.name == "postgresql":
            await _advance_sequences(writer, tables)
    return copied


async def _count(conn: AsyncConnection, table: Table) -> int:
    return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def _advance_sequences(conn: AsyncConnection, tables: list[Table]) -> None:
    """Explicit ids do not move a PostgreSQL sequence: set each to the largest copied id."""
    for table in tables:
        for column in table.primary_key.columns:
            sequence = await conn.scalar(
                text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": table.name, "column": column.name},
            )
            if sequence is None:
                continue
            highest = f"(SELECT max({column.name}) FROM {table.name})"
            await conn.execute(
                text(f"SELECT setval(:sequence, COALESCE({highest}, 0) + 1, false)"), {"sequence": sequence}
            )


def copy_command(args: argparse.Namespace) -> int:
    """``janus-bot db [--config C | --url SRC] copy-to TARGET``: prints one line per table and the check."""
    source_url = database_url_from_args(args)
    try:
        copied = asyncio.run(copy_database(source_url, args.target))
    except InvalidRequest:
        raise
    except Exception as exc:  # the driver's refusal (cannot connect, permission denied): one line
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise InvalidRequest(f"copy failed: {first[0] if first else type(exc).__name__}") from None
    print(f"copied {display_url(source_url)} -> {display_url(args.target)}")
    for table in copied:
        print(f"  {table.name:<16} {table.target_rows:>8} rows")
    total = sum(t.target_rows for t in copied)
    print(f"count check: ok, {total} rows in {len(copied)} tables, the same in both databases")
    return 0
