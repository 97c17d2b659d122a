"""The worker's pipe, its run-to-completion serving loop, warm-up and fault rules.

The process entry point is :func:`janus_engine.worker_process.worker_main`; the continuous-batching loop
(:mod:`janus_engine.worker_loop`) reuses the channel and the fault helpers here. The front imports this
module (through ``worker_process``), so it must not import torch at module level.

Protocol (see :mod:`janus_engine.ipc`): the worker answers ``Ready`` or ``LoadFailed``; then, in
run-to-completion mode, for each ``RunBatch`` it streams ``StepProgress`` / ``PreviewImage`` /
``TextPieces`` and ends with one ``BatchFinished``. Between decoding steps it polls the pipe
(``should_cancel``), so ``CancelJobs`` stops a job at the next step and ``Shutdown`` stops the batch.
If the front goes away (pipe closed), the worker exits instead of lingering as an orphan.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, cast

from janus_engine.errors import JanusError
from janus_engine.ipc import (
    BatchFinished,
    CancelJobs,
    ForgetConversations,
    JobOutcome,
    PreviewImage,
    RunBatch,
    Shutdown,
    StepProgress,
    TextPieces,
)
from janus_engine.protocol import (
    GenerateRequest,
    GenerateResult,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.runtime_protocol import Runtime

log = logging.getLogger(__name__)


class FrontGone(Exception):
    """The pipe to the front closed: stop at once."""


class Duplex(Protocol):
    """What the worker needs of its link to the front: a multiprocessing ``Connection`` (local pool) or
    the queues of a Ray actor (:class:`janus_engine.ray_transport.QueueLink`). ``recv`` blocks; both raise
    EOFError or OSError once the front is gone; ``poll`` says, without waiting, whether ``recv`` would not
    block."""

    def send(self, obj: Any) -> None: ...
    def recv(self) -> Any: ...
    def poll(self) -> bool: ...
    def close(self) -> None: ...


class WorkerChannel:
    """The worker's end of the pipe plus the cancel requests that arrived during a batch."""

    def __init__(self, conn: Duplex, step_delay_s: float) -> None:
        self.conn = conn
        self.cancelled: set[str] = set()
        self.shutting_down = False
        self.incoming: list[RunBatch] = []  # batches that arrived while decoding (continuous mode)
        self.forget: list[str] = []  # conversation ids to forget (continuous mode)
        self._send_lock = threading.Lock()
        self._step_delay_s = step_delay_s
        self._seen_this_step: set[str] = set()
        self._progress_ids: list[str] = []
        self._progress_at: tuple[int, int] | None = None
        self._text_pieces: list[tuple[str, str]] = []

    def progress(self, job_id: str, step: int, total: int) -> None:
        """Collect one job's step; a step's jobs go out together as one StepProgress message."""
        if self._progress_at != (step, total):
            self.flush_progress()
            self._progress_at = (step, total)
        self._progress_ids.append(job_id)

    def flush_progress(self) -> None:
        if self._progress_ids and self._progress_at is not None:
            step, total = self._progress_at
            self.send(StepProgress(tuple(self._progress_ids), step, total))
        self._progress_ids = []
        self._progress_at = None

    def text(self, job_id: str, delta: str) -> None:
        """Collect one job's text delta; a step's deltas go out together as one TextPieces message."""
        self._text_pieces.append((job_id, delta))

    def flush_text(self) -> None:
        if self._text_pieces:
            pieces, self._text_pieces = tuple(self._text_pieces), []
            self.send(TextPieces(pieces))

    def flush(self) -> None:
        """Send what this step collected (progress, then text)."""
        self.flush_progress()
        self.flush_text()

    def send(self, message: Any) -> None:
        try:
            with self._send_lock:
                self.conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError) as exc:
            raise FrontGone from exc

    def drain(self) -> None:
        """Read every pending control message without blocking."""
        try:
            while self.conn.poll():
                self.handle(self.conn.recv())
        except (EOFError, OSError) as exc:
            raise FrontGone from exc

    def handle(self, message: Any) -> None:
        """Record a control message: cancels, shutdown, new batches and /forget wait for the loop."""
        if isinstance(message, CancelJobs):
            self.cancelled.update(message.job_ids)
        elif isinstance(message, Shutdown):
            self.shutting_down = True
        elif isinstance(message, RunBatch):
            self.incoming.append(message)
        elif isinstance(message, ForgetConversations):
            self.forget.extend(message.conversation_ids)
        else:  # pragma: no cover - nothing else is ever sent to a worker
            log.warning("worker ignored an unexpected message: %r", type(message).__name__)

    def should_cancel(self, job_id: str) -> bool:
        self.flush()  # the runtime asks after reporting a step: the front hears of it now
        self._pace(job_id)
        self.drain()
        return self.shutting_down or job_id in self.cancelled

    def _pace(self, job_id: str) -> None:
        """The test/benchmark step delay: sleep once per decoding step. The runtime asks should_cancel
        for every live request each step, so seeing a request id again means a new step began."""
        if self._step_delay_s <= 0:
            return
        if job_id in self._seen_this_step:
            time.sleep(self._step_delay_s)
            self._seen_this_step.clear()
        self._seen_this_step.add(job_id)

    def new_batch(self) -> None:
        self.cancelled.clear()
        self._seen_this_step.clear()
        self._progress_ids = []
        self._progress_at = None
        self._text_pieces = []


