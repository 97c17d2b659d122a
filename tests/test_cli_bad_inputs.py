"""Every ``janus-bot`` subcommand against a table of bad inputs: each one ends with exit status 2, at most
three lines on stderr and no traceback anywhere (README: "All subcommands end a bad input with one
readable line and exit status 2, never a traceback").

Each row runs the real command as a child process (``python -m bot.cli``) in a fresh folder, with stdin
not a terminal, so the real exit status is checked. Every row must fail before a model is loaded or
Discord is contacted: the whole table takes seconds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.store.migrate import upgrade_database

ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
UNSET_TOKEN = "JANUS_TEST_TOKEN_THAT_IS_NOT_SET"
FAKE_TOKEN = "JANUS_TEST_FAKE_TOKEN"
HAS_PROC = Path("/proc/self").is_dir()  # /proc/<new file> cannot be created, even by root
try:
    import asyncpg  # noqa: F401

    HAS_ASYNCPG = True
except ImportError:
    HAS_ASYNCPG = False


def sqlite_url(path: Path | str) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _config(folder: Path, name: str, body: str) -> str:
    (folder / name).write_text(body, encoding="utf-8")
    return name


def _migrated(folder: Path) -> str:
    path = folder / "migrated.db"
    asyncio.run(upgrade_database(sqlite_url(path)))
    return sqlite_url(path)


def _empty_db(folder: Path) -> str:
    import sqlite3

    path = folder / "empty.db"
    sqlite3.connect(path).close()  # a zero-byte file: a valid, empty SQLite database
    return sqlite_url(path)


@dataclass(frozen=True)
class Case:
    """``argv`` may name ``{cwd}``; ``prepare`` builds what the row needs in the folder and returns extra
    format values; ``env`` is added to the child's environment."""

    argv: tuple[str, ...]
    prepare: Callable[[Path], dict[str, str]] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _files(folder: Path) -> dict[str, str]:
    """What every row may point at: a plain file, junk bytes, configs (missing folder, malformed...)."""
    (folder / "afile.txt").write_text("not an image, not a folder\n", encoding="utf-8")
    (folder / "junk.db").write_bytes(os.urandom(4096))
    (folder / "busy").mkdir(exist_ok=True)
    (folder / "busy" / "keep.txt").write_text("mine\n", encoding="utf-8")
    _config(folder, "malformed.toml", "[discord\ntoken_env = \n")
    _config(folder, "no-token.toml", f'[discord]\ntoken_env = "{UNSET_TOKEN}"\n')
    _config(
        folder,
        "log-folder.toml",
        f'[discord]\ntoken_env = "{FAKE_TOKEN}"\n[logging]\nfile = "no-such-folder/deeper/bot.log"\n',
    )
    _config(folder, "bad-device.toml", '[engine]\ndevices = ["tpu"]\n')
    _config(folder, "serve-local.toml", '[engine]\nservice = "janus-engine"\n')  # backend "local"
    _config(folder, "serve-bad-name.toml", '[engine]\nbackend = "ray"\nservice = "two words"\n')
    _config(
        folder, "bad-db-url.toml", f'[discord]\ntoken_env = "{FAKE_TOKEN}"\n[database]\nurl = "not a url"\n'
    )
    return {}


def _with(builder: Callable[[Path], str], key: str) -> Callable[[Path], dict[str, str]]:
    return lambda folder: {key: builder(folder)}


