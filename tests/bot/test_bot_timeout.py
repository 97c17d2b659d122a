"""A job that runs past engine.job_timeout_s ends with a clear message and a closed record, and the bot
keeps serving (the engine recycles the stuck worker)."""

from __future__ import annotations

import pytest

from tests.bot.bot_world import BotWorld, eventually, finished_job, is_result

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Generation takes ~2 s here (16 steps of 0.12 s); understanding with 4 new tokens well under 1 s.
CONFIG_OVERRIDES = {"engine": {"job_timeout_s": 1.0}, "understanding": {"max_new_tokens": 4}}


async def test_timed_out_job_gets_a_clear_message(world: BotWorld) -> None:
    user = world.user("timeout-tom")
    itx = await world.run(user, world.general, "imagine", prompt="an endless staircase", count=2)
    final = await world.final(itx, lambda m: "Sorry, this failed" in m.content, timeout=30)
    assert not final.attachments and final.custom_ids() == []
    job_id = (await world.bot.store.list_jobs(user_id=user.id))[0].id
    job = await finished_job(world.bot, job_id)
    assert job.status == "failed" and job.error and job.error in final.content
    assert not is_result(final)
    # The bot still answers: a short understanding job fits the limit once the worker is back.
    await eventually(lambda: _idle(world), timeout=120)
    chat = await world.run(user, world.general, "chat", message="still there?")
    answer = await world.final(chat, lambda m: "Queued" not in m.content and "▌" not in m.content, timeout=60)
    assert "failed" not in answer.content
    assert world.emu.failures == []


async def _idle(world: BotWorld) -> bool:
    return all(w.state == "idle" for w in (await world.bot.engine.status()).workers)
