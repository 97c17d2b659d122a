"""Alembic environment of the bot's database.

The bot runs migrations itself: :mod:`bot.store.migrate` opens an async connection, starts one write
transaction and hands the connection over in ``config.attributes["connection"]``, so the whole upgrade
commits or rolls back as one (SQLite's DDL is transactional) and works from inside a running event loop.
Run any other way (``alembic -c migrations/alembic.ini upgrade head`` with ``sqlalchemy.url`` set), this
file opens its own engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from bot.store.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Write migrations in plain ``sa`` types, so they never depend on model code that may change."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        render_item=_render_item,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds the table instead
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(
        url=config.get_main_option("sqlalchemy.url"), literal_binds=True, dialect_opts={"paramstyle": "named"}
    )
    with context.begin_transaction():
        context.run_migrations()


# pg_advisory_xact_lock key taken by every migration run on PostgreSQL ("JANUS" in ASCII).
MIGRATION_LOCK_KEY = 0x4A414E5553


def do_run_migrations(connection: Connection) -> None:
    # The caller runs us inside one transaction it began (see bot.store.database: BEGIN is ours), so
    # DDL is transactional on SQLite too and a failed upgrade leaves the previous schema intact.
    # Several bot processes may start at once on an empty database. On SQLite the caller's BEGIN
    # IMMEDIATE already makes the second wait; on PostgreSQL two CREATE TABLEs race in the catalogue, so
    # take a transaction-scoped advisory lock first: the second waits, then finds the schema at head.
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    from bot.store.database import WRITE_OPTION, create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
elif (shared := config.attributes.get("connection")) is not None:
    do_run_migrations(shared)
else:
    asyncio.run(run_async_migrations())
