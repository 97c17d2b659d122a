"""Understanding and memory: /describe, the context menu, the Describe button, /chat, @mentions, replies,
several users at once with isolated memories, /history (and export), /forget."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.policy import Requester
from bot.store import ServerSettings
from discord_emulator import Upload
from janus_engine.protocol import GenerateRequest, UnderstandRequest
from tests.bot.bot_world import BotWorld, eventually, is_result, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _understand_for(world: BotWorld, user_id: int) -> list[UnderstandRequest]:
    """Understanding requests the engine accepted for ``user`` (the turns the model was given)."""
    out = []
    for req in world.submitted:
        if isinstance(req, UnderstandRequest) and req.turns[-1].text.startswith(f"[{user_id}]"):
            out.append(req)
    return out


def _final_text(msg) -> bool:
    return bool(msg.content) and "Queued" not in msg.content and "▌" not in msg.content


async def _answered(world: BotWorld, itx) -> str:
    msg = await world.final(
        itx, lambda m: bool(m.content) and "Queued" not in m.content and "▌" not in m.content
    )
    return msg.content


async def test_describe_upload_answers_and_records_job_and_turns(world: BotWorld) -> None:
    bot = world.bot
    alice = world.user("chat-alice")
    itx = await world.run(alice, world.general, "describe", image=Upload("cat.png", png_bytes(), "image/png"))
    assert itx.deferred and not itx.ephemeral
    answer = await _answered(world, itx)
    # The answer streamed into the message: an earlier version held a prefix of it with a cursor.
    partial = [r.content for r in itx.original.revisions if r.content.endswith(" ▌")]
    assert partial and all(answer.startswith(p.removesuffix(" ▌").strip()) for p in partial), partial

    async def finished():
        jobs = await bot.store.list_jobs(user_id=alice.id)
        return jobs if jobs and jobs[0].status.is_terminal else None

    jobs = await eventually(finished)
    assert len(jobs) == 1 and jobs[0].kind == "describe" and jobs[0].status == "done"
    assert jobs[0].prompt == bot.config.understanding.default_question
    # The exchange joined alice's conversation in this channel: her turn with the image, then the answer.
    who = Requester(user_id=alice.id, guild_id=world.guild.id, channel_id=world.general.id)
    conv = await bot.store.resolve_conversation(bot.access.conversation_key(who, ServerSettings()))
    turns = await eventually(lambda: bot.store.list_turns(conv.id))
    assert [t.role for t in turns] == ["user", "assistant"]
    assert len(turns[0].image_hashes) == 1 and turns[1].text == answer
    assert itx.original.id in turns[1].message_ids


async def test_chat_memory_is_per_user_and_follow_ups_see_earlier_turns(world: BotWorld) -> None:
    """Two users chat in the same channel at the same time; each follow-up carries only its own history."""
    ann, ben = world.user("mem-ann"), world.user("mem-ben")

    async def conversation(user) -> None:
        first = await world.run(
            user, world.general, "chat", message=f"[{user.id}] my secret word is {user.name}"
        )
        await _answered(world, first)
        second = await world.run(user, world.general, "chat", message=f"[{user.id}] what is my secret word?")
        await _answered(world, second)

    await asyncio.gather(conversation(ann), conversation(ben))
    for me, other in ((ann, ben), (ben, ann)):
        first, second = _understand_for(world, me.id)
        assert [t.role for t in first.turns] == ["user"]
        assert [t.role for t in second.turns] == ["user", "assistant", "user"]
        assert second.turns[0].text == f"[{me.id}] my secret word is {me.name}"
        assert all(other.name not in t.text for t in second.turns)


async def test_mention_then_reply_continues_the_conversation_and_others_replies_do_not_join_it(
    world: BotWorld,
) -> None:
    emu = world.emu
    cara, dan = world.user("mention-cara"), world.user("mention-dan")
    await emu.send_message(cara, world.general, f"[{cara.id}] remember the number 42", mentions_bot=True)
    answer = await emu.wait_for_message(
        world.general, lambda m: m.reference_id is not None, author=emu.bot_user
    )
    assert not answer.pings.users
    await eventually(lambda: world.bot.store.conversation_for_message(answer.id))  # the exchange is stored
    await emu.send_message(
        cara, world.general, f"[{cara.id}] which number?", reply_to=answer, mentions_bot=True
    )
    await emu.wait_for(lambda: len(_understand_for(world, cara.id)) == 2)
    follow_up = _understand_for(world, cara.id)[1]
    assert [t.role for t in follow_up.turns] == ["user", "assistant", "user"]
    assert follow_up.turns[0].text == f"[{cara.id}] remember the number 42"
    # Dan replies to cara's answer: he gets his own conversation, not hers.
    await emu.send_message(dan, world.general, f"[{dan.id}] and me?", reply_to=answer, mentions_bot=True)
    await emu.wait_for(lambda: _understand_for(world, dan.id))
    (dans,) = _understand_for(world, dan.id)
    assert len(dans.turns) == 1


async def test_describe_image_context_menu_and_describe_button(world: BotWorld) -> None:
    emu, bot = world.emu, world.bot
    eve = world.user("menu-eve")
    posted = await emu.send_message(
        eve, world.general, "look", attachments=[Upload("dog.png", png_bytes((0, 90, 0)), "image/png")]
    )
    itx = await emu.context_menu(eve, posted, "Describe image")
    await itx.wait_response()
    await _answered(world, itx)
    req = [r for r in world.submitted if isinstance(r, UnderstandRequest)][-1]
    assert len(req.turns[-1].images) == 1

    # A Describe button under a generated image asks about that image.
    gen = await world.run(eve, world.general, "imagine", prompt="a small house")
    msg = await world.final(gen, is_result)
    job_id = msg.custom_ids()[0].split(":")[2]
    press = await emu.press_button(eve, msg, f"janus:describe:{job_id}:0")
    await press.wait_response()
    assert press.deferred
    await _answered(world, press)
    req = [r for r in world.submitted if isinstance(r, UnderstandRequest)][-1]
    assert len(req.turns[-1].images) == 1
    jobs = await bot.store.list_jobs(user_id=eve.id)
    assert [j.kind for j in jobs[:2]] == ["describe", "imagine"]
    assert any(isinstance(r, GenerateRequest) and r.prompt == "a small house" for r in world.submitted)


async def test_history_export_and_forget(world: BotWorld) -> None:
    emu = world.emu
    fay = world.user("hist-fay")
    chat = await world.run(fay, world.general, "chat", message=f"[{fay.id}] hello there")
    await _answered(world, chat)

    hist = await world.run(fay, world.general, "history")
    assert hist.ephemeral and "hello there" in hist.original.content

    export = await world.run(fay, world.general, "history", export=True)
    assert export.ephemeral
    data = json.loads(export.original.attachments[0].data)
    assert "hello there" in json.dumps(data)

    forget = await world.run(fay, world.general, "forget")
    assert forget.ephemeral and "2 messages" in forget.original.content
    hist = await world.run(fay, world.general, "history")
    assert "No conversation" in hist.original.content
    # After forgetting, a new chat starts without the old turns.
    again = await world.run(fay, world.general, "chat", message=f"[{fay.id}] hi again")
    await _answered(world, again)
    assert len(_understand_for(world, fay.id)[-1].turns) == 1
    assert emu.failures == []


async def test_direct_messages_need_no_mention_and_have_their_own_memory(world: BotWorld) -> None:
    emu = world.emu
    gus = world.user("dm-gus")
    dm = emu.dm_channel(gus)
    await emu.send_message(gus, dm, f"[{gus.id}] hello in private")
    reply = await emu.wait_for_message(dm, lambda m: _final_text(m), author=emu.bot_user, timeout=30)
    await eventually(lambda: world.bot.store.conversation_for_message(reply.id))
    conv = await world.bot.store.conversation_for_message(reply.id)
    assert conv.key.scope == "dm" and conv.key.user_id == gus.id and conv.key.guild_id is None
    await emu.send_message(gus, dm, f"[{gus.id}] still there?")
    await emu.wait_for(lambda: len(_understand_for(world, gus.id)) == 2)
    assert len(_understand_for(world, gus.id)[1].turns) == 3


async def test_chat_with_an_image_sends_it_to_the_model(world: BotWorld) -> None:
    hal = world.user("img-hal")
    itx = await world.run(
        hal,
        world.general,
        "chat",
        message=f"[{hal.id}] what is this?",
        image=Upload("x.png", png_bytes(), "image/png"),
    )
    await _answered(world, itx)
    (req,) = _understand_for(world, hal.id)
    assert len(req.turns[-1].images) == 1 and req.turns[-1].images[0].startswith(b"\x89PNG")
