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
from janus_engine.eta import RunningRows, SpeedMeter, simulate_queue, simulate_rows
from janus_engine.handle import JobHandle
from janus_engine.ipc import (
    BatchFinished,
    BatchKind,
    CancelJobs,
    ForgetConversations,
    JobFinished,
    JobOutcome,
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
    batch_id: int | None = None
    started_at: float = 0.0
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
            if slot.batches and slot.proc is not None:
                slot.proc.send(CancelJobs(tuple(j for b in slot.batches.values() for j in b.job_ids)))
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

    def forget_conversations(self, conversation_ids: list[str] | tuple[str, ...]) -> None:
        """/forget: every worker drops what it keeps of these conversations (cached image features)."""
        ids = tuple(str(c) for c in conversation_ids)
        if not ids:
            return
        for slot in self._slots:
            if slot.proc is not None:
                slot.proc.send(ForgetConversations(ids))

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
                infos.append(
                    JobInfo(job_id, record.queued.kind, "running", None, self._job_seconds_left(record))
                )
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
                    job_ids=tuple(j for b in s.batches.values() for j in b.job_ids),
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
            limit = self.config.max_images_per_batch
            if self._continuous and request.n_images > limit:
                # A worker holds this many image rows: a bigger request could never join a decode.
                raise InvalidRequest(
                    f"This engine generates at most {limit} images at once (engine.max_images_per_batch); "
                    f"the request asks for {request.n_images}."
                )
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

    @property
    def _continuous(self) -> bool:
        return self.config.batching == "continuous"

    def _limit(self, kind: BatchKind) -> int:
        return self.config.max_images_per_batch if kind == "generate" else self.config.max_understand_batch

    def _load(self, slot: WorkerSlot, kind: BatchKind) -> int:
        """Rows of ``kind`` the slot's running jobs hold (images, or conversations)."""
        return sum(
            r.queued.weight
            for r in self._jobs.values()
            if r.slot is slot and r.state == "running" and r.queued.kind == kind
        )

    def _room(self, slot: WorkerSlot) -> dict[BatchKind, int]:
        """Free rows per kind on a serving slot: all of them when it is idle; in continuous mode what its
        running jobs leave; none in run-to-completion mode while it is busy."""
        kinds: tuple[BatchKind, ...] = ("generate", "understand")
        if slot.state == "idle":
            return {kind: self._limit(kind) for kind in kinds}
        if slot.state != "busy" or not self._continuous:
            return dict.fromkeys(kinds, 0)
        return {kind: max(0, self._limit(kind) - self._load(slot, kind)) for kind in kinds}

    async def _dispatch_ready_batches(self) -> None:
        window = self.config.batch_window_s
        while not self._closing:
            rooms = {id(s): self._room(s) for s in self._slots}
            targets = [s for s in self._slots if any(rooms[id(s)].values())]
            waiting = self._scheduler.dispatchable_weight()
            if not targets or waiting == 0:
                break
            oldest = self._scheduler.oldest_enqueued_at() or 0.0
            pause = oldest + window - time.monotonic()
            free_images = sum(rooms[id(s)]["generate"] for s in targets)
            if pause > 0 and waiting < free_images:
                await asyncio.sleep(pause)  # let companions arrive; then look again
                continue
            # Several workers with room share what waits instead of one taking it all; the emptiest first.
            targets.sort(key=lambda s: -sum(rooms[id(s)].values()))
            share = max(1, math.ceil(waiting / len(targets)))
            slot = targets[0]
            room = rooms[id(slot)]
            if self._continuous:
                idle_kinds = {kind for kind in room if self._load(slot, kind) == 0}
                picked = self._scheduler.next_admission(
                    budgets={kind: min(free, share) for kind, free in room.items()},
                    idle_kinds=idle_kinds,
                )
            else:
                picked = self._scheduler.next_batch(
                    max_images=min(self.config.max_images_per_batch, share),
                    max_understand=min(self.config.max_understand_batch, share),
                )
            if not picked:
                break
            self._run_batch(slot, picked)
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
        slot.batches[batch.batch_id] = batch
        slot.state = "busy"
        self._batches += 1
        occupancy = self._load(slot, kind) + batch.size if self._continuous else batch.size
        eta = self._meter.batch_seconds(kind, occupancy)
        for job in picked:
            record = self._jobs[job.job_id]
            record.state = "running"
            record.slot = slot
            record.batch_id = batch.batch_id
            record.started_at = batch.started_at
            record.handle.emit(Started(job.job_id, slot.name, eta))
        batch.timer = self._loop.call_later(self.config.job_timeout_s, self._on_batch_timeout, slot, batch)
        requests = tuple(job.request for job in picked)
        # If the send fails the process is dead: its exit notice will fail this batch.
        slot.proc.send(RunBatch(batch.batch_id, kind, requests))  # type: ignore[arg-type]

    def _on_batch_timeout(self, slot: WorkerSlot, batch: RunningBatch) -> None:
        if slot.batches.get(batch.batch_id) is not batch:
            return
        del slot.batches[batch.batch_id]
        limit = self.config.job_timeout_s
        for job_id in batch.job_ids:
            record = self._jobs.get(job_id)
            if record is not None:
                reason = f"The job took longer than the limit of {limit:g} s and was stopped."
                self._end(record, Failed(job_id, reason, "JobFailed"))
        self._workers.recycle(
            slot,
            f"batch {batch.batch_id} timed out after {limit:g} s; worker recycled",
            others_fail_with=(
                "The job was stopped because the worker had to be restarted (another job on it got stuck)."
                " Please try again."
            ),
        )

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
        elif isinstance(message, JobFinished):
            self._on_job_finished(slot, message)
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

    def _on_job_finished(self, slot: WorkerSlot, message: JobFinished) -> None:
        """Continuous batching: one job of a running batch ended (the rest of the batch goes on)."""
        batch = slot.batches.get(message.batch_id)
        if batch is None:
            return  # a batch already failed by its timeout
        batch.tokens += self._end_with(message.outcome)

    def _end_with(self, outcome: JobOutcome) -> int:
        """End a job as its outcome says; returns the completion tokens of an understanding result."""
        record = self._jobs.get(outcome.job_id)
        if record is None:
            return 0
        if outcome.result is not None:
            self._end(record, Done(outcome.job_id, outcome.result))
            return outcome.result.completion_tokens if isinstance(outcome.result, UnderstandResult) else 0
        if outcome.error_kind is not None:
            reason = outcome.error_message or "The job failed."
            self._end(record, Failed(outcome.job_id, reason, outcome.error_kind))
        else:
            self._end(record, Cancelled(outcome.job_id))
        return 0

    def _on_batch_finished(self, slot: WorkerSlot, message: BatchFinished) -> None:
        batch = slot.batches.pop(message.batch_id, None)
        if batch is None:
            return  # a batch already failed by its timeout
        if batch.timer is not None:
            batch.timer.cancel()
        if message.worker_exiting is not None:
            # The worker exits after this message (its device is broken): no new batch for it; its exit
            # notice restarts it at once, and status shows why.
            slot.state = "restarting"
            slot.last_error = message.worker_exiting
            log.error("%s: %s; it exits and is restarted", slot.name, message.worker_exiting)
        elif not self._closing and slot.state == "busy" and not slot.batches:
            slot.state = "idle"
        tokens = sum(self._end_with(outcome) for outcome in message.outcomes)
        tokens += batch.tokens
        for job_id in batch.job_ids:  # a worker that forgot a job must not leave it hanging
            record = self._jobs.get(job_id)
            if record is not None and record.state == "running" and record.slot is slot:
                self._end(record, Failed(job_id, "The worker returned no result for this job.", "JobFailed"))
        # A continuous batch spent its seconds per step decoding beside others: that occupancy is the
        # batch size its step time belongs to.
        size = max(1, round(message.occupancy)) if message.occupancy is not None else batch.size
        self._meter.record(
            kind=batch.kind, size=size, steps=message.steps, seconds=message.seconds, tokens=tokens
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

    def _job_seconds_left(self, record: _Job) -> float | None:
        """Measured estimate of how long a running job still needs: its kind's time at the slot's current
        occupancy, less the steps (images) or the seconds (text) already done."""
        slot = record.slot
        if slot is None:
            return None
        kind = record.queued.kind
        occupancy = self._load(slot, kind) if self._continuous else record.queued.weight
        if not self._continuous:  # the batch runs as one: its size is what sets the step time
            batch = slot.batches.get(record.batch_id or -1)
            occupancy = batch.size if batch is not None else occupancy
        total = self._meter.batch_seconds(kind, max(1, occupancy))
        if total is None:
            return None
        if kind == "generate" and self._meter.image_steps:
            return total * max(0.0, 1.0 - record.step / self._meter.image_steps)
        return max(0.0, total - (time.monotonic() - record.started_at))

    def _remaining_seconds(self, slot: WorkerSlot) -> float | None:
        """How long until the slot is idle (run-to-completion): its running jobs' longest estimate."""
        if not slot.batches:
            return 0.0 if slot.state == "idle" else None
        running = [r for r in self._jobs.values() if r.slot is slot and r.state == "running"]
        estimates = [self._job_seconds_left(r) for r in running]
        if any(e is None for e in estimates):
            return None
        return max((e for e in estimates if e is not None), default=0.0)

    def _queue_etas(self) -> dict[str, float | None]:
        """ETA of every queued job: the queue in fair order, run on the live workers (whole batches in
        run-to-completion mode, see simulate_queue; rows that free up in continuous mode, simulate_rows)."""
        order = self._scheduler.fair_order()
        if not order:
            return {}
        live = [slot for slot in self._slots if slot.state not in ("failed", "stopped")]
        limits = {
            "generate": self.config.max_images_per_batch,
            "understand": self.config.max_understand_batch,
        }
        queued = [(job.job_id, job.kind, job.weight) for job in order]
        if not self._continuous:
            free_at = [self._remaining_seconds(slot) for slot in live]
            return simulate_queue(queued, free_at, self._meter.batch_seconds, limits)
        workers: list[list[RunningRows]] = []
        for slot in live:
            if slot.state not in ("idle", "busy"):
                return dict.fromkeys((job_id for job_id, _, _ in queued), None)
            running = []
            for record in self._jobs.values():
                if record.slot is slot and record.state == "running":
                    left = self._job_seconds_left(record)
                    if left is None:
                        return dict.fromkeys((job_id for job_id, _, _ in queued), None)
                    running.append(RunningRows(record.queued.kind, record.queued.weight, left))
            workers.append(running)
        return simulate_rows(queued, workers, limits, self._meter.batch_seconds)
