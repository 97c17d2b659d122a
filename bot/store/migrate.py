"""Schema migrations: ``janus-bot db upgrade|downgrade|current`` and the bot's own upgrade at start.

The Alembic configuration is built here in code, pointing at the installed ``migrations`` package, so
neither the bot nor the CLI needs an alembic.ini in the working directory. Alembic's commands are
synchronous; they run on an async connection through ``run_sync`` inside one write transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.backup import backup_sqlite_file
from bot.store.database import WRITE_OPTION, check_database_url, create_engine
from bot.store.inspect import (
    alembic_config,
    head_revision,
    inspect_database,
    known_revision,
    migrations_dir,
    sqlite_path,
)
from janus_engine.errors import InvalidRequest

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
            raise InvalidRequest(f"config file {config_path} not found")
        return _resolve_sqlite_path(DEFAULT_SQLITE_URL, Path.cwd())
    return _resolve_sqlite_path(_url_from_toml(config_path), config_path.resolve().parent)


def _url_from_toml(path: Path) -> str:
    import tomllib

    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"config file {path} cannot be read: {exc}") from None
    database = data.get("database", {})
    if not isinstance(database, dict):
        raise InvalidRequest(f"{path}: [database] must be a table")
    url = database.get("url", DEFAULT_SQLITE_URL)
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
    """``janus-bot db upgrade [REV] | downgrade REV [--yes] | current``.

    Exit status 0 when done. Every refusal or bad input ends with one line on stderr and exit status 2
    (raised as :class:`InvalidRequest`, printed by :func:`bot.cli.main`): a URL the store cannot use, a
    database file that does not exist (``current``, ``downgrade``; nothing is created), a missing folder
    (``upgrade`` creates the database file, never its folder), a folder or a file that is not a database,
    an unknown revision, a downgrade of an empty database, and a downgrade that was not confirmed.

    ``downgrade`` asks "type yes" on a terminal; without one it needs ``--yes``. Before it changes
    anything it writes a backup of a SQLite file next to it (:mod:`bot.store.backup`) and says where;
    for another database it says that no backup was made.
    """
    url = database_url_from_args(args)
    check_database_url(url)
    state = asyncio.run(inspect_database(url))
    if state.problem is not None:
        raise InvalidRequest(state.summary)
    action = args.db_command
    if action == "current":
        if not state.exists:
            raise InvalidRequest(state.summary)
        print(state.summary)
        return 0
    _check_target(args.revision)
    path = sqlite_path(url)
    if action == "upgrade":
        if path is not None and not path.parent.is_dir():
            raise InvalidRequest(
                f"folder {path.parent} does not exist; create it (mkdir -p {path.parent}) or fix the URL"
            )
        if path is not None and not state.exists:
            _create_sqlite_file(path)
        _run(upgrade_database(url, args.revision), state.url_for_display)
    else:
        if not state.exists:
            raise InvalidRequest(state.summary)
        if state.revision is None:
            raise InvalidRequest(
                f"{state.url_for_display}: empty database (no revision); nothing to downgrade"
            )
        _confirm_downgrade(state.url_for_display, state.revision, args.revision, path, yes=args.yes)
        if path is not None:
            print(f"backup: {backup_sqlite_file(path)}")
        else:
            print(
                f"no backup made: {state.url_for_display} is not a SQLite file (take one with pg_dump)",
                file=sys.stderr,
            )
        _run(downgrade_database(url, args.revision), state.url_for_display)
    print(asyncio.run(inspect_database(url)).summary)
    return 0


def _create_sqlite_file(path: Path) -> None:
    """Create the empty database file here, with the stdlib driver: a file that cannot be created is then
    one line (aiosqlite, failing to open in its own thread, can print a traceback as the process ends)."""
    import sqlite3

    try:
        sqlite3.connect(path).close()
    except (sqlite3.Error, OSError) as exc:
        raise InvalidRequest(f"cannot create the database file {path}: {exc}") from None


_RELATIVE = re.compile(r"^(head|base|heads)?[+-]\d+$")


def _check_target(revision: str) -> None:
    """Refuse an unknown revision before anything is opened; relative ones (-1, head-1) alembic checks."""
    if _RELATIVE.match(revision) or known_revision(revision):
        return
    raise InvalidRequest(f"unknown revision {revision!r}; known: base, {_known_list()}")


def _known_list() -> str:
    from alembic.script import ScriptDirectory

    revisions = ScriptDirectory.from_config(alembic_config()).walk_revisions()
    head = head_revision()
    return ", ".join(f"{r.revision} (head)" if r.revision == head else r.revision for r in revisions)


def _confirm_downgrade(shown: str, current: str, target: str, path: Path | None, *, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidRequest(
            f"downgrade of {shown} (revision {current} -> {target}) drops tables and their data; "
            "add --yes to confirm (no terminal to ask on)"
        )
    backup = "a backup is written next to it first" if path is not None else "NO backup is made"
    print(
        f"Downgrading {shown} from revision {current} to {target} drops tables and their data ({backup}).",
        file=sys.stderr,
    )
    try:
        answer = input("Type yes to go on: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise InvalidRequest("not confirmed; nothing was changed")


def _run(migration: Coroutine[Any, Any, None], shown: str) -> None:
    """Run a migration; alembic's and the driver's refusals become one line each."""
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    try:
        asyncio.run(migration)
    except CommandError as exc:
        raise InvalidRequest(f"{shown}: {exc}") from None
    except DBAPIError as exc:
        raise InvalidRequest(f"{shown}: {str(exc.orig).splitlines()[0]}") from None
    except OSError as exc:
        raise InvalidRequest(f"{shown}: {exc}") from None