DB = ("db", "--url")
CASES = {
    # ---- run / check ----
    "run-missing-config": Case(("run", "--config", "absent.toml")),
    "run-malformed-toml": Case(("run", "--config", "malformed.toml")),
    "run-token-env-unset": Case(("run", "--config", "no-token.toml")),
    "run-log-file-in-missing-folder": Case(("run", "--config", "log-folder.toml"), env={FAKE_TOKEN: "x"}),
    "run-config-is-a-folder": Case(("run", "--config", "busy")),
    "run-bad-database-url": Case(("run", "--config", "bad-db-url.toml"), env={FAKE_TOKEN: "x"}),
    "check-missing-config": Case(("check", "--config", "absent.toml")),
    "check-malformed-toml": Case(("check", "--config", "malformed.toml")),
    "check-bad-device-in-config": Case(("check", "--config", "bad-device.toml")),
    # ---- engine serve ----
    "engine-no-action": Case(("engine",)),
    "engine-serve-missing-config": Case(("engine", "serve", "--config", "absent.toml")),
    "engine-serve-local-backend": Case(("engine", "serve", "--config", "serve-local.toml")),
    "engine-serve-bad-service-name": Case(("engine", "serve", "--config", "serve-bad-name.toml")),
    # ---- demo ----
    "demo-output-is-a-file": Case(("demo", "-o", "afile.txt")),
    "demo-output-under-a-file": Case(("demo", "-o", "afile.txt/sub")),
    # ---- imagine ----
    "imagine-bad-device": Case(("imagine", "a cat", "--device", "tpu")),
    "imagine-bad-cuda-index": Case(("imagine", "a cat", "--device", "cuda:x")),
    "imagine-count-0": Case(("imagine", "a cat", "-n", "0")),
    "imagine-count-not-a-number": Case(("imagine", "a cat", "-n", "many")),
    "imagine-output-is-a-file": Case(("imagine", "a cat", "-o", "afile.txt")),
    "imagine-output-under-a-file": Case(("imagine", "a cat", "-o", "afile.txt/sub")),
    "imagine-missing-model-folder": Case(("imagine", "a cat", "--model", "./no-such-model")),
    "imagine-no-prompt": Case(("imagine",)),
    "imagine-negative-too-long": Case(("imagine", "a cat", "--negative", "x" * 4001)),
    # ---- describe ----
    "describe-missing-image": Case(("describe", "missing.png")),
    "describe-folder-as-image": Case(("describe", "busy")),
    "describe-not-an-image": Case(("describe", "afile.txt")),
    "describe-bad-device": Case(("describe", "afile.txt", "--device", "gpu")),
    # ---- download ----
    "download-not-a-hub-id": Case(("download", "not a//valid id")),
    "download-while-offline": Case(("download", "deepseek-community/Janus-Pro-1B")),
    # ---- make-tiny-model ----
    "tiny-into-a-file": Case(("make-tiny-model", "afile.txt")),
    "tiny-empty-path": Case(("make-tiny-model", "")),
    "tiny-non-empty-folder": Case(("make-tiny-model", "busy")),
    "tiny-under-a-file": Case(("make-tiny-model", "afile.txt/model")),
    # ---- db ----
    "db-current-missing-file": Case((*DB, sqlite_url("{cwd}/absent.db"), "current")),
    "db-current-missing-folder": Case((*DB, sqlite_url("{cwd}/nowhere/bot.db"), "current")),
    "db-current-not-a-database": Case((*DB, sqlite_url("{cwd}/junk.db"), "current")),
    "db-current-folder": Case((*DB, sqlite_url("{cwd}/busy"), "current")),
    "db-current-garbage-url": Case((*DB, "not a url", "current")),
    "db-current-sync-sqlite-url": Case((*DB, "sqlite:///x.db", "current")),
    "db-current-sync-postgres-url": Case((*DB, "postgresql://bot:secret@db/janus", "current")),
    "db-current-missing-config": Case(("db", "--config", "absent.toml", "current")),
    "db-current-malformed-config": Case(("db", "--config", "malformed.toml", "current")),
    "db-upgrade-missing-folder": Case((*DB, sqlite_url("{cwd}/nowhere/bot.db"), "upgrade")),
    "db-upgrade-under-a-file": Case((*DB, sqlite_url("{cwd}/afile.txt/bot.db"), "upgrade")),
    "db-upgrade-not-a-database": Case((*DB, sqlite_url("{cwd}/junk.db"), "upgrade")),
    "db-upgrade-unknown-revision": Case((*DB, sqlite_url("{cwd}/new.db"), "upgrade", "nosuchrev")),
    "db-upgrade-garbage-url": Case((*DB, "not a url", "upgrade")),
    "db-downgrade-no-revision": Case((*DB, "{migrated}", "downgrade"), _with(_migrated, "migrated")),
    "db-downgrade-unconfirmed": Case((*DB, "{migrated}", "downgrade", "base"), _with(_migrated, "migrated")),
    "db-downgrade-unknown-revision": Case(
        (*DB, "{migrated}", "downgrade", "nosuchrev", "--yes"), _with(_migrated, "migrated")
    ),
    "db-downgrade-empty-database": Case(
        (*DB, "{empty}", "downgrade", "base", "--yes"), _with(_empty_db, "empty")
    ),
    "db-downgrade-missing-file": Case((*DB, sqlite_url("{cwd}/absent.db"), "downgrade", "base", "--yes")),
    "db-downgrade-sync-url": Case((*DB, "sqlite:///x.db", "downgrade", "base", "--yes")),
    "db-no-action": Case(("db",)),
    "unknown-command": Case(("frobnicate",)),
}
PROC_CASES = {
    "demo-output-unwritable": Case(("demo", "-o", "/proc/janus-test-demo")),
    "imagine-output-unwritable": Case(("imagine", "a cat", "-o", "/proc/janus-test-out")),
    "tiny-unwritable": Case(("make-tiny-model", "/proc/janus-test-tiny")),
    "db-upgrade-unwritable-path": Case((*DB, sqlite_url("/proc/janus-test.db"), "upgrade")),
}
ASYNCPG_CASES = {
    "db-current-asyncpg-not-installed": Case((*DB, "postgresql+asyncpg://bot:secret@db/janus", "current")),
    "db-upgrade-asyncpg-not-installed": Case((*DB, "postgresql+asyncpg://bot:secret@db/janus", "upgrade")),
}


