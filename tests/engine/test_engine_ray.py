"""JanusEngine with ``backend = "ray"``: two CPU worker actors on a local Ray cluster that this module
starts on loopback, with the tiny checkpoint. The same engine (scheduler, continuous batching, fault rules)
as the local pool; only the transport differs, so these tests ask what the transport could break: every
user's job completes and reaches its owner, both actors serve, the fair order holds, cancel reaches an
actor between steps, and an actor killed with SIGKILL fails its job with a clear reason and is replaced.

Marked ``ray`` (a Ray cluster and two model loads cost ~15 s): ``pytest -m "not ray"`` leaves them out
of a quick local run; CI runs them with everything else.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from janus_engine.engine import JanusEngine
from janus_engine.errors import ModelNotAvailable
from janus_engine.protocol import Cancelled, Done, Failed, GenerateResult, Progress, UnderstandResult
from tests.engine.engine_helpers import (
    chat_request,
    collect,
    gen_request,
    loopback_ray,
    same_picture,
    tiny_engine_config,
)

# Loopback only: tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported.
assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def ray_cluster():
    """Room for two actors and a replacement."""
    with loopback_ray(num_cpus=4):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(ray_cluster, tiny_model_dir):
    config = tiny_engine_config(
        tiny_model_dir,
        backend="ray",
        devices=("cpu", "cpu"),
        max_queued_per_user=8,
        max_running_per_user=4,  # one user could fill all four rows of the two actors
        max_images_per_batch=2,
        max_understand_batch=2,
        batch_window_s=0.05,
        step_delay_s=0.03,  # an image is 16 steps: ~0.5 s, long enough to see it running and cancel it
    )
    engine = JanusEngine(config)
    await engine.start()
    yield engine
    await engine.stop(timeout=20)


def _actor_pids(engine: JanusEngine) -> list[int]:
    pids = [worker.pid for worker in engine.status().workers]
    assert all(isinstance(pid, int) for pid in pids)
    return pids  # type: ignore[return-value]


async def test_the_workers_are_ray_actors_in_processes_of_their_own(engine):
    pids = _actor_pids(engine)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    for pid in pids:
        os.kill(pid, 0)  # alive, on this machine (a one-node cluster)
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            assert b"WorkerActor" in cmdline.read()  # Ray names an actor's process after its class


async def test_jobs_from_many_users_complete_and_reach_their_owners_on_both_actors(engine):
    busy_workers: set[str] = set()

    async def watch_workers() -> None:
        while True:
            busy_workers.update(w.name for w in engine.status().workers if w.job_ids)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch_workers())
    handles = []
    for user in range(6):
        handles.append(engine.submit(gen_request(f"img-{user}", seed=user), user_id=f"user-{user}"))
        handles.append(engine.submit(chat_request(f"chat-{user}"), user_id=f"user-{user}"))
    try:
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    finally:
        watcher.cancel()
    for handle, result in zip(handles, results, strict=True):
        assert result.request_id == handle.job_id
        if handle.job_id.startswith("img-"):
            assert isinstance(result, GenerateResult) and result.images[0].startswith(b"\x89PNG")
        else:
            assert isinstance(result, UnderstandResult) and result.text
    assert busy_workers == {"worker-0", "worker-1"}


async def test_a_seeded_image_is_the_same_on_either_actor(engine):
    # Two actors, one request each at a time: the same seed must give the same picture wherever it ran.
    first, second = (engine.submit(gen_request(f"same-{i}", seed=42), user_id=f"seed-{i}") for i in range(2))
    a, b = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 60)
    assert same_picture(a.images[0], b.images[0])


async def test_the_fair_order_holds_across_actors(engine):
    finished: list[str] = []

    async def watch(handle):
        events = await collect(handle, 90)
        assert isinstance(events[-1], Done)
        finished.append(handle.job_id)

    handles = [engine.submit(gen_request(f"alice-{i}", seed=i), user_id="alice") for i in range(6)]
    handles.append(engine.submit(gen_request("bob-0"), user_id="bob"))
    assert engine.position("bob-0") == 2
    await asyncio.wait_for(asyncio.gather(*(watch(h) for h in handles)), 120)
    # Two actors hold four image rows and Alice may fill all four: in arrival order Bob would wait for her
    # first four to end; round-robin puts him in the first wave, so he is done before alice-3.
    assert finished.index("bob-0") < finished.index("alice-3")
    assert sorted(finished) == sorted(h.job_id for h in handles)


async def test_cancel_reaches_an_actor_between_steps(engine):
    handle = engine.submit(gen_request("to-cancel"), user_id="canceller")
    events = []
    async with asyncio.timeout(60):
        async for event in handle:
            events.append(event)
            if isinstance(event, Progress) and event.step == 2:
                assert await engine.cancel("to-cancel")
    assert isinstance(events[-1], Cancelled)
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert max(steps) < 16  # stopped part-way, not run to the end
    after_cancel = engine.submit(chat_request("after-cancel"), user_id="canceller")
    after = await asyncio.wait_for(after_cancel.result(), 60)
    assert after.request_id == "after-cancel"


async def test_an_actor_killed_mid_job_fails_its_job_clearly_and_is_replaced(engine):
    pids_before = _actor_pids(engine)
    handle = engine.submit(gen_request("doomed"), user_id="victim")
    events = []
    victim_pid = None
    async with asyncio.timeout(60):
        async for event in handle:
            events.append(event)
            if isinstance(event, Progress) and event.step == 1 and victim_pid is None:
                running = [w for w in engine.status().workers if "doomed" in w.job_ids]
                assert len(running) == 1
                victim_pid = running[0].pid
                os.kill(victim_pid, signal.SIGKILL)
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert "Ray worker actor died" in failed.reason and "try again" in failed.reason
    # The queue goes on: new jobs complete (on the survivor at once, on the replacement once it loads).
    handles = [engine.submit(chat_request(f"after-kill-{i}"), user_id=f"later-{i}") for i in range(4)]
    for done in await asyncio.wait_for(asyncio.gather(*(collect(h, 90) for h in handles)), 120):
        assert isinstance(done[-1], Done)
    async with asyncio.timeout(60):
        while not all(w.state in ("idle", "busy") for w in engine.status().workers):
            await asyncio.sleep(0.1)
    workers = engine.status().workers
    replaced = [w for w in workers if w.pid not in pids_before]
    assert len(replaced) == 1 and replaced[0].restarts == 1
    assert "Ray worker actor died" in (replaced[0].last_error or "")
    assert victim_pid not in _actor_pids(engine)
    result = await asyncio.wait_for(engine.submit(gen_request("on-new"), user_id="later").result(), 60)
    assert isinstance(result, GenerateResult)


async def test_a_cluster_without_the_gpus_asked_for_is_refused_at_start(ray_cluster, tiny_model_dir):
    # This cluster has no GPU: without the check the actor would wait for one until the start timeout.
    engine = JanusEngine(tiny_engine_config(tiny_model_dir, backend="ray", devices=("cuda", "cpu")))
    with pytest.raises(
        ModelNotAvailable, match=r"^The Ray cluster is too small for model.devices \(1 GPUs asked, 0 in the"
    ):
        await engine.start()
    assert all(w.state == "stopped" for w in engine.status().workers)


async def test_stop_ends_every_actor(engine):
    # Last in the module: a stopped engine leaves no actor process holding a GPU (or a CPU here).
    pids = _actor_pids(engine)
    await engine.stop(timeout=20)
    async with asyncio.timeout(30):
        while any(_alive(pid) for pid in pids):
            await asyncio.sleep(0.1)
    assert all(w.state == "stopped" for w in engine.status().workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
