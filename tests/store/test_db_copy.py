"""``janus-bot db copy-to``: a whole deployment copied into an empty database (SQLite -> PostgreSQL, and
SQLite -> SQLite where no server runs) with every row, the same ids and types, and a count check."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.cli import main as cli_main
from bot.store import ContextBudget, ConversationKey, ConversationScope, JobKind, JobStatus, Store
from bot.store.database import create_engine
from bot.store.migrate import downgrade_database
from bot.store.models import Base
from tests.store.conftest import word_count


async def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, read through the models' types, in primary-key order."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                table.name: [
                    dict(row)
                    for row in (
                        await conn.execute(select(table).order_by(*table.primary_key.columns))
                    ).mappings()
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        await engine.dispose()


async def fill(url: str, make_png) -> None:
    """A small but complete deployment: shared and private chats with replies and shared images, jobs in
    every state with JSON params, settings, the audit log and usage counters."""
    async with await Store.open(url, count_tokens=word_count) as store:
        for user in (1, 2):
            key = ConversationKey.for_scope(ConversationScope.USER, guild_id=10, channel_id=100, user_id=user)
            conv = await store.resolve_conversation(key)
            for n in range(3):
                await store.append_exchange(
                    conv.id, f"q{n} of {user}", f"a{n} «ünïcode» 🎨", author_id=user,
                    images=[make_png(n), make_png(99)], message_ids=[user * 1000 + n],
                )  # fmt: skip
        job = await store.create_job(
            JobKind.IMAGINE, user_id=1, guild_id=10, channel_id=100, prompt="a cat",
            params={"count": 2, "guidance": 5.0, "nested": {"a": [1, 2]}}, seed=2**62,
        )  # fmt: skip
        await store.mark_job_running(job.id)
        await store.finish_job(job.id, JobStatus.DONE, timings={"total_s": 1.5}, message_ids=[77, 78])
        await store.create_job(JobKind.DESCRIBE, user_id=2, guild_id=None, channel_id=None, prompt="?")
        await store.update_guild_settings(10, {"nsfw": "block", "scope": "shared"}, actor_id=1)
        await store.update_channel_settings(100, {"default_count": 2}, guild_id=10, actor_id=1)
        await store.reserve_use(1, "imagine", 2, cooldown_s=10, daily_cap=5, now=datetime.now(UTC))


async def test_copy_keeps_every_row_and_the_target_goes_on(
    tmp_path: Path, db_url: str, make_png, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await fill(source, make_png)
    before = await dump(source)

    assert await asyncio.to_thread(cli_main, ["db", "--url", source, "copy-to", db_url]) == 0
    out = capsys.readouterr().out
    total = sum(len(rows) for rows in before.values())
    assert f"count check: ok, {total} rows in {len(before)} tables" in out
    assert re.search(r"^  turns +12 rows$", out, re.MULTILINE)

    assert await dump(db_url) == before  # every column of every row, same ids, same types
    assert await dump(source) == before  # the source is only read
    async with await Store.open(db_url, count_tokens=word_count) as copy:
        key = ConversationKey.for_scope(ConversationScope.USER, guild_id=10, channel_id=100, user_id=2)
        conv = await copy.resolve_conversation(key)
        ctx = await copy.build_context(conv.id, ContextBudget(10_000))
        assert [t.text for t in ctx.turns][-2:] == ["q2 of 2", "a2 «ünïcode» 🎨"]
        # New rows get fresh ids past the copied ones (PostgreSQL's sequences were moved on).
        question, _ = await copy.append_exchange(conv.id, "after the move", "still here", author_id=2)
        assert question.id > max(row["id"] for row in before["turns"])
        assert (await copy.conversation_for_message(2002)) == conv  # replies to old messages still resolve


async def test_copy_refuses_a_target_with_rows_and_changes_nothing(
    tmp_path: Path, db_url: str, make_png, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await fill(source, make_png)
    async with await Store.open(db_url) as target:
        await target.record_audit(actor_id=5, action="already.here")
    before = await dump(db_url)
    assert await asyncio.to_thread(cli_main, ["db", "--url", source, "copy-to", db_url]) == 2
    err = capsys.readouterr().err
    assert "already holds rows in audit_log" in err and len(err.strip().splitlines()) == 1
    assert await dump(db_url) == before


async def test_copy_refuses_an_old_source_the_same_database_and_a_dead_server(
    tmp_path: Path, make_png, capsys: pytest.CaptureFixture[str]
) -> None:
    source = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await fill(source, make_png)
    target = f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"

    assert await asyncio.to_thread(cli_main, ["db", "--url", source, "copy-to", source]) == 2
    assert "same database" in capsys.readouterr().err

    dead = "postgresql+asyncpg://janus@127.0.0.1:9/none"  # port 9 (discard): nothing listens
    assert await asyncio.to_thread(cli_main, ["db", "--url", source, "copy-to", dead]) == 2
    err = capsys.readouterr().err
    assert "copy failed" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    await downgrade_database(source, "0001")
    assert await asyncio.to_thread(cli_main, ["db", "--url", source, "copy-to", target]) == 2
    assert "run janus-bot db upgrade on it first" in capsys.readouterr().err
