"""Details an operator would hit (issue 10, Discord side), end to end: the real bot, the emulator and
real engine workers on the tiny model.

- an Edit-prompt modal opened before a restart (and long after its opener's token died) still starts
  its job when submitted, with the same checks as any prompt;
- a result posted after the interaction token expired names its requester once, not twice;
- a reply to the bot that arrives empty (no message-content intent, reply ping off) gets a hint, once;
- an upload Discord gave no content type is judged by its bytes (after the size check);
- a 1x1 or a 4000x3 image is described; a corrupt or pixel-less one is refused clearly;
- control characters the model emits are neither posted nor stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from bot.cogs.chat import BARE_REPLY_HINT
from bot.policy import Requester
from bot.store import ServerSettings
from discord_emulator import Upload
from janus_engine.protocol import UnderstandRequest
from janus_engine.text import strip_control
from tests.bot.bot_world import BotWorld, eventually, finished_job, is_result, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0/C1 controls but \n and \t


def _answered(msg: Any) -> bool:
    return bool(msg.content) and "Queued" not in msg.content and "▌" not in msg.content


def _job_of(msg: Any, action: str = "reroll") -> str:
    return next(c for c in msg.custom_ids() if c.startswith(f"janus:{action}:")).split(":")[2]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (here: no pixels at all)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# ---- 2. one mention after the token expired ------------------------------------------------------------


async def test_a_result_after_token_expiry_mentions_the_requester_once(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("once-olga")
    itx = await world.run(user, world.general, "imagine", prompt="a long exposure", count=2)
    await emu.wait_for(lambda: itx.original and "%" in itx.original.content, timeout=30)
    emu.advance_time(16 * 60)  # the token is dead: the result goes out as a new channel message
    result = await emu.wait_for_message(
        world.general,
        lambda m: m.interaction is None and is_result(m) and "long exposure" in m.content,
        timeout=30,
    )
    mention = f"<@{user.id}>"
    assert result.content.count(mention) == 1, result.content
    assert result.content.startswith(f"{mention}: `a long exposure`")
    assert result.pings.users == {user.id}
    # /chat's answer carries no mention of its own: after expiry it gets exactly one too.
    await world.run(user, world.general, "chat", message="say something")
    emu.advance_time(16 * 60)  # at once after the defer: the answer (a second or so away) outlives it
    answer = await emu.wait_for_message(
        world.general,
        lambda m: m.interaction is None and m.content.startswith(mention) and not is_result(m),
        timeout=30,
    )
    assert answer.content.count(mention) == 1, answer.content


# ---- 3. a bare reply gets a hint, once -----------------------------------------------------------------


async def test_a_reply_without_its_ping_gets_a_hint_once_and_a_pinged_reply_an_answer(
    world: BotWorld,
) -> None:
    emu = world.emu
    assert not world.bot.intents.message_content  # the default: replies must keep their @mention
    user = world.user("reply-rhea")
    await emu.send_message(user, world.general, "hello there", mentions_bot=True)
    answer = await emu.wait_for_message(
        world.general, lambda m: m.reference_id is not None and _answered(m), author=emu.bot_user
    )
    await eventually(lambda: world.bot.store.conversation_for_message(answer.id))
    before = len(world.submitted)

    bare = await emu.send_message(user, world.general, "and then?", reply_to=answer, ping_author=False)
    hint = await emu.wait_for_message(
        world.general, lambda m: m.reference_id == bare.id, author=emu.bot_user, timeout=15
    )
    assert hint.content == BARE_REPLY_HINT and not hint.pings
    again = await emu.send_message(user, world.general, "hello?", reply_to=answer, ping_author=False)
    pinged = await emu.send_message(user, world.general, "and now?", reply_to=answer)
    reply = await emu.wait_for_message(
        world.general, lambda m: m.reference_id == pinged.id and _answered(m), author=emu.bot_user, timeout=30
    )
    assert reply.content != BARE_REPLY_HINT
    assert [m for m in emu.bot_messages(world.general) if m.reference_id == again.id] == []  # told once
    assert len(world.submitted) == before + 1  # only the reply the bot could read went to the model
    # Another user is told too (once per user, not once for everybody).
    other = world.user("reply-ravi")
    theirs = await emu.send_message(other, world.general, "me too", reply_to=answer, ping_author=False)
    await emu.wait_for_message(
        world.general, lambda m: m.reference_id == theirs.id and m.content == BARE_REPLY_HINT, timeout=15
    )


# ---- 4. an upload without a content type -----------------------------------------------------------------


async def test_an_upload_without_content_type_is_judged_by_its_bytes(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("sniff-sam")
    image = Upload("snapshot.janusimg", png_bytes(), None)  # an extension nobody knows: no content_type
    itx = await world.run(user, world.general, "describe", image=image)
    sent = next(iter(itx.payload["data"]["resolved"]["attachments"].values()))
    assert "content_type" not in sent  # as Discord sends it
    assert itx.deferred and not itx.ephemeral, itx.original and itx.original.content
    await world.final(itx, _answered, timeout=30)

    text = await world.run(
        user, world.general, "describe", image=Upload("notes.janusimg", b"just words", None)
    )
    assert text.ephemeral and "`notes.janusimg` is not a supported image" in text.original.content
    assert "PNG, JPEG, WebP, GIF or BMP" in text.original.content

    limit = world.bot.config.understanding.max_upload_bytes
    big = await world.run(
        user, world.general, "describe", image=Upload("big.janusimg", bytes(limit + 1), None)
    )
    assert big.ephemeral and "too large" in big.original.content
    big_id = int(next(iter(big.payload["data"]["resolved"]["attachments"])))
    assert big_id not in emu.cdn_downloads  # the size was checked before anything was downloaded


# ---- 5. tiny and thin images -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (4000, 3)])
async def test_tiny_and_thin_images_are_described(world: BotWorld, size: tuple[int, int]) -> None:
    user = world.user(f"small-{size[0]}x{size[1]}")
    image = Upload(f"img-{size[0]}x{size[1]}.png", png_bytes(size=size), "image/png")
    itx = await world.run(user, world.general, "describe", image=image)
    assert itx.deferred and not itx.ephemeral, itx.original and itx.original.content
    answer = await world.final(itx, _answered, timeout=30)
    assert "Sorry" not in answer.content
    (job,) = await world.bot.store.list_jobs(user_id=user.id)
    job = await finished_job(world.bot, job.id)
    assert job.status == "done"
    (request,) = [r for r in world.submitted if isinstance(r, UnderstandRequest) and r.request_id == job.id]
    sent = Image.open(io.BytesIO(request.turns[-1].images[0]))
    assert sent.width == sent.height  # padded to a square the processor takes as it is


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("empty.png", _png_header_only(0, 0), "corrupt or has no pixels"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(40), "it is corrupt"),
    ],
    ids=["no-pixels", "corrupt"],
)
async def test_corrupt_or_pixelless_images_are_refused_clearly(
    world: BotWorld, name: str, data: bytes, says: str
) -> None:
    user = world.user(f"bad-{name}")
    itx = await world.run(user, world.general, "describe", image=Upload(name, data, "image/png"))
    assert itx.ephemeral, itx.original.content
    assert f"`{name}`" in itx.original.content and says in itx.original.content
    assert await world.bot.store.list_jobs(user_id=user.id) == []


# ---- 6. control characters from the model --------------------------------------------------------------


async def test_control_characters_from_the_model_are_neither_posted_nor_stored(world: BotWorld) -> None:
    bot = world.bot
    user = world.user("ctrl-cleo")
    # The tiny random model answers "hi" greedily with control bytes (checked below on the real engine).
    itx = await world.run(user, world.general, "chat", message="hi")
    answer = await world.final(itx, _answered, timeout=30)
    request = next(
        r for r in reversed(world.submitted) if isinstance(r, UnderstandRequest) and r.turns[-1].text == "hi"
    )
    probe = await bot.engine.submit(dataclasses.replace(request, request_id="raw-probe"), user_id="probe")
    raw = (await asyncio.wait_for(probe.result(), 60)).text  # the same request, straight from the engine
    assert _CONTROL.search(raw), f"the model no longer emits control characters for this prompt: {raw!r}"
    assert answer.content == strip_control(raw).strip()
    for version in [answer.content, *(r.content for r in answer.revisions)]:
        assert not _CONTROL.search(version), repr(version)
    who = Requester(user_id=user.id, guild_id=world.guild.id, channel_id=world.general.id)
    conv = await bot.store.resolve_conversation(bot.access.conversation_key(who, ServerSettings()))
    turns = await eventually(lambda: bot.store.list_turns(conv.id))
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].text == answer.content and not _CONTROL.search(turns[1].text)


# ---- 1. the Edit-prompt modal across a restart (last: it restarts the module's bot) ------------------------


async def test_an_edit_prompt_modal_opened_before_a_restart_still_starts_its_job(world: BotWorld) -> None:
    emu = world.emu
    owner, other = world.user("modal-mona"), world.user("modal-max")
    itx = await world.run(owner, world.general, "imagine", prompt="a paper boat", seed=3)
    msg = await world.final(itx, is_result, timeout=60)
    job_id = _job_of(msg)
    await finished_job(world.bot, job_id)
    opened = await emu.press_button(owner, msg, f"janus:edit:{job_id}")
    await opened.wait_response()
    blocked = await emu.press_button(other, msg, f"janus:edit:{job_id}")  # anyone may edit, as for Re-roll
    await blocked.wait_response()
    assert blocked.modal is not None
    assert opened.modal is not None and opened.modal["custom_id"] == f"janus:editmodal:{job_id}"

    emu.advance_time(16 * 60)  # the form stays open long after its opener's token died ...
    await world.stop_bot()  # ... and the process that opened it is gone
    await world.start_bot()

    submit = await emu.submit_modal(owner, opened, {"prompt": "a paper boat at night"})
    await submit.wait_response()
    assert not submit.failed and submit.deferred and not submit.ephemeral
    edited = await world.final(submit, is_result, timeout=60)
    new_job = await finished_job(world.bot, _job_of(edited))
    assert new_job.status == "done" and new_job.prompt == "a paper boat at night"
    assert new_job.user_id == owner.id and new_job.params["parent_job"] == job_id

    # The same checks as any prompt: blocked patterns, and the job is the submitter's own.
    refused = await emu.submit_modal(other, blocked, {"prompt": "a forbidden boat"})
    await refused.wait_response()
    assert refused.ephemeral and not refused.failed and "does not accept" in refused.original.content
    assert await world.bot.store.list_jobs(user_id=other.id) == []  # refused before anything was recorded
    reopened = await emu.press_button(other, msg, f"janus:edit:{job_id}")  # a submitted modal closes
    await reopened.wait_response()
    theirs = await emu.submit_modal(other, reopened, {"prompt": "a boat of my own"})
    await theirs.wait_response()
    mine = await world.final(theirs, is_result, timeout=60)
    their_job = await finished_job(world.bot, _job_of(mine))
    assert their_job.user_id == other.id and their_job.prompt == "a boat of my own"
    assert emu.failures == []
