"""JanusEngine: the asyncio front the bot, the CLI and tests hold. It never imports torch.

It owns a fair queue (:mod:`janus_engine.scheduler`) and a WorkerSupervisor
(:mod:`janus_engine.supervisor`: one worker process per configured device, kept alive), and turns what
workers report into each job's event stream (:mod:`janus_engine.handle`). Everything runs on one event
loop; worker messages arrive through reader threads with ``call_soon_threadsafe``, so no state here is
touched from two threads.

Faults, as decided for this engine:
- A worker that dies (kill -9, segfault, out of memory) is noticed at once (its pipe reaches EOF). The
  jobs it was running end with ``Failed`` saying how the process died; they are NOT retried, because the
  job itself may be what killed the worker (a retry of a poison request would kill the next worker too).
  The worker is restarted at once (with a growing delay if restarts keep failing) and the queue goes on.
- A batch running longer than ``job_timeout_s`` fails its jobs ("took longer than ...") and the worker is
  killed and restarted, since a stuck model call cannot be interrupted from outside.
- Cancelling a queued job removes it; cancelling a running one asks its worker, which stops the job at the
  next decoding step (the rest of its batch goes on).
- ``stop`` optionally drains, then cancels what is left, asks workers to exit, and kills any that do not
  within the timeout: no process outlives the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from janus_engine.config import EngineConfig
from janus_engine.errors import InvalidRequest, ModelNotAvailable, QueueFull
from janus_engine.eta import SpeedMeter, simulate_queue
from janus_engine.handle import JobHandle
from janus_engine.ipc import (
    BatchFinished,
    CancelJobs,
    PreviewImage,
    Ready,
    RunBatch,
    StepProgress,
    TextPieces,
)
from janus_engine.protocol import (
    Cancelled,
    Done,
    Failed,
    GenerateRequest,
    Progress,
    Queued,
    Started,
    TextDelta,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.scheduler import FairScheduler, QueuedJob
from janus_engine.status import EngineStatus, JobInfo, WorkerStatus
from janus_engine.supervisor import RunningBatch, WorkerSlot, WorkerSupervisor
from janus_engine.validation import validate_generate_request, validate_understand_request

__all__ = ["JanusEngine", "JobHandle"]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    handle: JobHandle
    queued: QueuedJob
    state: str = "queued"  # queued | running
    slot: WorkerSlot | None = None
    step: int = 0
    total: int = 0
    cancel_requested: bool = False


class JanusEngine:
    """Async front of the worker pool. See the module docstring for the fault policy."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._scheduler = FairScheduler(
            max_queue=config.max_queue,
            max_queued_per_user=config.max_queued_per_user,
            max_running_per_user=config.max_running_per_user,
        )
        self._meter = SpeedMeter()
        self._workers = WorkerSupervisor(
            config,
            on_message=self._on_message,
            on_batch_lost=self._on_batch_lost,
            on_no_worker=self._fail_queued,
            restarts_allowed=self._restarts_allowed,
        )
        self._slots = self._workers.slots
        self._jobs: dict[str, _Job] = {}
        self._batch_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._started = False
        self._accepting = False
        self._draining = False  # stop(drain=True) is letting the queue finish: workers still restart
        self._started_at = time.monotonic()
        self._done = self._failed = self._cancelled = self._batches = 0

    # ---- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn one worker per device and wait until every one has loaded the model.

        Raises ModelNotAvailable (with the worker's own explanation) if any fails or is too slow; then no
        worker is left running, and a later ``start`` tries again.
        """
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        self._started = True
        try:
            await self._workers.start_workers()
        except BaseException:
            self._started = False  # a failed (or cancelled) start leaves the engine startable again
            self._workers.abandon_start()
            raise
        self._accepting = True
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="janus-engine-dispatch")

    async def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop accepting jobs; with ``drain`` let queued and running jobs finish (within ``timeout``);
        cancel whatever is left; make every worker exit (killing those that do not). Idempotent."""
        if not self._started or self._closing:
            return
        deadline = time.monotonic() + timeout
        self._accepting = False
        if drain:
            self._draining = True  # a worker that crashes now is still restarted for the queued jobs
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            finally:
                self._draining = False
        self._workers.closing = True
        for job in self._scheduler.queued_jobs():
            self._scheduler.remove(job.job_id)
            self._end(self._jobs[job.job_id], Cancelled(job.job_id))
        for slot in self._slots:
            if slot.batch is not None and slot.proc is not None:
                slot.proc.send(CancelJobs(tuple(slot.batch.job_ids)))
        # Cancelled jobs stop at their next step; give them a moment to report so callers see Cancelled.
        with contextlib.suppress(TimeoutError):
            grace = min(deadline - time.monotonic(), 5.0)
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace))
        await self._workers.shutdown_processes(max(1.0, deadline - time.monotonic()))
        for record in list(self._jobs.values()):
            self._end(record, Cancelled(record.handle.job_id))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    async def __aenter__(self) -> JanusEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- jobs ------------------------------------------------------------------------------------------

    def submit(self, request: GenerateRequest | UnderstandRequest, *, user_id: str) -> JobHandle:
        """Queue a job (job id = ``request.request_id``) and return its handle at once.

        Raises at once: InvalidRequest (bad parameters, id in use), QueueFull (the queue is at its bound,
        or the engine is stopping), UserLimitReached (this user has too many jobs waiting).
        """
        if not self._accepting:
            if self._closing or self._draining:
                raise QueueFull("The engine is shutting down; please try again later.")
            raise ModelNotAvailable("The engine is not running (start it first).")
        request = self._prepare(request)
        queued = QueuedJob(request.request_id, str(user_id), request, time.monotonic())
        self._scheduler.add(queued)
        handle = JobHandle(request.request_id, str(user_id), queued.kind)
        self._jobs[request.request_id] = _Job(handle, queued)
        self._idle.clear()
        self._refresh_queue_events()
        self._wake.set()
        return handle

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (removed at once) or a running one (stops at its next step). False if the
        job is unknown or already over."""
        record = self._jobs.get(job_id)
        if record is None:
            return False
        if record.state == "queued":
            self._scheduler.remove(job_id)
            self._end(record, Cancelled(job_id))
            self._refresh_queue_events()
            return True
        if not record.cancel_requested and record.slot is not None and record.slot.proc is not None:
            record.cancel_requested = True
            record.slot.proc.send(CancelJobs((job_id,)))
        return True

    def position(self, job_id: str) -> int | None:
        return self._scheduler.position(job_id)

    def jobs_of(self, user_id: str) -> list[JobInfo]:
        """The user's queued and running jobs, in submission order."""
        return self._job_infos(str(user_id))

    def jobs(self) -> list[JobInfo]:
        """Every queued and running job (admin view)."""
        return self._job_infos(None)

    def _job_infos(self, user_id: str | None) -> list[JobInfo]:
        etas = self._queue_etas()
        infos = []
        for job_id, record in self._jobs.items():
            if user_id is not None and record.handle.user_id != user_id:
                continue
            if record.state == "queued":
                position = self._scheduler.position(job_id)
                infos.append(JobInfo(job_id, record.queued.kind, "queued", position, etas.get(job_id)))
            else:
                eta = self._remaining_seconds(record.slot) if record.slot else None
                infos.append(JobInfo(job_id, record.queued.kind, "running", None, eta))
        return infos

    def status(self) -> EngineStatus:
        images_per_s, tokens_per_s = self._meter.throughput(self._started_at)
        return EngineStatus(
            queue_depth=len(self._scheduler),
            running=sum(1 for r in self._jobs.values() if r.state == "running"),
            workers=tuple(
                WorkerStatus(
                    name=s.name,
                    device=s.device,
                    state=s.state,
                    pid=s.pid,
                    job_ids=tuple(s.batch.job_ids) if s.batch else (),
                    restarts=s.restarts,
                    last_error=s.last_error,
                )
                for s in self._slots
            ),
            jobs_done=self._done,
            jobs_failed=self._failed,
            jobs_cancelled=self._cancelled,
            batches=self._batches,
            images_per_s=images_per_s,
            tokens_per_s=tokens_per_s,
            avg_step_s=self._meter.avg_step_seconds(),
            uptime_s=time.monotonic() - self._started_at,
        )

    # ---- submission helpers ----------------------------------------------------------------------------

    def _prepare(self, request: GenerateRequest | UnderstandRequest) -> GenerateRequest | UnderstandRequest:
        if not isinstance(request, GenerateRequest | UnderstandRequest):
            raise InvalidRequest("A job must be an image generation or an image understanding request.")
        if not request.request_id:
            raise InvalidRequest("A job needs a non-empty request id.")
        if isinstance(request, GenerateRequest):
            validate_generate_request(request)
            if request.preview_every == 0 and self.config.preview_every > 0:
                request = dataclasses.replace(request, preview_every=self.config.preview_every)
        else:
            validate_understand_request(request)
        return request

    # ---- dispatch --------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Whenever a worker is idle and jobs wait: gather for the batch window, then hand out batches."""
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_ready_batches()
            except Exception:  # a bug here must not silently stop every future job
                log.exception("dispatch failed; will retry on the next event")
                await asyncio.sleep(0.1)
                self._wake.set()

    async def _dispatch_ready_batches(self) -> None:
        window = self.config.batch_window_s
        while not self._closing:
            idle = [s for s in self._slots if s.state == "idle"]
            waiting = self._scheduler.dispatchable_weight()
            if not idle or waiting == 0:
                break
            oldest = self._scheduler.oldest_enqueued_at() or 0.0
            pause = oldest + window - time.monotonic()
            if pause > 0 and waiting < self.config.max_images_per_batch * len(idle):
                await asyncio.sleep(pause)  # let companions arrive; then look again
                continue
            # Several idle workers share what waits instead of one taking it all.
            share = max(1, math.ceil(waiting / len(idle)))
            picked = self._scheduler.next_batch(
                max_images=min(self.config.max_images_per_batch, share),
                max_understand=min(self.config.max_understand_batch, share),
            )
            if not picked:
                break
            self._run_batch(idle[0], picked)
        self._refresh_queue_events()

    def _run_batch(self, slot: WorkerSlot, picked: list[QueuedJob]) -> None:
        assert self._loop is not None and slot.proc is not None
        kind = picked[0].kind
        batch = RunningBatch(
            batch_id=next(self._batch_ids),
            kind=kind,
            job_ids=[job.job_id for job in picked],
            size=sum(job.weight for job in picked),
            started_at=time.monotonic(),
        )
        slot.batch = batch
        slot.state = "busy"
        self._batches += 1
        eta = self._meter.batch_seconds(kind, batch.size)
        for job in picked:
            record = self._jobs[job.job_id]
            record.state = "running"
            record.slot = slot
            record.handle.emit(Started(job.job_id, slot.name, eta))
        batch.timer = self._loop.call_later(self.config.job_timeout_s, self._on_batch_timeout, slot, batch)
        requests = tuple(job.request for job in picked)
        # If the send fails the process is dead: its exit notice will fail this batch.
        slot.proc.send(RunBatch(batch.batch_id, kind, requests))  # type: ignore[arg-type]

    def _on_batch_timeout(self, slot: WorkerSlot, batch: RunningBatch) -> None:
        if slot.batch is not batch:
            return
        slot.batch = None
        limit = self.config.job_timeout_s
        for job_id in batch.job_ids:
            record = self._jobs.get(job_id)
            if record is not None:
                reason = f"The job took longer than the limit of {limit:g} s and was stopped."
                self._end(record, Failed(job_id, reason, "JobFailed"))
        self._workers.recycle(slot, f"batch {batch.batch_id} timed out after {limit:g} s; worker recycled")

    # ---- worker messages -----------------------------------------------------------------------------

    @property
    def _closing(self) -> bool:
        return self._workers.closing

    def _restarts_allowed(self) -> bool:
        return not self._closing and (self._accepting or self._draining)

    def _on_message(self, slot: WorkerSlot, message: Any) -> None:
        """A message from a slot's current process (the supervisor already handled its Ready part)."""
        if isinstance(message, StepProgress | PreviewImage | TextPieces):
            self._on_stream(message)
        elif isinstance(message, BatchFinished):
            self._on_batch_finished(slot, message)
        elif isinstance(message, Ready):
            self._meter.image_steps = self._meter.image_steps or message.num_image_tokens
            for images, seconds in message.step_seconds:
                self._meter.record_warmup(images, seconds, message.num_image_tokens)
            self._wake.set()

    def _on_stream(self, message: StepProgress | PreviewImage | TextPieces) -> None:
        if isinstance(message, StepProgress):
            for job_id in message.job_ids:
                record = self._jobs.get(job_id)
                if record is not None and record.state == "running":
                    record.step = message.step
                    record.total = message.total
                    record.handle.emit(Progress(job_id, message.step, message.total))
            return
        if isinstance(message, TextPieces):
            for job_id, text in message.pieces:
                record = self._jobs.get(job_id)
                if record is not None and record.state == "running":
                    record.step += 1
                    record.handle.emit(TextDelta(job_id, text))
            return
        record = self._jobs.get(message.job_id)
        if record is None or record.state != "running":
            return
        total = record.total or message.step
        record.handle.emit(Progress(message.job_id, message.step, total, preview=message.png))

    def _on_batch_finished(self, slot: WorkerSlot, message: BatchFinished) -> None:
        batch = slot.batch
        if batch is None or batch.batch_id != message.batch_id:
            return  # a batch already failed by its timeout
        if batch.timer is not None:
            batch.timer.cancel()
        slot.batch = None
        if message.worker_exiting is not None:
            # The worker exits after this message (its device is broken): no new batch for it; its exit
            # notice restarts it at once, and status shows why.
            slot.state = "restarting"
            slot.last_error = message.worker_exiting
            log.error("%s: %s; it exits and is restarted", slot.name, message.worker_exiting)
        elif not self._closing:
            slot.state = "idle"
        tokens = 0
        for outcome in message.outcomes:
            record = self._jobs.get(outcome.job_id)
            if record is None:
                continue
            if outcome.result is not None:
                if isinstance(outcome.result, UnderstandResult):
                    tokens += outcome.result.completion_tokens
                self._end(record, Done(outcome.job_id, outcome.result))
            elif outcome.error_kind is not None:
                reason = outcome.error_message or "The job failed."
                self._end(record, Failed(outcome.job_id, reason, outcome.error_kind))
            else:
                self._end(record, Cancelled(outcome.job_id))
        for job_id in batch.job_ids:  # a worker that forgot a job must not leave it hanging
            record = self._jobs.get(job_id)
            if record is not None and record.state == "running" and record.slot is slot:
                self._end(record, Failed(job_id, "The worker returned no result for this job.", "JobFailed"))
        self._meter.record(
            kind=batch.kind, size=batch.size, steps=message.steps, seconds=message.seconds, tokens=tokens
        )
        self._wake.set()

    def _on_batch_lost(self, slot: WorkerSlot, batch: RunningBatch, reason: str) -> None:
        """The slot's process died while running ``batch``: its jobs fail (not retried: see the module
        docstring)."""
        for job_id in batch.job_ids:
            record = self._jobs.get(job_id)
            if record is not None:
                self._end(record, Failed(job_id, reason, "JobFailed"))

    # ---- job endings and queue events ------------------------------------------------------------------

    def _fail_queued(self, reason: str) -> None:
        """No worker can load the model: waiting jobs get told now rather than wait for a restart."""
        for job in self._scheduler.queued_jobs():
            self._scheduler.remove(job.job_id)
            self._end(self._jobs[job.job_id], Failed(job.job_id, reason, "ModelNotAvailable"))

    def _end(self, record: _Job, event: Done | Failed | Cancelled) -> None:
        job_id = record.handle.job_id
        if self._jobs.pop(job_id, None) is None:
            return
        self._scheduler.finish(job_id)
        if isinstance(event, Done):
            self._done += 1
        elif isinstance(event, Failed):
            self._failed += 1
        else:
            self._cancelled += 1
        record.handle.emit(event)
        if not self._jobs:
            self._idle.set()
        self._wake.set()  # a finished job may free its user's running cap

    def _refresh_queue_events(self) -> None:
        """Tell every queued job its (possibly new) place in line and ETA, once per change."""
        etas = self._queue_etas()
        for position, job in enumerate(self._scheduler.fair_order(), start=1):
            record = self._jobs.get(job.job_id)
            if record is None or not record.handle.note_position(position):
                continue
            record.handle.emit(Queued(job.job_id, position, etas.get(job.job_id)))

    def _remaining_seconds(self, slot: WorkerSlot) -> float | None:
        """Measured estimate of how long the slot's current batch still needs (0 if it is idle)."""
        batch = slot.batch
        if batch is None:
            return 0.0 if slot.state == "idle" else None
        total = self._meter.batch_seconds(batch.kind, batch.size)
        if total is None:
            return None
        if batch.kind == "generate" and self._meter.image_steps:
            running = [r.step for r in self._jobs.values() if r.slot is slot and r.state == "running"]
            step = max(running, default=0)
            return total * max(0.0, 1.0 - step / self._meter.image_steps)
        return max(0.0, total - (time.monotonic() - batch.started_at))

    def _queue_etas(self) -> dict[str, float | None]:
        """ETA of every queued job: the queue in fair order, run on the live workers (see simulate_queue)."""
        order = self._scheduler.fair_order()
        if not order:
            return {}
        free_at: list[float | None] = [
            self._remaining_seconds(slot) for slot in self._slots if slot.state not in ("failed", "stopped")
        ]
        limits = {
            "generate": self.config.max_images_per_batch,
            "understand": self.config.max_understand_batch,
        }
        return simulate_queue(
            [(job.job_id, job.kind, job.weight) for job in order], free_at, self._meter.batch_seconds, limits
        )
