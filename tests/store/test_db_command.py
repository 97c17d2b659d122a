"""``janus-bot db`` on real SQLite files with the real migrations: downgrade needs a revision and a
confirmation and writes a backup first; ``current`` and :func:`inspect_database` create nothing."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from bot.store.backup import backup_sqlite_file
from bot.store.inspect import inspect_database
from bot.store.migrate import head_revision, upgrade_database

TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'alembic_version'"


def url_of(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute(TABLES_SQL)}


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    path = tmp_path / "janus-bot.db"
    asyncio.run(upgrade_database(url_of(path)))
    return path


def test_downgrade_needs_a_revision(migrated: Path) -> None:
    before = tables(migrated)
    with pytest.raises(SystemExit) as exited:
        cli_main(["db", "--url", url_of(migrated), "downgrade"])
    assert exited.value.code == 2
    assert tables(migrated) == before and before


def test_downgrade_without_a_terminal_needs_yes(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tables(migrated)
    assert cli_main(["db", "--url", url_of(migrated), "downgrade", "base"]) == 2
    err = capsys.readouterr().err
    assert "--yes" in err and len(err.strip().splitlines()) == 1
    assert tables(migrated) == before
    assert [p.name for p in migrated.parent.iterdir() if ".backup-" in p.name] == []


def test_downgrade_with_yes_writes_a_backup_first(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(migrated) as connection:
        connection.execute(
            "INSERT INTO guild_settings (guild_id, data, updated_at) VALUES (42, '{}', '2026-12-03 17:45:00')"
        )
    before = tables(migrated)
    assert cli_main(["db", "--url", url_of(migrated), "downgrade", "base", "--yes"]) == 0
    out = capsys.readouterr().out
    backups = [p for p in migrated.parent.iterdir() if ".backup-" in p.name]
    assert len(backups) == 1
    assert re.fullmatch(r"janus-bot\.db\.backup-\d{8}T\d{6}Z", backups[0].name)
    assert f"backup: {backups[0]}" in out
    assert tables(migrated) == set()  # the downgrade happened
    assert tables(backups[0]) == before  # ... and the backup has it all, data included
    with sqlite3.connect(backups[0]) as copy:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
        assert copy.execute("SELECT guild_id FROM guild_settings").fetchall() == [(42,)]


def test_the_backup_includes_commits_still_in_the_wal(tmp_path: Path) -> None:
    """A live bot's last commits sit in the -wal file: a file copy would miss them, the backup API not."""
    path = tmp_path / "live.db"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1), (2)")
    writer.commit()  # still open: nothing checkpointed into the main file yet
    try:
        now = datetime(2026, 12, 3, 17, 45, tzinfo=UTC)
        copy = backup_sqlite_file(path, now)
        assert copy.name == "live.db.backup-20261203T174500Z"
        with sqlite3.connect(copy) as connection:
            assert connection.execute("SELECT x FROM t").fetchall() == [(1,), (2,)]
        assert backup_sqlite_file(path, now).name == "live.db.backup-20261203T174500Z-2"  # never overwrites
    finally:
        writer.close()


def _downgrade_on_a_terminal(path: Path, answer: str) -> tuple[int, str]:
    """Run the real command with its stdin on a pseudo-terminal and type ``answer``."""
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "db", "--url", url_of(path), "downgrade", "base"],
        stdin=child_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(child_fd)
    os.write(main_fd, answer.encode() + b"\n")
    try:
        out, err = child.communicate(timeout=60)
    finally:
        os.close(main_fd)
    return child.returncode, (out + err).decode()


def test_on_a_terminal_only_yes_goes_on(migrated: Path) -> None:
    before = tables(migrated)
    status, text = _downgrade_on_a_terminal(migrated, "no")
    assert status == 2 and "not confirmed" in text and "Traceback" not in text
    assert tables(migrated) == before
    status, text = _downgrade_on_a_terminal(migrated, "yes")
    assert status == 0, text
    assert tables(migrated) == set() and "backup: " in text


def test_current_on_a_missing_file_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "bot.db"
    assert cli_main(["db", "--url", url_of(path), "current"]) == 2
    assert "does not exist; `janus-bot run`" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_upgrade_creates_the_file_but_not_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["db", "--url", url_of(tmp_path / "nowhere" / "bot.db"), "upgrade"]) == 2
    assert "mkdir -p" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli_main(["db", "--url", url_of(tmp_path / "bot.db"), "upgrade"]) == 0
    assert "(up to date)" in capsys.readouterr().out


def test_downgrade_of_an_empty_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    assert cli_main(["db", "--url", url_of(path), "downgrade", "base", "--yes"]) == 2
    assert "nothing to downgrade" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]  # and no backup of nothing


async def test_inspect_reads_without_writing(migrated: Path, tmp_path: Path) -> None:
    listing = sorted(p.name for p in tmp_path.iterdir())
    state = await inspect_database(url_of(migrated))
    assert (state.exists, state.revision, state.problem) == (True, head_revision(), None)
    assert state.summary == f"sqlite file {migrated}: revision {head_revision()} (up to date)"
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no -wal / -shm left behind

    missing = await inspect_database(url_of(tmp_path / "a" / "b.db"))
    assert not missing.exists and missing.problem is None and "will create it" in missing.summary
    assert not (tmp_path / "a").exists()

    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(2048))
    assert "not a SQLite database" in ((await inspect_database(url_of(junk))).problem or "")

    with sqlite3.connect(migrated) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'fffffff'")
    newer = await inspect_database(url_of(migrated))
    assert newer.problem is not None and "unknown" in newer.problem


async def test_inspect_hides_the_password_and_names_the_driver() -> None:
    state = await inspect_database("postgresql://bot:hunter2@db/janus")
    assert "hunter2" not in state.url_for_display + state.summary
    assert state.problem is not None and "postgresql+asyncpg" in state.problem
