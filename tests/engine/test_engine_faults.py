"""Faults with real worker processes: a worker killed mid-job, a job over its time limit, and a shutdown
that cancels a running job. Each must end its jobs cleanly and (for the first two) restart the worker so
the next job succeeds."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

import pytest
import pytest_asyncio

from janus_engine.engine import JanusEngine
from janus_engine.errors import JobFailed
from janus_engine.protocol import Cancelled, Failed, Progress, Queued, Started, UnderstandResult
from tests.engine.engine_helpers import chat_request, collect, gen_request, tiny_engine_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT_S = 1.5


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir):
    # 16 image steps x 0.15 s = 2.4 s per image job, over the 1.5 s limit; a 2-token chat takes ~0.3 s.
    config = tiny_engine_config(
        tiny_model_dir, step_delay_s=0.15, job_timeout_s=TIMEOUT_S, batch_window_s=0.0
    )
    engine = JanusEngine(config)
    await engine.start()
    yield engine
    await engine.stop(timeout=20)


async def _next_job_succeeds(engine: JanusEngine, job_id: str) -> None:
    handle = engine.submit(chat_request(job_id, max_new_tokens=2), user_id="u2")
    result = await asyncio.wait_for(handle.result(), 120)
    assert isinstance(result, UnderstandResult) and result.request_id == job_id


async def test_the_first_job_of_a_fresh_engine_already_has_an_eta(engine):
    # No batch has finished yet: the ETA comes from the worker's warm-up measurement. A tiny-model image
    # is 16 steps of at least the 0.15 s step delay, so a true estimate is at least 2.4 s.
    handle = engine.submit(gen_request("first"), user_id="u0")
    first = await anext(aiter(handle))
    assert isinstance(first, Queued) and first.eta_s is not None
    assert 16 * 0.15 <= first.eta_s < 60
    assert await engine.cancel("first")
    assert isinstance((await collect(handle))[-1], Cancelled)


async def test_worker_killed_mid_job_fails_that_job_and_a_restarted_worker_serves_the_next(engine):
    await _next_job_succeeds(engine, "warm-up")
    old_pid = engine.status().workers[0].pid
    handle = engine.submit(gen_request("doomed"), user_id="u1")
    events = []
    async with asyncio.timeout(60):
        async for event in handle:
            events.append(event)
            if isinstance(event, Progress) and event.step == 1:
                os.kill(old_pid, signal.SIGKILL)
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert "SIGKILL" in failed.reason
    with pytest.raises(JobFailed):
        await handle.result()
    await _next_job_succeeds(engine, "after-kill")
    worker = engine.status().workers[0]
    assert worker.restarts == 1
    assert worker.pid != old_pid
    assert "SIGKILL" in (worker.last_error or "")


async def test_job_over_the_time_limit_fails_and_its_worker_is_recycled(engine):
    restarts = engine.status().workers[0].restarts
    old_pid = engine.status().workers[0].pid
    events = await collect(engine.submit(gen_request("slow"), user_id="u1"), timeout=60)
    assert isinstance(events[-1], Failed)
    assert "longer than the limit" in events[-1].reason
    await _next_job_succeeds(engine, "after-timeout")
    worker = engine.status().workers[0]
    assert worker.restarts == restarts + 1 and worker.pid != old_pid


async def test_stop_cancels_a_running_job_and_leaves_no_child_process(engine):
    handle = engine.submit(gen_request("interrupted"), user_id="u1")
    async with asyncio.timeout(60):
        async for event in handle:
            if isinstance(event, Started):
                break
    pid = engine.status().workers[0].pid
    await engine.stop(timeout=10)
    events = await collect(handle, timeout=5)
    assert isinstance(events[-1], Cancelled)
    with pytest.raises(ProcessLookupError):  # exited and reaped, not a zombie
        os.kill(pid, 0)
    assert pid not in {child.pid for child in multiprocessing.active_children()}