WARMUP_BATCHES = (1, 4)  # images per warm-up batch: two sizes give the a + b * images fit its slope
WARMUP_STEPS = 6  # decoding steps per warm-up batch; the first (prefill) is not timed


def measure_step_times(runtime: Runtime, step_delay_s: float = 0.0) -> tuple[tuple[int, float], ...]:
    """Run a few decoding steps at two batch sizes and return (images, seconds per step) for each.

    This primes what a first request would otherwise pay for (CUDA context and kernels, the caching
    allocator, lazy initialisations) and gives the engine measured step times, so the first job in a
    fresh engine gets an ETA instead of "unknown". ``step_delay_s`` (the test aid) is part of a step."""

    measured: list[tuple[int, float]] = []
    for images in WARMUP_BATCHES:
        marks: list[float] = []

        def on_progress(job_id: str, step: int, total: int, marks: list[float] = marks) -> None:
            marks.append(time.perf_counter())

        def stop_after_warmup(job_id: str, marks: list[float] = marks) -> bool:
            return len(marks) >= WARMUP_STEPS

        request = GenerateRequest(request_id="warmup", prompt="a warm-up", n_images=images, seed=0)
        runtime.generate_tokens([request], on_progress=on_progress, should_cancel=stop_after_warmup)
        if len(marks) >= 3:
            per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
            measured.append((images, per_step + step_delay_s))
    return tuple(measured)


def _warm_up(runtime: Runtime, step_delay_s: float) -> tuple[tuple[int, float], ...]:
    """A failed warm-up costs only the early ETA: the model loaded, so the worker still serves."""
    try:
        return measure_step_times(runtime, step_delay_s)
    except Exception:
        log.exception("warm-up failed; ETAs stay unknown until the first batch finishes")
        return ()


# Exit status of a worker that stops because its device is broken; the front restarts it.
DEVICE_ERROR_EXIT = 3


def serve(channel: WorkerChannel, runtime: Runtime) -> None:
    while True:
        try:
            message = channel.conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(message, Shutdown):
            return
        if isinstance(message, CancelJobs):
            continue  # for a batch that already ended
        if isinstance(message, RunBatch):
            channel.new_batch()
            finished = run_batch(channel, runtime, message)
            channel.send(finished)
            if finished.worker_exiting is not None:
                # A CUDA context that saw an illegal access or a device-side assert stays broken for the
                # life of the process: only a fresh process (which the front starts) can serve again.
                log.error("worker exits: %s", finished.worker_exiting)
                channel.conn.close()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(DEVICE_ERROR_EXIT)
            if channel.shutting_down:
                return


_CUDA_ERROR_MARKERS = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "cublas_status",
    "cudnn_status",
)


def is_unrecoverable_device_error(exc: BaseException) -> bool:
    """True for a CUDA error that poisons the process (not out-of-memory, which a smaller batch or a
    freed cache can cure): torch.AcceleratorError, or a RuntimeError whose message names a CUDA fault."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return False
    if name == "AcceleratorError":
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(marker in text for marker in _CUDA_ERROR_MARKERS)
    return False


def _free_device_memory() -> None:
    """Release what a failed call left behind, so a retry has the memory the failure was short of."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_batch(channel: WorkerChannel, runtime: Runtime, batch: RunBatch) -> BatchFinished:
    """Run one batch; if the batched call fails, retry each job alone so one bad request (or a batch too
    big for memory) fails only itself. An unrecoverable device error is not retried: the batch's jobs
    fail and the result asks the worker to exit (see :func:`is_unrecoverable_device_error`)."""
    started = time.perf_counter()
    requests, rejected = _screen(runtime, batch.requests)
    if not requests:
        return BatchFinished(batch.batch_id, tuple(rejected), time.perf_counter() - started, 0)
    failure: tuple[str, str] | None = None  # (type name, message) of the batched call's error
    device_error: str | None = None
    try:
        outcomes, steps = _call_runtime(channel, runtime, batch.kind, requests)
    except FrontGone:
        raise
    except Exception as exc:  # reported per job: a bad request never kills the worker
        outcomes, steps = [_error_outcome(r.request_id, exc) for r in requests], 0
        failure = (type(exc).__name__, str(exc))
        if is_unrecoverable_device_error(exc):
            device_error = _device_error_text(exc)
            outcomes = [_device_lost_outcome(r.request_id) for r in requests]
        # The retry runs outside this block: exc's traceback holds the failed call's frames and with them
        # its tensors (KV cache, logits), which a retry meant for "too big for memory" needs freed.
        del exc
    if failure is not None and device_error is None and len(requests) > 1:
        log.warning("batch of %d failed (%s: %s); retrying its jobs one by one", len(requests), *failure)
        _free_device_memory()
        outcomes, steps = [], 0
        for request in requests:
            if device_error is not None:  # the device is gone: the rest cannot run on it either
                outcomes.append(_device_lost_outcome(request.request_id))
                continue
            single, single_steps, device_error = _run_single(channel, runtime, batch.kind, request)
            outcomes.extend(single)
            steps = max(steps, single_steps)
    return BatchFinished(
        batch_id=batch.batch_id,
        outcomes=tuple(rejected) + tuple(outcomes),
        seconds=time.perf_counter() - started,
        steps=steps,
        worker_exiting=device_error,
    )


