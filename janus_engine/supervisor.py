"""WorkerSupervisor: one worker process per configured device, kept alive.

It spawns the processes (:class:`janus_engine.pool.WorkerProcess`), waits for each to load the model
(readiness futures and a start timeout), restarts a process that dies (at once after a crash of a serving
worker, with a growing delay while starts keep failing) and shuts them all down. It knows nothing of jobs:
it reports back to the engine through the callbacks given to its constructor, as ``WorkerProcess`` reports
to it, so it never imports :mod:`janus_engine.engine`.

- ``on_message(slot, message)``: a message from a slot's current process (``Ready`` after the supervisor
  has recorded it; ``LoadFailed`` is handled here and not passed on).
- ``on_batch_lost(slot, batch, reason)``: the process died while running ``batch``; ``reason`` is the
  readable sentence its jobs should fail with.
- ``on_no_worker(reason)``: a start failed and no other worker is serving: queued jobs should be told.
- ``restarts_allowed()``: whether a dead worker should be restarted (the engine is serving or draining).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from janus_engine import errors
from janus_engine.config import EngineConfig
from janus_engine.errors import ModelNotAvailable
from janus_engine.ipc import BatchKind, LoadFailed, Ready, Shutdown, WorkerOptions
from janus_engine.pool import WorkerProcess, WorkerTransport
from janus_engine.status import WorkerState

log = logging.getLogger(__name__)


@dataclass
class RunningBatch:
    """A batch handed to a worker, until it finishes, times out or is lost with its process."""

    batch_id: int
    kind: BatchKind
    job_ids: list[str]
    size: int  # images (generate) or requests (understand)
    started_at: float
    timer: asyncio.TimerHandle | None = None
    tokens: int = 0  # completion tokens of the jobs that already ended (continuous batching)


@dataclass
class WorkerSlot:
    """A worker position (one per configured device); its process is replaced on restart."""

    name: str
    device: str
    state: WorkerState = "starting"
    proc: WorkerTransport | None = None
    pid: int | None = None
    # The batches the worker is running: one at most in run-to-completion mode; in continuous mode every
    # batch it was handed while it had free rows (their jobs decode together).
    batches: dict[int, RunningBatch] = field(default_factory=dict)
    restarts: int = 0
    failures_in_a_row: int = 0
    last_error: str | None = None
    ready: asyncio.Future[None] | None = None
    start_timer: asyncio.TimerHandle | None = None
    # Why the process is being killed on purpose (a stuck batch): the reason the OTHER batches it was
    # running fail with, instead of the bare "died from SIGKILL".
    recycle_reason: str | None = None


ProcessFactory = Callable[..., WorkerTransport]  # WorkerProcess's signature; tests pass a fake


def connect_ray(address: str, devices: tuple[str, ...]) -> None:
    """Import Ray (an optional extra, imported only for ``backend = "ray"``) and join the cluster."""
    try:
        from janus_engine.ray_transport import connect
    except ImportError as exc:
        raise ModelNotAvailable(
            f'[engine] backend = "ray" needs Ray, which is not installed ({exc}): '
            "pip install 'janus-discord-bot[ray]'"
        ) from None
    try:
        connect(address, devices)
    except errors.JanusError:
        raise  # connected, and the cluster said no: the message is already the whole story
    except Exception as exc:  # a wrong address, a cluster that is down: one line, not Ray's traceback
        where = address or "a new local instance"
        raise ModelNotAvailable(f"Could not connect to Ray ({where}): {type(exc).__name__}: {exc}") from None


class WorkerSupervisor:
    """The worker slots and their processes' life cycle. See the module docstring for the callbacks."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        on_message: Callable[[WorkerSlot, Any], None],
        on_batch_lost: Callable[[WorkerSlot, RunningBatch, str], None],
        on_no_worker: Callable[[str], None],
        restarts_allowed: Callable[[], bool],
        process_factory: ProcessFactory | None = None,
    ) -> None:
        self.config = config
        self.slots = [WorkerSlot(f"worker-{i}", device) for i, device in enumerate(config.devices)]
        self.closing = False  # set by the engine's stop: no restarts, late Ready means "stopped"
        self._on_message_cb = on_message
        self._on_batch_lost = on_batch_lost
        self._on_no_worker = on_no_worker
        self._restarts_allowed = restarts_allowed
        # None: the configured backend's transport (WorkerProcess or RayWorker), looked up at each spawn
        self._process_factory = process_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    # ---- start and stop --------------------------------------------------------------------------------

    async def start_workers(self) -> None:
        """Spawn every slot's process and wait until each has loaded the model; raise ModelNotAvailable
        (or the worker's own error class) if one fails or is too slow, with no process left running."""
        self._loop = asyncio.get_running_loop()
        if self.config.backend == "ray" and self._process_factory is None:
            await asyncio.to_thread(connect_ray, self.config.ray_address, self.config.devices)
        self._started = True
        for slot in self.slots:
            self._spawn(slot, awaited=True)
        waits = [slot.ready for slot in self.slots if slot.ready is not None]
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*waits, return_exceptions=True), self.config.worker_start_timeout_s
            )
        except TimeoutError:
            await self.shutdown_processes(5.0)
            raise ModelNotAvailable(
                f"The model did not load within {self.config.worker_start_timeout_s:g} s."
            ) from None
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            await self.shutdown_processes(5.0)
            first = failures[0]
            raise first if isinstance(first, errors.JanusError) else ModelNotAvailable(str(first))
        for slot in self.slots:
            slot.ready = None  # awaited and done; restarts create none (nobody would await them)

    def abandon_start(self) -> None:
        """A failed (or cancelled) start leaves nothing running and the supervisor startable again."""
        self._started = False
        for slot in self.slots:
            if slot.start_timer is not None:
                slot.start_timer.cancel()
            if slot.proc is not None:
                slot.proc.kill()  # only left here when start was cancelled or a spawn raised
            slot.proc = None
            slot.pid = None
            slot.ready = None
            slot.state = "stopped"

    async def shutdown_processes(self, timeout: float) -> None:
        """Ask every worker to exit, wait up to ``timeout``, kill the rest; no orphans either way."""
        procs = [(slot, slot.proc) for slot in self.slots if slot.proc is not None]
        for _, proc in procs:
            proc.send(Shutdown())
        deadline = time.monotonic() + timeout
        for _, proc in procs:
            exited = await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if not exited:
                log.warning("%s did not exit in time; killing it", proc.options.name)
                proc.kill()
                await asyncio.to_thread(proc.join, 5.0)
        for slot, _ in procs:
            slot.proc = None
            slot.pid = None
            slot.state = "stopped"
            if slot.start_timer is not None:
                slot.start_timer.cancel()

    def recycle(self, slot: WorkerSlot, reason: str, *, others_fail_with: str | None = None) -> None:
        """Kill a slot's process on purpose (a stuck batch); its exit notice restarts it, and fails the
        batches still on it with ``others_fail_with``."""
        slot.last_error = reason
        slot.recycle_reason = others_fail_with
        log.warning("%s: %s", slot.name, reason)
        slot.state = "restarting"
        if slot.proc is not None:
            slot.proc.kill()

    # ---- processes -------------------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot, *, awaited: bool = False) -> None:
        """Start the slot's process. Only ``start_workers`` awaits ``slot.ready``: a restart gets none, since
        an exception set on a future nobody awaits is logged as "never retrieved" at every failed restart."""
        assert self._loop is not None
        spec = dataclasses.replace(self.config.model, device=slot.device)
        config = self.config
        options = WorkerOptions(
            name=slot.name,
            step_delay_s=config.step_delay_s,
            batching=config.batching,
            max_images=config.max_images_per_batch,
            max_texts=config.max_understand_batch,
            cuda_graphs=config.cuda_graphs,
        )
        slot.ready = self._loop.create_future() if awaited else None
        slot.state = "starting"
        factory = self._process_factory or self._default_transport()
        slot.proc = factory(
            spec, options, loop=self._loop, on_message=self._on_message, on_exit=self._on_exit
        )
        slot.pid = slot.proc.pid
        proc = slot.proc
        slot.start_timer = self._loop.call_later(
            self.config.worker_start_timeout_s, self._on_start_timeout, slot, proc
        )

    def _default_transport(self) -> ProcessFactory:
        if self.config.backend == "ray":
            from janus_engine.ray_transport import RayWorker

            return RayWorker
        return WorkerProcess

    def _on_start_timeout(self, slot: WorkerSlot, proc: WorkerTransport) -> None:
        if slot.proc is proc and slot.state == "starting":
            slot.last_error = f"did not load within {self.config.worker_start_timeout_s:g} s"
            proc.kill()

    def _restart(self, slot: WorkerSlot) -> None:
        if self.closing or not self._started:
            return
        slot.restarts += 1
        try:
            self._spawn(slot)
        except Exception as exc:  # process limits, file descriptors: try again later rather than never
            slot.proc = None
            slot.pid = None
            slot.last_error = f"could not start a worker process: {type(exc).__name__}: {exc}"
            log.error("%s: %s", slot.name, slot.last_error)
            self._schedule_restart(slot, was_ready=False)

    def _slot_of(self, proc: WorkerTransport) -> WorkerSlot | None:
        return next((s for s in self.slots if s.proc is proc), None)

    def _on_message(self, proc: WorkerTransport, message: Any) -> None:
        slot = self._slot_of(proc)
        if slot is None:
            return  # a replaced incarnation
        if isinstance(message, Ready):
            if slot.start_timer is not None:
                slot.start_timer.cancel()
            slot.state = "idle" if not self.closing else "stopped"
            slot.pid = message.pid
            slot.failures_in_a_row = 0
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_result(None)
            log.info("%s ready on %s (%s, pid %s)", slot.name, message.device, message.dtype, message.pid)
        elif isinstance(message, LoadFailed):
            slot.last_error = message.message
            error_class = errors.error_class(message.kind, ModelNotAvailable)
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_exception(error_class(message.message))
            log.error("%s could not load the model: %s", slot.name, message.message)
            return
        self._on_message_cb(slot, message)

    def _on_exit(self, proc: WorkerTransport, exitcode: int | None) -> None:
        slot = self._slot_of(proc)
        if slot is None:
            return
        if slot.start_timer is not None:
            slot.start_timer.cancel()
        was_ready = slot.state in ("idle", "busy", "restarting")  # restarting = recycled by a timeout
        how = proc.describe_end(exitcode)
        slot.proc = None
        slot.pid = None
        batches, slot.batches = list(slot.batches.values()), {}
        lost_reason = slot.recycle_reason or f"The job failed because {how}. Please try again."
        slot.recycle_reason = None
        for batch in batches:
            if batch.timer is not None:
                batch.timer.cancel()
            self._on_batch_lost(slot, batch, lost_reason)
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_exception(ModelNotAvailable(slot.last_error or f"The model worker failed: {how}."))
        if not self._restarts_allowed():
            slot.state = "stopped"
            return
        if slot.state != "restarting" or slot.last_error is None:
            slot.last_error = how if was_ready else (slot.last_error or how)
        log.warning("%s: %s; restarting it", slot.name, how)
        self._schedule_restart(slot, was_ready=was_ready)

    def _schedule_restart(self, slot: WorkerSlot, *, was_ready: bool) -> None:
        """Restart at once after a crash of a serving worker; after failed starts, wait longer each time
        (and tell queued jobs now if no worker is left to run them)."""
        if was_ready:
            delay = 0.0
        else:
            slot.failures_in_a_row += 1
            delay = min(self.config.restart_backoff_max_s, 2.0**slot.failures_in_a_row)
            if not any(s.state in ("idle", "busy") for s in self.slots if s is not slot):
                self._on_no_worker(f"The model is not available right now: {slot.last_error}")
        slot.state = "restarting"
        assert self._loop is not None
        self._loop.call_later(delay, self._restart, slot)
