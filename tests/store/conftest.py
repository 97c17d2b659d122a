"""Fixtures of the store tests: a real database migrated by Alembic (a SQLite file, and a PostgreSQL database
on the server scripts/test.sh starts: every test taking ``db_url`` or ``store`` runs on both), and real PNG
images. ``sqlite_url`` is for the tests about SQLite itself (files, WAL, backups, kill -9)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from bot.store import Store
from tests.postgres_support import fresh_database


def word_count(text: str) -> int:
    """A deterministic token counter for budget tests: one token per whitespace-separated word."""
    return len(text.split())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind the store supports (PostgreSQL skipped when no server runs)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with await Store.open(db_url, count_tokens=word_count) as opened:
        yield opened


@pytest.fixture
def make_png() -> Callable[[int], bytes]:
    """Distinct small PNGs: make_png(n) differs from make_png(m) for n != m, equal for n == m."""

    def make(n: int) -> bytes:
        image = Image.new("RGB", (8, 8), ((n * 37) % 256, (n * 11) % 256, n // 256 % 256))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    return make
