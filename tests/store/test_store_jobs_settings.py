"""Jobs survive restarts and keep their first ending; settings merge; admin changes leave an audit trail;
a failed write leaves nothing half-done."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select

from bot.store import ConversationKey, ConversationScope, JobKind, JobStatus, Store
from bot.store.base import UNSHARDED_OWNER
from bot.store.errors import ConversationNotFound, JobNotFound, TurnNotFound
from bot.store.models import ConversationTurn, Image, Job, TurnImage, utcnow
from janus_engine.errors import InvalidImage, InvalidRequest


async def test_a_job_is_found_by_id_after_a_restart(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        job = await store.create_job(
            JobKind.IMAGINE,
            user_id=2**62 + 5,  # snowflakes are 64-bit
            guild_id=2**60,
            channel_id=7,
            prompt="a red fox",
            params={"n_images": 4, "guidance": 5.0},
            seed=12345,
        )
        assert job.status is JobStatus.QUEUED
        running = await store.mark_job_running(job.id)
        assert running.status is JobStatus.RUNNING and running.started_at is not None
        await store.finish_job(
            job.id, JobStatus.DONE, timings={"queue_s": 0.5, "run_s": 3.25}, message_ids=[11]
        )
        await store.add_job_messages(job.id, [12, 11])
    async with await Store.open(db_url) as reopened:
        again = await reopened.get_job(job.id)
    assert again is not None
    assert (again.prompt, again.params, again.seed, again.user_id) == (
        "a red fox",
        {"n_images": 4, "guidance": 5.0},
        12345,
        2**62 + 5,
    )
    assert again.status is JobStatus.DONE and again.finished_at is not None
    assert again.timings == {"queue_s": 0.5, "run_s": 3.25}
    assert again.message_ids == (11, 12)
    assert again.created_at.tzinfo is not None and again.created_at <= again.started_at <= again.finished_at


async def test_the_first_ending_of_a_job_wins(store: Store) -> None:
    job = await store.create_job(JobKind.DESCRIBE, user_id=1, guild_id=None, channel_id=None, prompt="what?")
    await store.finish_job(job.id, JobStatus.DONE)
    late_cancel = await store.finish_job(job.id, JobStatus.CANCELLED, error="too late")
    assert late_cancel.status is JobStatus.DONE and late_cancel.error is None
    assert (await store.mark_job_running(job.id)).status is JobStatus.DONE
    with pytest.raises(InvalidRequest):
        await store.finish_job(job.id, JobStatus.RUNNING)
    with pytest.raises(JobNotFound):
        await store.finish_job("no-such-job", JobStatus.FAILED)


async def test_jobs_left_by_a_previous_process_are_marked_failed(store: Store) -> None:
    queued = await store.create_job(JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="a")
    running = await store.create_job(JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="b")
    await store.mark_job_running(running.id)
    done = await store.create_job(JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="c")
    await store.finish_job(done.id, JobStatus.DONE)
    await store.add_job_messages(running.id, [555])
    interrupted = await store.fail_interrupted_jobs()
    assert [j.id for j in interrupted] == [queued.id, running.id]
    assert all(j.status is JobStatus.FAILED for j in interrupted)
    assert interrupted[1].message_ids == (555,)  # the bot edits these messages to say what happened
    assert await store.fail_interrupted_jobs() == []
    assert (await store.get_job(queued.id)).status is JobStatus.FAILED
    assert "restarted" in (await store.get_job(running.id)).error
    assert (await store.get_job(done.id)).status is JobStatus.DONE


async def test_a_restarting_process_closes_only_its_own_jobs(db_url: str) -> None:
    # Two bot processes (shards 0 and 1 of 2) share the database; shard 1 restarts while shard 0 runs.
    async with (
        await Store.open(db_url, owner="shards 0 of 2") as shard0,
        await Store.open(db_url, owner="shards 1 of 2") as shard1,
    ):
        running_on_0 = await shard0.create_job(
            JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="a"
        )
        await shard0.mark_job_running(running_on_0.id)
        left_by_1 = await shard1.create_job(JobKind.IMAGINE, user_id=2, guild_id=2, channel_id=2, prompt="b")
        assert (running_on_0.owner, left_by_1.owner) == ("shards 0 of 2", "shards 1 of 2")
        assert (await shard0.get_job(running_on_0.id)).owner == "shards 0 of 2"  # stored, not just returned
        async with shard1.engine.begin() as conn:  # a job from before jobs had an owner, and one made
            await conn.execute(  # while the install still ran as one process
                insert(Job).values(
                    id="legacy", kind="imagine", user_id=3, guild_id=3, channel_id=3, prompt="c", params={},
                    status="running", timings={}, message_ids=[], created_at=utcnow(), owner=None,
                )
            )  # fmt: skip
        async with await Store.open(db_url) as unsharded:
            was_main = await unsharded.create_job(
                JobKind.DESCRIBE, user_id=4, guild_id=4, channel_id=4, prompt="d"
            )
        assert was_main.owner == UNSHARDED_OWNER

        closed = await shard1.fail_interrupted_jobs()
        assert {j.id for j in closed} == {left_by_1.id, "legacy", was_main.id}
        assert (await shard0.get_job(running_on_0.id)).status is JobStatus.RUNNING  # shard 0's, still running
        # When shard 0 restarts in turn, its own running job is the one it closes.
        assert [j.id for j in await shard0.fail_interrupted_jobs()] == [running_on_0.id]


async def test_list_jobs_filters_newest_first(store: Store) -> None:
    ids = []
    for i in range(3):
        job = await store.create_job(JobKind.IMAGINE, user_id=1, guild_id=9, channel_id=1, prompt=f"p{i}")
        ids.append(job.id)
    await store.create_job(JobKind.IMAGINE, user_id=2, guild_id=9, channel_id=1, prompt="other")
    await store.finish_job(ids[0], JobStatus.FAILED, error="boom")
    assert [j.prompt for j in await store.list_jobs(user_id=1)] == ["p2", "p1", "p0"]
    assert [j.prompt for j in await store.list_jobs(user_id=1, statuses=[JobStatus.QUEUED], limit=1)] == [
        "p2"
    ]
    assert len(await store.list_jobs(guild_id=9)) == 4


async def test_job_parameters_must_be_json(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        await store.create_job(
            JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="x", params={"b": b"x"}
        )
    job = await store.create_job(
        JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="x", job_id="fixed"
    )
    assert job.id == "fixed"
    with pytest.raises(InvalidRequest):
        await store.create_job(
            JobKind.IMAGINE, user_id=1, guild_id=1, channel_id=1, prompt="x", job_id="fixed"
        )


async def test_settings_merge_remove_and_layer(store: Store) -> None:
    await store.update_guild_settings(1, {"enabled": True, "nsfw": "block", "defaults": {"guidance": 5}})
    assert await store.update_guild_settings(1, {"nsfw": None, "enabled": False}) == {
        "enabled": False,
        "defaults": {"guidance": 5},
    }
    await store.update_channel_settings(10, {"enabled": True, "x": 1}, guild_id=1)
    await store.update_channel_settings(11, {"x": 2}, guild_id=1)  # a thread of channel 10
    assert await store.get_channel_settings(10) == {"enabled": True, "x": 1}
    effective = await store.effective_settings(guild_id=1, channel_id=11, parent_channel_id=10)
    assert effective == {"enabled": True, "defaults": {"guidance": 5}, "x": 2}
    assert await store.effective_settings(guild_id=2, channel_id=12) == {}
    assert await store.get_guild_settings(3) == {}


async def test_admin_changes_are_audited_in_the_same_transaction(store: Store) -> None:
    await store.update_guild_settings(1, {"enabled": False}, actor_id=42)
    await store.update_channel_settings(10, {"conversation_scope": "shared"}, guild_id=1, actor_id=43)
    await store.update_guild_settings(2, {"enabled": True})  # no actor: a bot-internal change, not audited
    await store.record_audit(actor_id=44, action="forget", guild_id=1, target="user:5", details={"turns": 3})
    entries = await store.list_audit(guild_id=1)
    assert [(e.actor_id, e.action, e.target) for e in entries] == [
        (44, "forget", "user:5"),
        (43, "settings.channel", "channel:10"),
        (42, "settings.guild", "guild:1"),
    ]
    assert entries[1].details == {"changes": {"conversation_scope": "shared"}}
    assert await store.list_audit(guild_id=2) == []

    with pytest.raises(InvalidRequest):  # a bad change writes neither the settings nor the audit entry
        await store.update_guild_settings(1, {"bad": object()}, actor_id=45)
    assert len(await store.list_audit()) == 3


async def count(store: Store, model) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(model)))


async def test_a_failing_turn_write_leaves_no_trace(store: Store, make_png) -> None:
    key = ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=2, user_id=3)
    conv = await store.resolve_conversation(key)
    await store.append_turn(conv.id, "user", "first", author_id=3, message_ids=[500])
    # The message id is already taken: the turn's last insert fails after its image and row went in.
    with pytest.raises(InvalidRequest):
        await store.append_turn(
            conv.id, "user", "second", author_id=3, images=[make_png(9)], message_ids=[500]
        )
    assert [t.text for t in await store.list_turns(conv.id)] == ["first"]
    assert (
        await count(store, Image),
        await count(store, TurnImage),
        await count(store, ConversationTurn),
    ) == (0, 0, 1)


async def test_bad_turns_are_refused_with_typed_errors(store: Store) -> None:
    key = ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=2, user_id=3)
    conv = await store.resolve_conversation(key)
    with pytest.raises(InvalidImage):
        await store.append_turn(conv.id, "user", "x", images=[b"GIF89a not a png"])
    with pytest.raises(InvalidRequest):
        await store.append_turn(conv.id, "system", "x")  # type: ignore[arg-type]
    other = await store.resolve_conversation(
        ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=2, user_id=4)
    )
    foreign = await store.append_turn(other.id, "user", "someone else's", author_id=4)
    with pytest.raises(TurnNotFound):  # an answer cannot hang off another conversation's turn
        await store.append_turn(conv.id, "assistant", "x", reply_to_turn_id=foreign.id)
    await store.clear_conversation(conv.id)
    with pytest.raises(ConversationNotFound):
        await store.append_turn(conv.id, "user", "after forget")


async def test_message_ids_lead_back_to_the_conversation(store: Store) -> None:
    key = ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=2, user_id=3)
    conv = await store.resolve_conversation(key)
    question = await store.append_turn(conv.id, "user", "q", author_id=3, message_ids=[1001])
    answer = await store.append_turn(conv.id, "assistant", "a", reply_to_turn_id=question.id)
    await store.add_turn_messages(answer.id, [1002, 1003])  # a long reply split over two messages
    assert (await store.conversation_for_message(1003)).id == conv.id
    found = await store.turn_for_message(1002)
    assert found is not None and found.id == answer.id and found.message_ids == (1002, 1003)
    assert await store.conversation_for_message(4242) is None
