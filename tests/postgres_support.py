"""A fresh PostgreSQL database per test, on the server scripts/postgres.sh started for this run.

scripts/test.sh starts a throwaway server on 127.0.0.1 and exports its URL as JANUS_TEST_POSTGRES_URL; CI
also sets JANUS_REQUIRE_POSTGRES=1, so a missing server fails the run instead of skipping the PostgreSQL
half of the store tests. Each test gets its own database (created from template0, dropped afterwards), so
tests never see each other's rows and need no cleanup of their own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.engine import make_url

POSTGRES_URL_VAR = "JANUS_TEST_POSTGRES_URL"
REQUIRE_VAR = "JANUS_REQUIRE_POSTGRES"


def server_url() -> str:
    """The admin URL of the test server, or skip (fail under CI) when none was started."""
    url = os.environ.get(POSTGRES_URL_VAR)
    if url:
        return url
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{REQUIRE_VAR}=1 but {POSTGRES_URL_VAR} is not set: scripts/postgres.sh did not start")
    pytest.skip(f"no PostgreSQL server ({POSTGRES_URL_VAR} unset): scripts/test.sh starts one")


def _dsn(url: str) -> str:
    """asyncpg's own DSN for a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(coro: Any) -> Any:
    """Run a coroutine on a loop of its own, in another thread: safe from sync fixtures of pytest-asyncio."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_dsn(url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database on the test server; its SQLAlchemy URL. Dropped (even if still in use) after."""
    admin = server_url()
    name = f"t_{uuid.uuid4().hex[:16]}"
    _run(_admin(admin, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        _run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
