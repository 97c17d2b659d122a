"""Schema migrations: ``janus-bot db upgrade|downgrade|current`` and the bot's own upgrade at start.

The Alembic configuration is built here in code, pointing at the installed ``migrations`` package, so
neither the bot nor the CLI needs an alembic.ini in the working directory. Alembic's commands are
synchronous; they run on an async connection through ``run_sync`` inside one write transaction.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.database import WRITE_OPTION, create_engine
from bot.store.inspect import alembic_config, head_revision, migrations_dir

__all__ = ["alembic_config", "head_revision", "migrations_dir"]  # re-exported: their home is inspect

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection


async def _run_on_engine(engine: AsyncEngine, action: str, revision: str, cfg: Config) -> None:
    from alembic import command

    def run(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)

    async with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        await connection.run_sync(run)


async def upgrade_database(target: str | AsyncEngine, revision: str = "head") -> None:
    """Bring the database (a URL or an open engine) to ``revision``; all of it in one transaction."""
    await _migrate(target, "upgrade", revision)


async def downgrade_database(target: str | AsyncEngine, revision: str) -> None:
    await _migrate(target, "downgrade", revision)


async def current_revision(target: str | AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine, owned = _engine_for(target)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        if owned:
            await engine.dispose()


async def _migrate(target: str | AsyncEngine, action: str, revision: str) -> None:
    engine, owned = _engine_for(target)
    try:
        await _run_on_engine(engine, action, revision, alembic_config(str(engine.url)))
    finally:
        if owned:
            await engine.dispose()


def _engine_for(target: str | AsyncEngine) -> tuple[AsyncEngine, bool]:
    if isinstance(target, AsyncEngine):
        return target, False
    return create_engine(target), True


DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///janus-bot.db"  # the config's default: next to the config file


def database_url_from_args(args: argparse.Namespace) -> str:
    """``--url`` wins; else ``[database] url`` of ``--config`` (or of ./config.toml when it exists).

    A relative SQLite path is relative to the config file's folder, as the bot itself reads it, so
    ``janus-bot db upgrade --config X`` always touches the database that ``janus-bot run --config X`` uses.
    """
    url = getattr(args, "url", None)
    if url:
        return str(url)
    config_path = Path(args.config) if getattr(args, "config", None) else Path("config.toml")
    if not config_path.exists():
        if getattr(args, "config", None):
            from janus_engine.errors import InvalidRequest

            raise InvalidRequest(f"config file {config_path} not found")
        return _resolve_sqlite_path(DEFAULT_SQLITE_URL, Path.cwd())
    return _resolve_sqlite_path(_url_from_toml(config_path), config_path.resolve().parent)


def _url_from_toml(path: Path) -> str:
    import tomllib

    from janus_engine.errors import InvalidRequest

    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"config file {path} is not valid TOML: {exc}") from None
    url = data.get("database", {}).get("url", DEFAULT_SQLITE_URL)
    if not isinstance(url, str) or "://" not in url:
        raise InvalidRequest(f"{path}: database.url must be an SQLAlchemy URL like {DEFAULT_SQLITE_URL}")
    return url


def _resolve_sqlite_path(url: str, base: Path) -> str:
    if url.startswith("sqlite") and ":///" in url:
        scheme, path = url.split(":///", 1)
        if path and path != ":memory:" and not Path(path).is_absolute():
            return f"{scheme}:///{(base / path).resolve()}"
    return url


def db_command(args: argparse.Namespace) -> int:
    """``janus-bot db upgrade [REV] | downgrade [REV] | current``."""
    url = database_url_from_args(args)
    if args.db_command == "upgrade":
        asyncio.run(upgrade_database(url, args.revision))
    elif args.db_command == "downgrade":
        asyncio.run(downgrade_database(url, args.revision))
    rev = asyncio.run(current_revision(url))
    head = head_revision()
    state = "up to date" if rev == head else f"head is {head}"
    print(f"{_safe_url(url)}: revision {rev or 'none (empty database)'} ({state})")
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password, fit for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
