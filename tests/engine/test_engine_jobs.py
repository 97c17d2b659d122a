"""JanusEngine with a real worker process on the tiny checkpoint: routing, batching, fairness, limits,
cancellation, event streams and a draining shutdown. One engine is shared by the module's tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
import pytest_asyncio

from janus_engine.engine import JanusEngine
from janus_engine.errors import InvalidRequest, JobCancelled, QueueFull, UserLimitReached
from janus_engine.protocol import (
    Cancelled,
    Done,
    GenerateRequest,
    GenerateResult,
    Progress,
    Queued,
    Started,
    TextDelta,
    UnderstandResult,
)
from tests.engine.engine_helpers import (
    chat_request,
    collect,
    gen_request,
    same_picture,
    tiny_engine_config,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir):
    config = tiny_engine_config(
        tiny_model_dir,
        max_queue=20,
        max_queued_per_user=8,
        max_running_per_user=3,
        max_images_per_batch=3,
        max_understand_batch=3,
        batch_window_s=0.1,
        step_delay_s=0.03,  # a job lasts ~0.5 s: long enough to cancel mid-way
    )
    engine = JanusEngine(config)
    await engine.start()
    yield engine
    await engine.stop(timeout=20)


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def nothing_left_behind(engine):
    """A failed test must not leave jobs that would fail the next one: cancel them and wait."""
    yield
    if engine.status().workers[0].state == "stopped":
        return
    for info in engine.jobs():
        await engine.cancel(info.job_id)
    async with asyncio.timeout(30):
        while engine.jobs():
            await asyncio.sleep(0.02)


async def test_concurrent_users_all_complete_and_each_result_reaches_its_own_job(engine):
    before = engine.status()
    handles = {}
    for i in range(9):
        handles[f"img-{i}"] = engine.submit(gen_request(f"img-{i}", n=1 + i % 3, seed=i), user_id=f"user-{i}")
    for i in range(3):
        chat = chat_request(f"chat-{i}", f"question {i}")
        handles[f"chat-{i}"] = engine.submit(chat, user_id=f"talker-{i}")

    results = dict(zip(handles, await asyncio.gather(*(h.result() for h in handles.values())), strict=True))

    for job_id, result in results.items():
        assert result.request_id == job_id
        if job_id.startswith("img-"):
            assert isinstance(result, GenerateResult)
            assert len(result.images) == 1 + int(job_id.split("-")[1]) % 3
            assert all(png.startswith(PNG_SIGNATURE) for png in result.images)
            assert result.seed == int(job_id.split("-")[1])
        else:
            assert isinstance(result, UnderstandResult)
            assert 1 <= result.completion_tokens <= 4
    after = engine.status()
    assert after.jobs_done - before.jobs_done == 12
    # 18 images in batches of <= 3 images plus 3 chats in batches of <= 3: batching must have happened.
    assert after.batches - before.batches < 12
    assert after.queue_depth == 0 and after.running == 0


async def test_a_request_gives_the_same_images_alone_and_inside_a_batch(engine):
    solo = await engine.submit(gen_request("solo", seed=7), user_id="u1").result()
    batch = [engine.submit(gen_request(f"mix-{s}", seed=s), user_id=f"mixer-{s}") for s in (7, 8, 9)]
    mixed = [await h.result() for h in batch]
    # Routed back to the job that asked, not a neighbour's images (see same_picture for the rounding).
    assert same_picture(mixed[0].images[0], solo.images[0])
    assert not same_picture(mixed[1].images[0], solo.images[0])
    assert not same_picture(mixed[2].images[0], solo.images[0])


async def test_event_streams_have_the_documented_shape(engine):
    image = engine.submit(dataclasses.replace(gen_request("shape-img"), preview_every=5), user_id="u1")
    text = engine.submit(chat_request("shape-chat", max_new_tokens=6), user_id="u2")
    image_events, text_events = await asyncio.gather(collect(image), collect(text))

    assert isinstance(image_events[0], Queued) and image_events[0].position >= 1
    assert any(isinstance(e, Started) for e in image_events)
    steps = [e.step for e in image_events if isinstance(e, Progress) and e.preview is None]
    total = next(e.total for e in image_events if isinstance(e, Progress))
    assert steps == list(range(1, total + 1))
    previews = [e for e in image_events if isinstance(e, Progress) and e.preview is not None]
    assert [e.step for e in previews] == list(range(5, total, 5))
    assert all(e.preview.startswith(PNG_SIGNATURE) for e in previews)
    assert isinstance(image_events[-1], Done)
    kinds = [type(e) for e in image_events]
    assert kinds.index(Started) < kinds.index(Progress) < kinds.index(Done)

    deltas = "".join(e.text for e in text_events if isinstance(e, TextDelta))
    assert isinstance(text_events[-1], Done)
    assert deltas.strip() == text_events[-1].result.text


async def test_fair_order_serves_a_second_user_before_the_first_users_backlog(engine):
    started: list[str] = []

    async def watch(handle):
        async for event in handle:
            if isinstance(event, Started):
                started.append(event.job_id)

    handles = [engine.submit(gen_request(f"alice-{i}", seed=i), user_id="alice") for i in range(6)]
    handles.append(engine.submit(gen_request("bob-0"), user_id="bob"))
    assert engine.position("bob-0") == 2
    await asyncio.wait_for(asyncio.gather(*(watch(h) for h in handles)), 60)
    # Batches hold at most 3 images: the first is alice-0, bob-0, alice-1 (not alice's first three).
    assert set(started[:3]) == {"alice-0", "bob-0", "alice-1"}
    assert started[3:] == ["alice-2", "alice-3", "alice-4", "alice-5"]


async def test_queue_bound_and_per_user_limit_refuse_at_once(engine):
    handles = [engine.submit(gen_request(f"greedy-{i}"), user_id="greedy") for i in range(8)]
    with pytest.raises(UserLimitReached):
        engine.submit(gen_request("greedy-8"), user_id="greedy")
    handles += [engine.submit(gen_request(f"other-{i}"), user_id=f"other-{i}") for i in range(12)]
    with pytest.raises(QueueFull):
        engine.submit(gen_request("one-too-many"), user_id="late")
    # Cancelling the queued jobs takes them out at once.
    for handle in handles:
        assert await engine.cancel(handle.job_id)
    for handle in handles:
        events = await collect(handle)
        assert isinstance(events[-1], Cancelled)
        assert engine.position(handle.job_id) is None
        with pytest.raises(JobCancelled):
            await handle.result()
    assert engine.status().queue_depth == 0
    assert not await engine.cancel("greedy-0")  # already over


async def test_bad_requests_are_refused_with_typed_errors(engine):
    with pytest.raises(InvalidRequest):
        engine.submit(gen_request("zero", n=0), user_id="u1")
    with pytest.raises(InvalidRequest):
        engine.submit(GenerateRequest(request_id="g", prompt="x", guidance=1.0), user_id="u1")
    handle = engine.submit(gen_request("dup"), user_id="u1")
    with pytest.raises(InvalidRequest):
        engine.submit(gen_request("dup"), user_id="u2")
    await handle.result()


async def test_cancel_running_job_stops_it_mid_way_and_its_batch_mate_finishes(engine):
    victim = engine.submit(gen_request("victim", seed=1), user_id="u1")
    mate = engine.submit(gen_request("mate", seed=2), user_id="u2")
    events = []
    async with asyncio.timeout(60):
        async for event in victim:
            events.append(event)
            if isinstance(event, Progress) and event.step == 1:
                assert await engine.cancel("victim")
    assert isinstance(events[-1], Cancelled)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].step < progress[-1].total
    assert isinstance(await mate.result(), GenerateResult)


async def test_jobs_of_and_status_describe_the_queue(engine):
    engine.submit(gen_request("look-1"), user_id="looker")
    engine.submit(gen_request("look-2"), user_id="looker")
    infos = engine.jobs_of("looker")
    summary = [(i.job_id, i.state, i.position) for i in infos]
    assert summary == [("look-1", "queued", 1), ("look-2", "queued", 2)]
    status = engine.status()
    assert status.queue_depth == 2
    worker = status.workers[0]
    assert worker.pid is not None and worker.state in ("idle", "busy")
    assert status.avg_step_s is not None and status.avg_step_s > 0
    assert infos[0].eta_s is not None  # measured step times exist by now
    await asyncio.sleep(0)
    await asyncio.wait_for(_until_idle(engine), 30)
    assert engine.jobs_of("looker") == []


async def _until_idle(engine):
    while engine.status().queue_depth or engine.status().running:
        await asyncio.sleep(0.05)


async def test_stop_with_drain_finishes_jobs_and_leaves_no_worker(engine, caplog):
    pids = [w.pid for w in engine.status().workers]
    handles = [engine.submit(gen_request(f"last-{i}", seed=i), user_id=f"last-{i}") for i in range(4)]
    await engine.stop(drain=True, timeout=30)
    for handle in handles:
        assert isinstance(await handle.result(), GenerateResult)
    with pytest.raises(QueueFull):
        engine.submit(gen_request("after-stop"), user_id="u1")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(w.state == "stopped" for w in engine.status().workers)
    assert "killing it" not in caplog.text  # the worker exited when asked, it did not have to be killed
