"""Engine life-cycle faults with real worker processes: a start that fails (and may be retried), a worker
that crashes while ``stop(drain=True)`` waits, a worker process that cannot even be spawned, and restarts
that keep failing. Each test starts its own engine (a few seconds each: workers import torch)."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal

import pytest

import janus_engine.supervisor as supervisor_module
from janus_engine.engine import JanusEngine
from janus_engine.errors import ModelNotAvailable, QueueFull
from janus_engine.protocol import Failed, GenerateResult, Progress, UnderstandResult
from tests.engine.engine_helpers import chat_request, collect, gen_request, tiny_engine_config


async def _wait_for(predicate, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_a_failed_start_leaves_the_engine_startable_again(tmp_path):
    engine = JanusEngine(tiny_engine_config(tmp_path / "no-such-model"))
    with pytest.raises(ModelNotAvailable):
        await engine.start()
    # Not "already started": the second start tries again (and fails again, the model is still missing).
    with pytest.raises(ModelNotAvailable):
        await engine.start()
    assert all(w.pid is None and w.state == "stopped" for w in engine.status().workers)
    with pytest.raises(ModelNotAvailable):
        engine.submit(chat_request("never"), user_id="u")
    await engine.stop()


async def test_a_worker_crashing_during_a_drain_is_restarted_for_the_queued_jobs(tiny_model_dir):
    # One image row per worker: the second job waits in the queue (with continuous batching a job that
    # fits would join the running decode instead of waiting).
    config = tiny_engine_config(tiny_model_dir, step_delay_s=0.1, batch_window_s=0.0, max_images_per_batch=1)
    engine = JanusEngine(config)
    await engine.start()
    try:
        running = engine.submit(gen_request("running"), user_id="u1")
        queued = engine.submit(gen_request("queued"), user_id="u2")
        stream = aiter(running)
        async with asyncio.timeout(60):
            while not isinstance(await anext(stream), Progress):
                pass
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.create_task(engine.stop(drain=True, timeout=90))
        await asyncio.sleep(0.1)
        with pytest.raises(QueueFull, match="shutting down"):
            engine.submit(chat_request("late"), user_id="u3")
        os.kill(engine.status().workers[0].pid, signal.SIGKILL)
        assert isinstance((await collect(running))[-1], Failed)
        result = await asyncio.wait_for(queued.result(), 60)  # the restarted worker ran it
        assert isinstance(result, GenerateResult) and len(result.images) == 1
        await asyncio.wait_for(stopping, 30)
        assert loop.time() - began < 60  # the drain ended with the queue, not at its 90 s timeout
        assert engine.status().workers[0].restarts == 1
    finally:
        await engine.stop(timeout=10)


async def test_a_worker_that_cannot_be_spawned_is_retried_and_queued_jobs_are_told(
    tiny_model_dir, monkeypatch
):
    engine = JanusEngine(tiny_engine_config(tiny_model_dir, batch_window_s=0.0, restart_backoff_max_s=2.0))
    await engine.start()
    try:

        def no_more_processes(*args, **kwargs):
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(supervisor_module, "WorkerProcess", no_more_processes)
        os.kill(engine.status().workers[0].pid, signal.SIGKILL)
        await _wait_for(lambda: "could not start" in (engine.status().workers[0].last_error or ""))
        assert engine.status().workers[0].state == "restarting"
        handle = engine.submit(chat_request("waiting", max_new_tokens=2), user_id="u1")
        failed = (await collect(handle, timeout=30))[-1]  # told at the next failed try, not left waiting
        assert isinstance(failed, Failed) and failed.kind == "ModelNotAvailable"
        assert "could not start" in failed.reason
        monkeypatch.undo()  # processes can be spawned again: the next scheduled try succeeds
        await _wait_for(lambda: engine.status().workers[0].state == "idle", timeout=90)
        result = await asyncio.wait_for(engine.submit(chat_request("after"), user_id="u1").result(), 60)
        assert isinstance(result, UnderstandResult)
    finally:
        await engine.stop(timeout=10)


async def test_failed_restarts_leave_no_unretrieved_future_exceptions(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    engine = JanusEngine(tiny_engine_config(model_dir, restart_backoff_max_s=1.0))
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context.get("message", "")))
    await engine.start()
    try:
        shutil.rmtree(model_dir)  # every restart now fails to load the model
        os.kill(engine.status().workers[0].pid, signal.SIGKILL)
        await _wait_for(lambda: engine.status().workers[0].restarts >= 3, timeout=90)
        gc.collect()
        await asyncio.sleep(0)
        assert engine.status().workers[0].last_error
        assert not [m for m in reported if "never retrieved" in m], reported
    finally:
        loop.set_exception_handler(None)
        await engine.stop(timeout=10)
