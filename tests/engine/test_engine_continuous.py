"""Continuous batching through the engine and a real worker process: jobs join a running decode, chat is
not held behind images, results do not depend on who shared the steps, and the old policy stays a switch."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import pytest_asyncio

from janus_engine.engine import JanusEngine
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import Done, GenerateResult, Progress, Started, UnderstandResult
from tests.engine.engine_helpers import chat_request, gen_request, tiny_engine_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_DELAY_S = 0.05  # 16 image steps: an image job lasts ~1 s, long enough to join it mid-way


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir):
    config = tiny_engine_config(
        tiny_model_dir,
        max_images_per_batch=4,
        max_understand_batch=4,
        batch_window_s=0.0,
        step_delay_s=STEP_DELAY_S,
        max_running_per_user=4,
    )
    engine = JanusEngine(config)
    await engine.start()
    yield engine
    await engine.stop(timeout=20)


async def wait_for_step(handle, step: int) -> list:
    """Events of ``handle`` up to its first Progress at ``step`` or later."""
    seen = []
    async with asyncio.timeout(60):
        async for event in handle:
            seen.append(event)
            if isinstance(event, Progress) and event.step >= step:
                return seen
    raise AssertionError(f"the job ended before step {step}: {seen}")


async def test_a_job_joins_the_running_decode_and_gives_the_same_images_as_alone(engine):
    alone_a = await engine.submit(gen_request("alone-a", seed=1), user_id="u1").result()
    alone_b = await engine.submit(gen_request("alone-b", n=2, seed=2), user_id="u2").result()

    first = engine.submit(gen_request("a", seed=1), user_id="u1")
    await wait_for_step(first, 4)
    late = engine.submit(gen_request("b", n=2, seed=2), user_id="u2")
    timeline: list[tuple[str, object]] = []

    async def record(name: str, handle) -> None:
        async for event in handle:
            timeline.append((name, event))

    await asyncio.wait_for(asyncio.gather(record("a", first), record("b", late)), 60)
    first_events = [e for n, e in timeline if n == "a"]
    late_events = [e for n, e in timeline if n == "b"]
    # b joined while a was decoding: b's first step came before a's last one.
    b_first_step = next(i for i, (n, e) in enumerate(timeline) if n == "b" and isinstance(e, Progress))
    a_last_step = max(i for i, (n, e) in enumerate(timeline) if n == "a" and isinstance(e, Progress))
    assert b_first_step < a_last_step
    assert next(e for e in late_events if isinstance(e, Started)).worker == "worker-0"
    assert isinstance(first_events[-1], Done) and isinstance(late_events[-1], Done)
    a, b = first_events[-1].result, late_events[-1].result
    assert isinstance(a, GenerateResult) and isinstance(b, GenerateResult)
    assert a.images == alone_a.images
    assert b.images == alone_b.images
    assert len(set(b.images)) == 2


async def test_chat_arriving_mid_image_decode_finishes_before_the_images(engine):
    question = chat_request("alone-chat", "what is a fox?", max_new_tokens=4)
    alone = await engine.submit(question, user_id="u3").result()
    images = engine.submit(gen_request("img", n=3, seed=5), user_id="u1")
    await wait_for_step(images, 2)
    chat = engine.submit(dataclasses.replace(question, request_id="chat"), user_id="u2")
    order: list[str] = []

    async def finish(name: str, handle) -> None:
        await handle.result()
        order.append(name)

    await asyncio.wait_for(asyncio.gather(finish("images", images), finish("chat", chat)), 60)
    assert order == ["chat", "images"]  # 4 text steps between image steps: it did not wait for 14 more
    answer = await chat.result()
    assert isinstance(answer, UnderstandResult) and answer.text == alone.text


async def test_jobs_of_many_users_all_complete_beyond_the_row_capacity(engine):
    handles = {
        f"g{i}": engine.submit(gen_request(f"g{i}", n=1 + i % 2, seed=i), user_id=f"p{i}") for i in range(6)
    }
    handles.update(
        {f"c{i}": engine.submit(chat_request(f"c{i}", f"hi {i}"), user_id=f"q{i}") for i in range(6)}
    )
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles.values())), 120)
    for (key, _), result in zip(handles.items(), results, strict=True):
        assert result.request_id == key
    status = engine.status()
    assert status.running == 0 and status.queue_depth == 0
    async with asyncio.timeout(10):  # each batch's closing message follows its last job's result
        while not all(w.state == "idle" and not w.job_ids for w in engine.status().workers):
            await asyncio.sleep(0.01)


async def test_cancel_mid_decode_frees_the_rows_for_a_waiting_job(engine):
    hog = engine.submit(gen_request("hog", n=4, seed=1), user_id="u1")
    await wait_for_step(hog, 2)
    waiting = engine.submit(gen_request("waiting", seed=3), user_id="u2")  # no free row: it queues
    await asyncio.sleep(0.2)
    assert [info.state for info in engine.jobs_of("u2")] == ["queued"]
    assert await engine.cancel("hog")
    result = await asyncio.wait_for(waiting.result(), 60)
    assert isinstance(result, GenerateResult)


async def test_run_to_completion_is_a_switch_and_makes_the_late_job_wait(tiny_model_dir):
    config = tiny_engine_config(
        tiny_model_dir, batching="run_to_completion", batch_window_s=0.0, step_delay_s=STEP_DELAY_S
    )
    async with JanusEngine(config) as engine:
        first = engine.submit(gen_request("a", seed=1), user_id="u1")
        await wait_for_step(first, 4)
        late = engine.submit(gen_request("b", seed=2), user_id="u2")
        steps_when_late_started: list[int] = []
        first_events = []

        async def watch_first() -> None:
            async for event in first:
                first_events.append(event)

        watcher = asyncio.create_task(watch_first())
        async for event in late:
            if isinstance(event, Started):
                steps_when_late_started.append(len(first_events))
                assert isinstance(first_events[-1], Done)  # it waited for the whole first batch
                break
        await watcher
        await late.result()


async def test_a_request_larger_than_the_rows_is_refused_at_submit(engine):
    with pytest.raises(InvalidRequest, match="at most 4 images"):
        engine.submit(gen_request("too-big", n=5), user_id="u1")
