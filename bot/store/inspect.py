"""A read-only look at a database: does it exist, which schema revision is it at, what is wrong with it.

Used by ``janus-bot db current``, by the pre-checks of ``db upgrade`` / ``db downgrade`` and by
``janus-bot check``. :func:`inspect_database` never creates a file or a folder and never migrates:

- a SQLite file that is missing is reported as missing (its folder is not created, no empty database
  appears); an existing one is opened through SQLite's own read-only URI (``mode=ro``). When no ``-wal``
  / ``-shm`` file sits next to it (no bot has it open), it is also opened ``immutable=1``, because a
  read-only connection to a WAL database otherwise leaves fresh ``-wal`` and ``-shm`` files behind;
- any other database (PostgreSQL) is only connected to and read (``SELECT`` of Alembic's version table).

Every failure is described by ``problem`` (one readable line); the function itself does not raise for a
bad URL, a missing driver, a folder in place of a file, a file that is not a database, or a server that
cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import quote

from janus_engine.errors import JanusError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["DatabaseState", "alembic_config", "head_revision", "inspect_database", "sqlite_path"]

VERSION_TABLE = "alembic_version"

# Alembic logs one INFO line per built-in plugin when it is first imported (below, lazily, so that
# importing this module stays cheap); those lines say nothing to an operator.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str | None = None, *, output_buffer: TextIO | None = None) -> Config:
    """An Alembic Config for the packaged migrations (no ini file involved). ``output_buffer`` receives
    the SQL of offline (``sql=True``) runs."""
    from alembic.config import Config

    cfg = Config(output_buffer=output_buffer)
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # the option parser interpolates %
    return cfg


def head_revision() -> str | None:
    """The newest revision of the packaged migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether ``revision`` (an id, a prefix of one, ``head`` or ``base``) names a packaged migration."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if revision in ("head", "heads", "base"):
        return True
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


@dataclass(frozen=True)
class DatabaseState:
    """What :func:`inspect_database` found. ``revision`` is None for an empty (never migrated) or missing
    database; ``problem`` is one readable line, or None when the database can be used as it is (a
    missing SQLite file is not a problem: ``janus-bot run`` creates it)."""

    url_for_display: str  # the password hidden
    exists: bool
    revision: str | None
    head: str | None
    problem: str | None

    @property
    def up_to_date(self) -> bool:
        return self.exists and self.problem is None and self.revision == self.head

    @property
    def summary(self) -> str:
        """One line, e.g. ``sqlite file /x/y.db: revision abc (up to date)``."""
        where = self.url_for_display
        if self.problem is not None:
            return f"{where}: {self.problem}"
        if not self.exists:
            return f"{where} does not exist; `janus-bot run` (or `janus-bot db upgrade`) will create it"
        if self.revision is None:
            return f"{where}: empty database, no revision (head is {self.head}; `janus-bot run` migrates it)"
        if self.revision == self.head:
            return f"{where}: revision {self.revision} (up to date)"
        return f"{where}: revision {self.revision} (head is {self.head}; `janus-bot run` migrates it)"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database or an in-memory SQLite one."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):  # already a SQLite URI filename
        return Path(parsed.database[len("file:") :].split("?", 1)[0]).expanduser()
    return Path(parsed.database).expanduser()


async def inspect_database(url: str) -> DatabaseState:
    """Look at the database of ``url`` without changing anything (see the module docstring)."""
    from bot.store.database import check_database_url, display_url

    shown = display_url(url)
    head = head_revision()
    try:
        parsed = check_database_url(url)
    except JanusError as exc:
        return DatabaseState(shown, False, None, head, _without_prefix(str(exc), shown))
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            return DatabaseState("in-memory sqlite database", True, None, head, None)
        state = await asyncio.to_thread(_inspect_sqlite_file, path, head)
    else:
        state = await _inspect_server(url, shown, head)
    if state.problem is None and state.revision is not None and not known_revision(state.revision):
        problem = (
            f"revision {state.revision} is unknown to this janus-bot (written by a newer version?); "
            "upgrade janus-bot"
        )
        return DatabaseState(state.url_for_display, True, state.revision, head, problem)
    return state


def _without_prefix(message: str, shown: str) -> str:
    prefix = f"{shown}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _inspect_sqlite_file(path: Path, head: str | None) -> DatabaseState:
    shown = f"sqlite file {path}"
    if not path.exists():
        parent = path.parent
        if not parent.exists():
            shown = f"{shown} (nor its folder {parent})"
        elif not parent.is_dir():
            return DatabaseState(shown, False, None, head, f"{parent} is a file, not a folder")
        return DatabaseState(shown, False, None, head, None)
    if path.is_dir():
        return DatabaseState(shown, False, None, head, "is a folder, not a database file")
    busy = any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm"))
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("" if busy else "&immutable=1")
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        return DatabaseState(shown, True, None, head, f"cannot be opened: {exc}")
    try:
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
        ).fetchall()
        if not tables:
            return DatabaseState(shown, True, None, head, None)
        row = connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
    except sqlite3.DatabaseError as exc:
        reason = "is not a SQLite database" if "not a database" in str(exc) else f"cannot be read: {exc}"
        return DatabaseState(shown, True, None, head, reason)
    finally:
        connection.close()
    return DatabaseState(shown, True, row[0] if row else None, head, None)


async def _inspect_server(url: str, shown: str, head: str | None) -> DatabaseState:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            has_table = await connection.run_sync(lambda c: c.dialect.has_table(c, VERSION_TABLE))
            if not has_table:
                return DatabaseState(shown, True, None, head, None)
            row = (await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).first()
            return DatabaseState(shown, True, row[0] if row else None, head, None)
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return DatabaseState(shown, False, None, head, f"cannot connect: {type(exc).__name__}: {reason}")
    finally:
        await engine.dispose()
