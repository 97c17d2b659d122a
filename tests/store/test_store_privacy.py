"""Privacy: conversations never leak between users unless a channel is shared; forget, retention, export;
images are stored once and leave with the last turn that uses them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.store import ContextBudget, ConversationKey, ConversationScope, Store
from bot.store.models import ConversationTurn, Image, TurnImage
from bot.store.retention import apply_retention, run_retention

GUILD, CHANNEL, THREAD = 100, 200, 300
ALICE, BOB = 1, 2
BIG = ContextBudget(total_tokens=4096, tokens_per_image=18)


async def count(store: Store, model) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(model)))


async def conversation_of(store: Store, user: int, *, channel: int = CHANNEL, parent: int | None = None):
    return await store.open_conversation(
        guild_id=GUILD, channel_id=channel, user_id=user, parent_channel_id=parent
    )


async def context_text(store: Store, conversation_id: int) -> str:
    ctx = await store.build_context(conversation_id, BIG)
    return "\n".join(t.text for t in ctx.turns)


async def test_users_in_one_channel_never_see_each_others_turns(store: Store) -> None:
    alice = await conversation_of(store, ALICE)
    bob = await conversation_of(store, BOB)
    assert alice.id != bob.id
    await store.append_turn(alice.id, "user", "alice secret pineapple", author_id=ALICE)
    await store.append_turn(bob.id, "user", "bob asks about weather", author_id=BOB)
    assert "pineapple" not in await context_text(store, bob.id)
    assert "weather" not in await context_text(store, alice.id)
    assert (await conversation_of(store, ALICE)).id == alice.id  # resolving again finds the same one


async def test_a_shared_thread_mixes_users_and_only_there(store: Store) -> None:
    await store.update_channel_settings(THREAD, {"conversation_scope": "shared"}, guild_id=GUILD)
    alice = await conversation_of(store, ALICE, channel=THREAD, parent=CHANNEL)
    bob = await conversation_of(store, BOB, channel=THREAD, parent=CHANNEL)
    assert alice.id == bob.id and alice.key.scope is ConversationScope.SHARED and alice.key.user_id is None
    await store.append_turn(alice.id, "user", "alice pineapple", author_id=ALICE)
    await store.append_turn(bob.id, "user", "bob weather", author_id=BOB)
    text = await context_text(store, bob.id)
    assert "pineapple" in text and "weather" in text

    # The parent channel itself stays per user.
    alice_channel = await conversation_of(store, ALICE)
    bob_channel = await conversation_of(store, BOB)
    assert alice_channel.id != bob_channel.id
    assert alice_channel.key.scope is ConversationScope.USER


async def test_a_shared_parent_channel_makes_its_threads_shared(store: Store) -> None:
    await store.update_channel_settings(CHANNEL, {"conversation_scope": "shared"}, guild_id=GUILD)
    assert (
        await conversation_of(store, ALICE, channel=THREAD, parent=CHANNEL)
    ).key.scope is ConversationScope.SHARED
    await store.update_channel_settings(THREAD, {"conversation_scope": "user"}, guild_id=GUILD)
    assert (
        await conversation_of(store, ALICE, channel=THREAD, parent=CHANNEL)
    ).key.scope is ConversationScope.USER


async def test_direct_messages_are_per_user(store: Store) -> None:
    assert await store.scope_for_channel(guild_id=None, channel_id=555) is ConversationScope.DM
    key = ConversationKey.for_scope(ConversationScope.DM, guild_id=GUILD, channel_id=555, user_id=ALICE)
    assert key.guild_id is None and key.user_id == ALICE
    dm = await store.open_conversation(guild_id=None, channel_id=555, user_id=ALICE)
    assert dm.key == key
    same_id_other_place = await store.open_conversation(guild_id=GUILD, channel_id=555, user_id=ALICE)
    assert same_id_other_place.id != dm.id


async def test_images_are_stored_once_and_leave_with_their_last_turn(store: Store, make_png) -> None:
    alice = await conversation_of(store, ALICE)
    bob = await conversation_of(store, BOB)
    t1 = await store.append_turn(alice.id, "user", "one", author_id=ALICE, images=[make_png(1), make_png(1)])
    await store.append_turn(bob.id, "user", "same picture", author_id=BOB, images=[make_png(1), make_png(2)])
    assert await count(store, Image) == 2
    assert t1.image_hashes[0] == t1.image_hashes[1]
    assert await store.get_image(t1.image_hashes[0]) == make_png(1)
    info = await store.image_info(t1.image_hashes[0])
    assert info is not None and (info.width, info.height, info.size_bytes) == (8, 8, len(make_png(1)))

    await store.clear_conversation(alice.id)
    assert await count(store, Image) == 2  # Bob's turn still uses image 1
    result = await store.clear_conversation(bob.id)
    assert (result.conversations, result.turns, result.images) == (1, 1, 2)
    assert await count(store, Image) == 0 and await count(store, TurnImage) == 0


async def test_forget_deletes_only_that_users_data(store: Store, make_png) -> None:
    await store.update_channel_settings(THREAD, {"conversation_scope": "shared"}, guild_id=GUILD)
    alice = await conversation_of(store, ALICE)
    bob = await conversation_of(store, BOB)
    shared = await conversation_of(store, ALICE, channel=THREAD)
    a1 = await store.append_turn(alice.id, "user", "alice private", author_id=ALICE, images=[make_png(1)])
    await store.append_turn(alice.id, "assistant", "answer to alice", reply_to_turn_id=a1.id)
    await store.append_turn(bob.id, "user", "bob private", author_id=BOB, images=[make_png(2)])
    s1 = await store.append_turn(shared.id, "user", "alice in thread", author_id=ALICE, images=[make_png(3)])
    await store.append_turn(shared.id, "assistant", "reply to alice in thread", reply_to_turn_id=s1.id)
    b2 = await store.append_turn(shared.id, "user", "bob in thread", author_id=BOB, images=[make_png(2)])
    await store.append_turn(shared.id, "assistant", "reply to bob in thread", reply_to_turn_id=b2.id)

    result = await store.forget_user(ALICE)
    assert (result.conversations, result.turns, result.images) == (1, 4, 2)
    assert await store.get_conversation(alice.id) is None
    assert [t.text for t in await store.list_turns(shared.id)] == ["bob in thread", "reply to bob in thread"]
    assert [t.text for t in await store.list_turns(bob.id)] == ["bob private"]
    assert await store.get_image(a1.image_hashes[0]) is None
    assert await store.get_image(s1.image_hashes[0]) is None
    assert await store.get_image(b2.image_hashes[0]) == make_png(2)
    assert await count(store, Image) == 1


async def test_forget_can_be_limited_to_one_channel(store: Store) -> None:
    here = await conversation_of(store, ALICE)
    elsewhere = await conversation_of(store, ALICE, channel=999)
    await store.append_turn(here.id, "user", "here", author_id=ALICE)
    await store.append_turn(elsewhere.id, "user", "elsewhere", author_id=ALICE)
    result = await store.forget_user(ALICE, channel_id=999)
    assert (result.conversations, result.turns) == (1, 1)
    assert await store.get_conversation(here.id) is not None
    assert await store.get_conversation(elsewhere.id) is None


async def test_retention_deletes_old_turns_their_answers_and_orphans(store: Store, make_png) -> None:
    now = datetime.now(UTC)
    old_conv = await conversation_of(store, ALICE, channel=1)
    live_conv = await conversation_of(store, BOB, channel=2)
    old = await store.append_turn(
        old_conv.id,
        "user",
        "ancient",
        author_id=ALICE,
        images=[make_png(1)],
        created_at=now - timedelta(days=40),
    )
    # An answer written just after the cutoff still goes with the question it answers.
    await store.append_turn(
        old_conv.id,
        "assistant",
        "ancient answer",
        reply_to_turn_id=old.id,
        created_at=now - timedelta(days=29),
    )
    await store.append_turn(
        live_conv.id, "user", "old in a live conversation", author_id=BOB, created_at=now - timedelta(days=31)
    )
    await store.append_turn(live_conv.id, "user", "fresh", author_id=BOB, images=[make_png(1)])

    result = await apply_retention(store, 30, now=lambda: now)
    assert (result.turns, result.conversations, result.images) == (3, 0, 0)  # image 1 still used by "fresh"
    assert await store.list_turns(old_conv.id) == []  # its shell stays until idle for the whole period
    assert [t.text for t in await store.list_turns(live_conv.id)] == ["fresh"]
    assert await count(store, ConversationTurn) == 1

    later = await apply_retention(store, 30, now=lambda: now + timedelta(days=31))
    assert (later.turns, later.conversations, later.images) == (1, 2, 1)
    assert await store.get_conversation(old_conv.id) is None
    assert await count(store, Image) == 0


async def test_the_periodic_retention_task_runs_and_stops(store: Store) -> None:
    conv = await conversation_of(store, ALICE)
    await store.append_turn(
        conv.id, "user", "x", author_id=ALICE, created_at=datetime.now(UTC) - timedelta(days=9)
    )
    task = asyncio.create_task(run_retention(store, lambda: 7, interval_s=0.01))
    deadline = asyncio.get_running_loop().time() + 20  # generous: CI machines can be slow
    while await count(store, ConversationTurn) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert await count(store, ConversationTurn) == 0
    assert not task.done()  # still running for the next pass
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_export_contains_the_users_data_and_nobody_elses(store: Store, make_png) -> None:
    await store.update_channel_settings(THREAD, {"conversation_scope": "shared"}, guild_id=GUILD)
    alice = await conversation_of(store, ALICE)
    bob = await conversation_of(store, BOB)
    shared = await conversation_of(store, ALICE, channel=THREAD)
    a1 = await store.append_turn(alice.id, "user", "alice question", author_id=ALICE, images=[make_png(1)])
    await store.append_turn(alice.id, "assistant", "alice answer", reply_to_turn_id=a1.id, message_ids=[77])
    await store.append_turn(bob.id, "user", "bob secret", author_id=BOB, images=[make_png(2)])
    s1 = await store.append_turn(shared.id, "user", "alice in thread", author_id=ALICE)
    await store.append_turn(shared.id, "assistant", "thread answer", reply_to_turn_id=s1.id)
    await store.append_turn(shared.id, "user", "bob in thread", author_id=BOB)
    from bot.store import JobKind

    await store.create_job(JobKind.IMAGINE, user_id=ALICE, guild_id=GUILD, channel_id=CHANNEL, prompt="a fox")
    await store.create_job(
        JobKind.IMAGINE, user_id=BOB, guild_id=GUILD, channel_id=CHANNEL, prompt="bob's dog"
    )

    export = await store.export_user_data(ALICE)
    dumped = json.dumps(export)  # JSON-serialisable as it is
    assert "bob secret" not in dumped and "bob in thread" not in dumped and "bob's dog" not in dumped
    assert [t["text"] for t in export["conversations"][0]["turns"]] == ["alice question", "alice answer"]
    assert export["conversations"][0]["turns"][1]["message_ids"] == ["77"]
    assert [t["text"] for t in export["shared_conversation_turns"]] == ["alice in thread", "thread answer"]
    assert [j["prompt"] for j in export["jobs"]] == ["a fox"]
    assert [i["sha256"] for i in export["images"]] == list(a1.image_hashes)
    assert export["user_id"] == str(ALICE)