def _screen(
    runtime: Runtime, requests: Sequence[GenerateRequest | UnderstandRequest]
) -> tuple[list[GenerateRequest | UnderstandRequest], list[JobOutcome]]:
    """Check each request of a batch before running it (token limits included): a bad one fails alone
    instead of failing the batched call and sending every other job through the slow one-by-one retry
    (which would let one user slow everybody down on purpose). A batch of one needs no screening."""
    if len(requests) < 2:
        return list(requests), []
    valid: list[GenerateRequest | UnderstandRequest] = []
    rejected: list[JobOutcome] = []
    for request in requests:
        try:
            runtime.validate(request)
        except JanusError as exc:
            rejected.append(_error_outcome(request.request_id, exc))
        else:
            valid.append(request)
    return valid, rejected


def _run_single(
    channel: WorkerChannel, runtime: Runtime, kind: str, request: GenerateRequest | UnderstandRequest
) -> tuple[list[JobOutcome], int, str | None]:
    try:
        single, steps = _call_runtime(channel, runtime, kind, [request])
        return single, steps, None
    except FrontGone:
        raise
    except Exception as exc:
        if is_unrecoverable_device_error(exc):
            device_error = _device_error_text(exc)
            return [_device_lost_outcome(request.request_id)], 0, device_error
        return [_error_outcome(request.request_id, exc)], 0, None


def _call_runtime(
    channel: WorkerChannel,
    runtime: Runtime,
    kind: str,
    requests: Sequence[GenerateRequest | UnderstandRequest],
) -> tuple[list[JobOutcome], int]:
    max_step = 0

    def on_progress(job_id: str, step: int, total: int) -> None:
        nonlocal max_step
        max_step = max(max_step, step)
        channel.progress(job_id, step, total)

    def on_preview(job_id: str, step: int, png: bytes) -> None:
        channel.flush_progress()  # keep Progress(step) before its preview
        channel.send(PreviewImage(job_id, step, png))

    results: list[GenerateResult | None] | list[UnderstandResult | None]
    if kind == "generate":
        results = runtime.generate(
            cast(Sequence[GenerateRequest], requests),
            on_progress=on_progress,
            on_preview=on_preview,
            should_cancel=channel.should_cancel,
        )
    else:
        answers = runtime.understand(
            cast(Sequence[UnderstandRequest], requests),
            on_text=channel.text,
            should_cancel=channel.should_cancel,
        )
        max_step = max((r.completion_tokens for r in answers if r is not None), default=0)
        results = answers
    channel.flush()
    outcomes = [
        JobOutcome(request.request_id, result) for request, result in zip(requests, results, strict=True)
    ]
    return outcomes, max_step


def _device_error_text(exc: BaseException) -> str:
    return f"unrecoverable device error: {type(exc).__name__}: {str(exc)[:200]}"


def _device_lost_outcome(job_id: str) -> JobOutcome:
    message = "The model's device failed while running this job; the worker is restarting. Please try again."
    return JobOutcome(job_id, error_kind="JobFailed", error_message=message)


def _error_outcome(job_id: str, exc: BaseException) -> JobOutcome:
    if isinstance(exc, JanusError):
        return JobOutcome(job_id, error_kind=type(exc).__name__, error_message=exc.user_message)
    return JobOutcome(
        job_id,
        error_kind="JobFailed",
        error_message=f"The model failed on this request ({type(exc).__name__}: {str(exc)[:200]}).",
    )
