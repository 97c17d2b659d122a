"""The bot end to end on PostgreSQL (the emulator, the real client, real workers, the tiny model): chat
memory, an image upload, /imagine with its job record, and limits that outlive the bot process."""

from __future__ import annotations

import pytest

from bot.store import JobStatus
from discord_emulator import Upload
from janus_engine.protocol import UnderstandRequest
from tests.bot.bot_world import BotWorld, finished_jobs, is_result, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

DATABASE = "postgresql"
CONFIG_OVERRIDES = {"limits": {"imagine_cooldown_s": 600.0, "images_per_user_per_day": 3}}


def _answered(msg) -> bool:
    return bool(msg.content) and "Queued" not in msg.content and "▌" not in msg.content


async def _refusal(world: BotWorld, itx) -> str:
    """The one ephemeral message the interaction ended in."""
    msg = await world.emu.wait_for(
        lambda: next((m for m in [itx.original, *itx.followups] if m and m.ephemeral and m.content), None)
    )
    return str(msg.content)


async def test_chat_remembers_on_postgresql(world: BotWorld) -> None:
    assert world.bot is not None and world.bot.store.engine.dialect.name == "postgresql"
    pam = world.user("pg-pam")
    first = await world.run(
        pam,
        world.general,
        "chat",
        message=f"[{pam.id}] look at this",
        image=Upload("a.png", png_bytes(), "image/png"),
    )
    await world.final(first, _answered)
    second = await world.run(pam, world.general, "chat", message=f"[{pam.id}] and what did I show you?")
    await world.final(second, _answered)
    asked = [
        r for r in world.submitted if isinstance(r, UnderstandRequest) and str(pam.id) in r.turns[-1].text
    ]
    assert [t.role for t in asked[-1].turns] == ["user", "assistant", "user"]
    assert asked[-1].turns[0].images and asked[-1].turns[0].images[0].startswith(b"\x89PNG")  # from the store


async def test_imagine_and_limits_that_outlive_a_restart(world: BotWorld) -> None:
    quinn = world.user("pg-quinn")
    itx = await world.run(quinn, world.general, "imagine", prompt="a lighthouse", count=2)
    await world.final(itx, is_result)
    (job,) = await finished_jobs(world.bot, quinn.id, 1)
    assert job.status == JobStatus.DONE and job.message_ids and job.params["count"] == 2

    await world.stop_bot()  # a new process has no memory of the use: the database has
    await world.start_bot()
    again = await world.run(quinn, world.general, "imagine", prompt="a lighthouse")
    assert "Slow down" in await _refusal(world, again)
    await world.bot.limiter.reset_cooldown(quinn.id, "imagine")
    over = await world.run(quinn, world.general, "imagine", prompt="a lighthouse", count=2)
    assert "today's limit of 3 images (1 left" in await _refusal(world, over)
    assert len(await world.bot.store.list_jobs(user_id=quinn.id)) == 1  # refusals record no job
