"""Durability on a real SQLite file: kill -9 of a writing process, and 100 concurrent writers."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from bot.store import ContextBudget, ConversationKey, ConversationScope, Store
from bot.store.migrate import upgrade_database
from bot.store.models import Conversation, ConversationTurn, Image, TurnImage, TurnMessage

WRITER = Path(__file__).parent / "durability_writer.py"


def _load_writer_module():
    spec = importlib.util.spec_from_file_location("durability_writer", WRITER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


expected_turn = _load_writer_module().expected_turn


def run_writer_until_killed(url: str, first: int, commits: int) -> list[int]:
    """Start a writer, let it commit ``commits`` turns, SIGKILL it at a random moment after; return the
    turn numbers it reported committed."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    committed: list[int] = []
    try:
        assert proc.stdout is not None
        while len(committed) < commits:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            committed.append(int(line))
        # Land the kill somewhere inside the next transactions, not just between them.
        time.sleep(random.uniform(0.0, 0.02))
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    committed += [int(x) for x in out.split()]  # lines printed before the kill landed
    assert proc.returncode == -signal.SIGKILL
    return committed


async def test_kill_9_never_leaves_half_a_turn_and_keeps_every_commit(sqlite_url: str) -> None:
    db_url = sqlite_url
    await upgrade_database(db_url)
    committed: list[int] = []
    for _ in range(3):
        first = max(committed, default=-1) + 1
        # The writer might have committed one more turn than it managed to print; skip past it.
        committed += await asyncio.to_thread(run_writer_until_killed, db_url, first + 1, 25)

    async with await Store.open(db_url) as store, store.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA integrity_check")).scalar() == "ok"
        assert (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all() == []
        turns = (await conn.execute(select(ConversationTurn.id, ConversationTurn.text))).all()
        present = {int(text.split()[1]): turn_id for turn_id, text in turns}
        assert set(committed) <= set(present), "a committed turn was lost"
        assert len(present) <= len(committed) + 3  # at most one unreported turn per kill
        for number, turn_id in present.items():  # committed or in flight: every turn is whole
            _, images, messages = expected_turn(number)
            hashes = (
                await conn.scalars(
                    select(TurnImage.image_sha256)
                    .where(TurnImage.turn_id == turn_id)
                    .order_by(TurnImage.position)
                )
            ).all()
            assert list(hashes) == [hashlib.sha256(png).hexdigest() for png in images]
            for sha in hashes:
                data = await conn.scalar(select(Image.data).where(Image.sha256 == sha))
                assert data is not None and hashlib.sha256(data).hexdigest() == sha
            stored = (
                await conn.scalars(select(TurnMessage.message_id).where(TurnMessage.turn_id == turn_id))
            ).all()
            assert sorted(stored) == messages


async def test_100_concurrent_writers_lose_nothing(db_url: str, make_png) -> None:
    """100 users at once through two independent stores (two engines, as two processes would be):
    writers contend on SQLite's lock itself, not only on one store's in-process queue."""
    first = await Store.open(db_url)
    second = await Store.open(db_url)
    budget = ContextBudget(total_tokens=4096, tokens_per_image=18)

    async def one_user(user: int) -> None:
        store = first if user % 2 else second
        key = ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=2, user_id=user)
        conv = await store.resolve_conversation(key)
        question = await store.append_turn(
            conv.id,
            "user",
            f"question of {user}",
            author_id=user,
            images=[make_png(user % 7)],
            message_ids=[user],
        )
        ctx = await store.build_context(conv.id, budget, up_to_turn_id=question.id)
        assert [t.text for t in ctx.turns] == [f"question of {user}"]
        await store.append_turn(
            conv.id,
            "assistant",
            f"answer to {user}",
            reply_to_turn_id=question.id,
            message_ids=[10_000 + user],
        )

    try:
        results = await asyncio.gather(*(one_user(u) for u in range(100)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors[:3]
        async with first.engine.connect() as conn:
            counts = [
                await conn.scalar(select(func.count()).select_from(m))
                for m in (Conversation, ConversationTurn, TurnMessage, Image)
            ]
        assert counts == [100, 200, 200, 7]
        for user in (0, 57, 99):
            conv = await first.conversation_for_message(user)
            texts = [t.text for t in await first.list_turns(conv.id)]
            assert texts == [f"question of {user}", f"answer to {user}"]
    finally:
        await first.close()
        await second.close()
