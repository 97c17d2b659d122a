"""WorkerSupervisor on its own, with fake processes: no model, no subprocess, milliseconds."""

from __future__ import annotations

import asyncio

from janus_engine.config import EngineConfig
from janus_engine.ipc import Ready
from janus_engine.pool import describe_exit
from janus_engine.protocol import ModelSpec
from janus_engine.supervisor import RunningBatch, WorkerSlot, WorkerSupervisor


class FakeProcess:
    """Stands in for pool.WorkerProcess: the test plays the worker through its callbacks."""

    def __init__(self, spec, options, *, loop, on_message, on_exit) -> None:
        self.options = options
        self.on_message = on_message
        self.on_exit = on_exit
        self.pid = 1000 + len(spawned)
        self.sent: list[object] = []
        self.killed = False
        spawned.append(self)

    def send(self, message: object) -> bool:
        self.sent.append(message)
        return True

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout: float) -> bool:
        return True

    def describe_end(self, exitcode: int | None) -> str:
        return describe_exit(exitcode)  # as WorkerProcess does: these tests play local processes

    def ready(self) -> None:
        self.on_message(self, Ready(pid=self.pid, device="cpu", dtype="float32", num_image_tokens=4))


spawned: list[FakeProcess] = []


async def test_a_worker_that_dies_while_busy_reports_its_batch_lost_and_is_restarted() -> None:
    spawned.clear()
    lost: list[tuple[WorkerSlot, RunningBatch, str]] = []
    forwarded: list[object] = []
    no_worker: list[str] = []
    supervisor = WorkerSupervisor(
        EngineConfig(model=ModelSpec(model="unused"), devices=("cpu",)),
        on_message=lambda slot, message: forwarded.append(message),
        on_batch_lost=lambda slot, batch, reason: lost.append((slot, batch, reason)),
        on_no_worker=no_worker.append,
        restarts_allowed=lambda: True,
        process_factory=FakeProcess,
    )
    starting = asyncio.create_task(supervisor.start_workers())
    await asyncio.sleep(0)
    first = spawned[0]
    first.ready()
    await asyncio.wait_for(starting, 5)
    slot = supervisor.slots[0]
    assert slot.state == "idle" and slot.pid == first.pid
    assert len(forwarded) == 1 and isinstance(forwarded[0], Ready)  # the engine hears of Ready too

    batch = RunningBatch(batch_id=1, kind="generate", job_ids=["a", "b"], size=2, started_at=0.0)
    slot.batches, slot.state = {1: batch}, "busy"
    first.on_exit(first, -9)

    assert lost == [(slot, batch, lost[0][2])]
    assert "SIGKILL" in lost[0][2]
    assert slot.batches == {}
    assert no_worker == []  # a serving worker's crash restarts it at once, queued jobs wait
    await asyncio.sleep(0.05)
    assert len(spawned) == 2 and slot.proc is spawned[1]
    assert slot.restarts == 1 and slot.state == "starting"

    first.on_exit(first, -9)  # a stale notice from the replaced incarnation changes nothing
    assert len(lost) == 1 and len(spawned) == 2
    spawned[1].ready()
    assert slot.state == "idle"

    await supervisor.shutdown_processes(1.0)
    assert slot.state == "stopped" and slot.proc is None
