"""What goes wrong in production: a token that expires before a long job ends, a worker killed mid-job,
a full bot restart (buttons on old messages keep working; interrupted jobs are closed)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.bot.bot_world import BotWorld, eventually, finished_job, is_result

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _cancel_id(msg) -> str | None:
    ids = [c for c in (msg.custom_ids() if msg else []) if c.startswith("janus:cancel:")]
    return ids[0].split(":")[2] if ids else None


async def _running(world: BotWorld, itx) -> str:
    """Wait until the job shows a progress bar; return its job id."""
    msg = await world.emu.wait_for(
        lambda: (
            itx.original
            if itx.original and "%" in itx.original.content and _cancel_id(itx.original)
            else None
        ),
        timeout=30,
    )
    return _cancel_id(msg)


async def test_result_goes_out_as_a_channel_message_after_the_token_expires(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("late-lena")
    itx = await world.run(user, world.general, "imagine", prompt="a slow sunrise @everyone", count=4)
    job_id = await _running(world, itx)
    emu.advance_time(16 * 60)  # the interaction token is dead from now on
    result = await emu.wait_for_message(
        world.general, lambda m: m.interaction is None and is_result(m), timeout=30
    )
    assert job_id in result.custom_ids()[0]
    assert len(result.attachments) == 4
    assert result.pings.users == {user.id} or list(result.pings.users) == [user.id]  # only the requester
    assert not result.pings.everyone and not result.pings.roles
    dead = [r for r in emu.rejections if r.status == 401]
    assert len(dead) == 1, dead  # one failed edit, then never the dead token again
    job = await finished_job(world.bot, job_id)
    assert job.status == "done" and result.id in job.message_ids
    # No stray progress message is left behind in the channel: progress went on in the original
    # response (edited as the bot's own message, not with the dead token), which now points below.
    leftovers = [m for m in emu.bot_messages(world.general) if _cancel_id(m) == job_id and not m.deleted]
    assert leftovers == []
    assert [m.id for m in emu.bot_messages(world.general) if m.interaction is None] == [result.id]
    assert "result is in a new message below" in itx.original.content
    assert itx.original.custom_ids() == [] and not itx.original.attachments


async def test_worker_killed_mid_job_fails_that_job_clearly_and_the_next_one_works(world: BotWorld) -> None:
    bot = world.bot
    user = world.user("crash-carl")
    itx = await world.run(user, world.general, "imagine", prompt="a fragile vase", count=2)
    job_id = await _running(world, itx)
    (worker,) = (await bot.engine.status()).workers
    os.kill(worker.pid, signal.SIGKILL)
    final = await world.final(itx, lambda m: "Sorry, this failed" in m.content, timeout=30)
    assert final.attachments == [] and _cancel_id(final) is None
    job = await finished_job(bot, job_id)
    assert job.status == "failed" and job.error
    # The engine restarts the worker; the next request succeeds.
    await eventually(lambda: _idle(bot), timeout=120)
    again = await world.run(user, world.general, "imagine", prompt="a sturdy vase")
    await world.final(again, is_result, timeout=60)


async def _idle(bot) -> bool:
    return all(w.state == "idle" for w in (await bot.engine.status()).workers)


async def test_buttons_work_after_a_full_restart_and_interrupted_jobs_are_closed(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("restart-rita")
    done = await world.run(user, world.general, "imagine", prompt="an old photograph", seed=5)
    old = await world.final(done, is_result)
    old_job = old.custom_ids()[0].split(":")[2]
    await finished_job(world.bot, old_job)
    running = await world.run(user, world.general, "imagine", prompt="an unfinished painting", count=4)
    interrupted = await _running(world, running)

    await world.stop_bot()  # engine workers stop, the database closes, the gateway disconnects
    await world.start_bot()  # a new process would do exactly this: new engine, store, views

    job = await world.bot.store.get_job(interrupted)
    assert job.status == "failed" and "restarted" in job.error
    assert running.original.id in job.message_ids  # recorded when the progress message first showed
    # The stale progress message is told what happened: no frozen bar, no dead Cancel button, and the
    # buttons to run it again.
    told = await emu.wait_for(
        lambda: running.original if "interrupted" in running.original.content else None, timeout=15
    )
    assert "%" not in told.content and "an unfinished painting" in told.content
    assert set(told.custom_ids()) == {f"janus:reroll:{interrupted}", f"janus:edit:{interrupted}"}
    assert not told.attachments  # the last preview is gone with the bar
    press = await emu.press_button(user, told, f"janus:reroll:{interrupted}")
    await press.wait_response()
    again = await world.final(press, is_result, timeout=60)
    again_job = await world.bot.store.get_job(again.custom_ids()[0].split(":")[2])
    assert again_job.prompt == "an unfinished painting" and again_job.params["count"] == 4

    press = await emu.press_button(user, old, f"janus:reroll:{old_job}")
    await press.wait_response()
    rerolled = await world.final(press, is_result, timeout=60)
    new_job = await world.bot.store.get_job(rerolled.custom_ids()[0].split(":")[2])
    assert new_job.prompt == "an old photograph" and new_job.params["parent_job"] == old_job
    assert emu.failures == []


async def test_a_job_whose_message_id_was_never_written_is_still_told_after_a_restart(
    world: BotWorld,
) -> None:
    """The soak's finding: a bot killed between showing a job's first message and writing its id left
    "Queued..." there for good. The job's row names its interaction (or the @mention it answers) from
    the start, so the restart finds the message in the channel instead."""
    emu = world.emu
    user = world.user("restart-nora")
    store = world.bot.store
    real_write = store.add_job_messages

    async def write_lost(job_id: str, message_ids) -> object:  # the process died before this write
        return await store.get_job(job_id)

    store.add_job_messages = write_lost  # type: ignore[method-assign]
    try:
        drawings = [
            await world.run(user, world.general, "imagine", prompt=f"an unrecorded sketch {i}", count=2)
            for i in range(2)
        ]
        await _running(world, drawings[0])
        # Two running image jobs are this user's limit: the questions wait in the queue behind them.
        asked = await world.run(user, world.general, "chat", message="a question that never got its id")
        mention = await emu.send_message(user, world.general, "and one by mention", mentions_bot=True)
        reply = await emu.wait_for(
            lambda: next((m for m in emu.bot_messages(world.general) if m.reference_id == mention.id), None),
            timeout=15,
        )
        await emu.wait_for(lambda: asked.original if "Queued" in asked.original.content else None)
        jobs = await store.list_jobs(user_id=user.id)
        assert len(jobs) == 4, jobs
        assert all(j.message_ids == () and not j.status.is_terminal for j in jobs), [
            (j.kind, j.status, j.message_ids) for j in jobs
        ]
    finally:
        store.add_job_messages = real_write  # type: ignore[method-assign]
    await world.stop_bot()
    await world.start_bot()

    for message in (*(d.original for d in drawings), asked.original, reply):
        told = await emu.wait_for(
            lambda m=message: m if "interrupted" in m.content else None, timeout=15, message=f"{message.id}"
        )
        assert "Queued" not in told.content and "%" not in told.content
    assert {j.status for j in await world.bot.store.list_jobs(user_id=user.id)} == {"failed"}
