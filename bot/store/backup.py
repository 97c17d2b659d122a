"""A consistent copy of a SQLite database file, taken before anything destructive (`db downgrade`).

The copy goes through SQLite's online backup API (:meth:`sqlite3.Connection.backup`), so it is consistent
even while a bot has the database open and is writing (its WAL content is included), unlike a file copy.
It lies next to the database, named ``<file>.backup-<UTC time>`` (``janus-bot.db.backup-20261203T174500Z``);
restoring it is stopping the bot and moving it back over the database file.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from janus_engine.errors import InvalidRequest

__all__ = ["backup_path_for", "backup_sqlite_file"]


def backup_path_for(database: Path, now: datetime | None = None) -> Path:
    """Where the backup of ``database`` taken at ``now`` goes; never an existing file."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = database.with_name(f"{database.name}.backup-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = database.with_name(f"{database.name}.backup-{stamp}-{n}")
    return candidate


def backup_sqlite_file(database: Path, now: datetime | None = None) -> Path:
    """Copy ``database`` next to itself (see the module docstring) and return the copy's path.

    Raises :class:`InvalidRequest` with one line when the database cannot be read or the copy cannot be
    written (an unwritable folder, a full disk); a half-written copy is removed.
    """
    target = backup_path_for(database, now)
    try:
        source = sqlite3.connect(f"file:{quote(str(database.resolve()))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise InvalidRequest(f"cannot read {database} to back it up: {exc}") from None
    try:
        try:
            copy = sqlite3.connect(target)
        except sqlite3.Error as exc:
            raise InvalidRequest(f"cannot write the backup {target}: {exc}") from None
        try:
            source.backup(copy)
        except sqlite3.Error as exc:
            copy.close()
            target.unlink(missing_ok=True)
            raise InvalidRequest(f"cannot back up {database} to {target}: {exc}") from None
        copy.close()
    finally:
        source.close()
    return target
