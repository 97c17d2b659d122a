"""Fixtures of the store tests: a real SQLite file migrated by Alembic, and real PNG images."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from bot.store import Store


def word_count(text: str) -> int:
    """A deterministic token counter for budget tests: one token per whitespace-separated word."""
    return len(text.split())


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


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