def _params() -> list[object]:
    params: list[object] = [pytest.param(case, id=name) for name, case in CASES.items()]
    skip_proc = pytest.mark.skipif(not HAS_PROC, reason="needs /proc for an unwritable path")
    params += [pytest.param(case, id=name, marks=skip_proc) for name, case in PROC_CASES.items()]
    skip_pg = pytest.mark.skipif(HAS_ASYNCPG, reason="asyncpg is installed here")
    params += [pytest.param(case, id=name, marks=skip_pg) for name, case in ASYNCPG_CASES.items()]
    return params


def prepare_case(case: Case, folder: Path) -> list[str]:
    """Build the row's files in ``folder`` (in the calling thread) and return its argv."""
    values = {"cwd": str(folder), **_files(folder)}
    if case.prepare is not None:
        values.update(case.prepare(folder))
    return [arg.format(**values) for arg in case.argv]


def run_argv(case: Case, argv: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (UNSET_TOKEN, FAKE_TOKEN)}
    env.update(ENV)
    env.update(case.env)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *argv],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_case(case: Case, folder: Path) -> subprocess.CompletedProcess[str]:
    return run_argv(case, prepare_case(case, folder), folder)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """All rows at once, two at a time (each child spends most of its ~0.5 s importing)."""
    cases = {**CASES, **(PROC_CASES if HAS_PROC else {}), **({} if HAS_ASYNCPG else ASYNCPG_CASES)}
    folders = {name: tmp_path_factory.mktemp(name) for name in cases}
    argvs = {name: prepare_case(case, folders[name]) for name, case in cases.items()}  # no threads here
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_argv, case, argvs[name], folders[name]) for name, case in cases.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", _params())
def test_a_bad_input_is_one_line_and_status_2(
    case: Case, request: pytest.FixtureRequest, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = results[request.node.callspec.id]
    shown = f"argv={case.argv}\nstatus={done.returncode}\nstderr:\n{done.stderr}\nstdout:\n{done.stdout}"
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, shown
    assert done.returncode == 2, shown
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, shown
    assert lines[-1].startswith("janus-bot"), shown  # the error names the command


def test_the_table_covers_every_subcommand() -> None:
    import argparse

    from bot.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    db_actions = {"upgrade", "downgrade", "current"}
    covered = {case.argv[0] for case in CASES.values()}
    assert commands <= covered, commands - covered
    covered_db = {
        arg for case in CASES.values() if case.argv[0] == "db" for arg in case.argv if arg in db_actions
    }
    assert covered_db == db_actions


def test_bad_inputs_leave_nothing_behind(tmp_path: Path) -> None:
    """The refusals create no folder and no database where a URL or -o pointed."""
    names = ["db-current-missing-folder", "db-upgrade-missing-folder", "db-current-missing-file"]
    names += ["db-current-not-a-database", "tiny-non-empty-folder", "tiny-empty-path"]
    _files(tmp_path)
    before = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    for name in names:
        assert run_case(CASES[name], tmp_path).returncode == 2
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == before
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


def test_imagine_checks_the_output_folder_before_the_model(tmp_path: Path) -> None:
    """A bad -o is refused before the engine starts a worker (no "loading ..." line)."""
    done = run_case(
        Case(("imagine", "a cat", "-o", "afile.txt", "--model", "deepseek-community/none")), tmp_path
    )
    assert done.returncode == 2 and "afile.txt" in done.stderr and "loading" not in done.stderr, done.stderr


def test_images_that_cannot_be_written_go_to_a_temporary_folder(tmp_path: Path) -> None:
    """The images of a finished generation are never lost: when the output folder went away (or the disk
    filled up) after the model ran, they are written to a fresh temporary folder instead."""
    from janus_engine.cli_jobs import _write_images

    gone = tmp_path / "removed-meanwhile"
    paths, reason = _write_images(gone, ["a-1.png", "a-2.png"], [b"one", b"two"])
    assert reason is not None and str(gone) in reason
    assert [p.read_bytes() for p in paths] == [b"one", b"two"]
    assert all(p.parent != gone and p.parent.name.startswith("janus-imagine-") for p in paths)
    for path in paths:
        path.unlink()
    paths[0].parent.rmdir()

    paths, reason = _write_images(tmp_path, ["b-1.png"], [b"x"])
    assert reason is None and paths == [tmp_path / "b-1.png"] and paths[0].read_bytes() == b"x"
