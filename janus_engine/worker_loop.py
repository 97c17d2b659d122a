"""The worker's continuous-batching loop: requests join the running decode, finished ones leave at once.

Run-to-completion (:func:`janus_engine.worker.run_batch`) serves one batch to its end, so a job that
arrives a step later waits for the whole batch (13.9 s instead of 7.8 s measured on a CPU), and a
/describe waits behind 576 image steps. Here the worker accepts ``RunBatch`` messages while it decodes:

* every iteration it reads the pipe (new batches, cancels, /forget, shutdown), admits waiting requests
  into free rows (images in arrival order, no overtaking within a kind, so a big request is not starved
  by small ones), runs ONE image step and ONE text step, and sends what they produced;
* a job's end goes out as ``JobFinished`` the moment it happens; a batch's ``BatchFinished`` (timing for
  the front's speed meter) follows its last job;
* the step's finished images and due previews are VQ-decoded in one batched call
  (:meth:`DecodeSession.decode_pixels`); PNG encoding runs on a small thread pool and its results are
  sent in submission order, so a job's previews arrive before its result, and no decode step ever waits
  for an encoder.

Faults, as in run-to-completion: a request that fails its checks fails alone before it takes a row; a
step that raises resets its decoder and its jobs are retried one by one through the run-to-completion
path (so one poison request fails only itself); an unrecoverable device error fails every job the worker
holds and the worker exits for a fresh process (:data:`janus_engine.worker.DEVICE_ERROR_EXIT`).

This module imports no torch: the session (``janus_engine.runtime.decode_session``) does the tensor work.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from functools import partial
from typing import Any

from janus_engine.errors import JanusError
from janus_engine.ipc import (
    BatchFinished,
    BatchKind,
    JobFinished,
    JobOutcome,
    PreviewImage,
    RunBatch,
    WorkerOptions,
)
from janus_engine.protocol import GenerateRequest, GenerateResult, UnderstandRequest
from janus_engine.runtime_protocol import Runtime
from janus_engine.worker import (
    DEVICE_ERROR_EXIT,
    FrontGone,
    WorkerChannel,
    _device_error_text,
    _device_lost_outcome,
    _error_outcome,
    _free_device_memory,
    _run_single,
    is_unrecoverable_device_error,
)

log = logging.getLogger(__name__)

_ENCODER_THREADS = 2
_IDLE_WAIT_S = 0.02  # how long an iteration with no decode work waits for an encoder before polling again


@dataclass
class _Group:
    """One RunBatch: its jobs end one by one; the batch is finished when the last one has."""

    batch_id: int
    kind: BatchKind
    waiting: set[str]
    started: float
    steps: int = 0
    occupancy_sum: float = 0.0  # images decoding, summed over the image steps this batch took part in
    occupancy_steps: int = 0


@dataclass
class _Encoding:
    future: Future
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]


def _log_error(exc: BaseException) -> None:
    log.warning("encoding a preview failed: %s: %s", type(exc).__name__, exc)


class ContinuousLoop:
    """Serves one worker's pipe with a :class:`~janus_engine.runtime.decode_session.DecodeSession`."""

    def __init__(
        self, channel: WorkerChannel, runtime: Runtime, session: Any, options: WorkerOptions
    ) -> None:
        self.channel = channel
        self.runtime = runtime
        self.session = session
        self.step_delay_s = options.step_delay_s
        self.total_steps = int(runtime.num_image_tokens)
        self.groups: dict[int, _Group] = {}
        self.group_of: dict[str, _Group] = {}
        self.requests: dict[str, GenerateRequest | UnderstandRequest] = {}  # every job not yet ended
        self.pending: dict[BatchKind, deque[str]] = {"generate": deque(), "understand": deque()}
        self.live: dict[BatchKind, set[str]] = {"generate": set(), "understand": set()}
        self.preview_every: dict[str, int] = {}
        self.encoding: deque[_Encoding] = deque()
        self.pool = ThreadPoolExecutor(_ENCODER_THREADS, thread_name_prefix="png-encoder")
        self.device_error: str | None = None
        # One iteration: admit (text first: it is cheap), one image step, one text step.
        self._phases: tuple[Callable[[], bool], ...] = (
            lambda: self._admit("understand"),
            lambda: self._admit("generate"),
            self._step_images,
            self._step_texts,
        )

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                if not self._busy():
                    try:
                        self.channel.handle(self.channel.conn.recv())
                    except (EOFError, OSError):
                        return
                self.channel.drain()
                self._take_messages()
                if self.channel.shutting_down:
                    self._shut_down()
                    return
                worked = False
                for phase in self._phases:
                    worked = phase() or worked
                    if self.device_error is not None:
                        self.channel.flush()
                        self._exit_for_device_error()
                self.channel.flush()
                self._send_encoded(block=not worked)
                if worked and self.step_delay_s > 0:
                    time.sleep(self.step_delay_s)  # the test/benchmark aid: once per decoding iteration
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _busy(self) -> bool:
        """Work to do without waiting for a message: jobs, encodings, or messages already read (the
        one-by-one retry reads the pipe while it runs)."""
        channel = self.channel
        return bool(
            self.requests
            or self.encoding
            or channel.incoming
            or channel.cancelled
            or channel.forget
            or channel.shutting_down
        )

    # ---- messages ----------------------------------------------------------------------------------

    def _take_messages(self) -> None:
        channel = self.channel
        for batch in channel.incoming:
            self._accept(batch)
        channel.incoming.clear()
        if channel.forget:
            dropped = self.session.forget(list(channel.forget))
            log.info("forgot %d conversations (%d cached images dropped)", len(channel.forget), dropped)
            channel.forget.clear()
        if channel.cancelled:
            self._cancel(set(channel.cancelled))
            channel.cancelled.clear()

    def _accept(self, batch: RunBatch) -> None:
        group = _Group(batch.batch_id, batch.kind, set(), time.perf_counter())
        self.groups[batch.batch_id] = group
        for request in batch.requests:
            key = request.request_id
            if key in self.requests:  # the front never reuses a live id; refuse rather than mix two jobs up
                self._send_outcome_for(
                    group,
                    JobOutcome(
                        key,
                        error_kind="InvalidRequest",
                        error_message=("Another job with this id is running on the worker."),
                    ),
                )
                continue
            group.waiting.add(key)
            self.group_of[key] = group
            self.requests[key] = request
            self.pending[batch.kind].append(key)
            if isinstance(request, GenerateRequest):
                self.preview_every[key] = request.preview_every
        if not group.waiting:
            self._finish_group(group)

    def _cancel(self, keys: set[str]) -> None:
        for queue in self.pending.values():
            for key in [k for k in queue if k in keys]:
                queue.remove(key)
                self._end(key, JobOutcome(key))
        live = {k for kind in self.live.values() for k in kind if k in keys}
        if live:
            self.session.drop(live)
            for key in live:
                self._end(key, JobOutcome(key))

    # ---- admission ---------------------------------------------------------------------------------

    def _admit(self, kind: BatchKind) -> bool:
        """Move waiting jobs of ``kind`` into free rows, in arrival order; each checked alone first."""
        queue = self.pending[kind]
        jobs: list[tuple[str, Any]] = []
        free = self.session.free_images if kind == "generate" else self.session.free_texts
        while queue:
            key = queue[0]
            request = self.requests[key]
            need = request.n_images if isinstance(request, GenerateRequest) else 1
            if need > free:
                break  # no overtaking within a kind: the next rows to free up are this job's
            queue.popleft()
            try:
                if isinstance(request, GenerateRequest):
                    job = self.session.prepare_generate(request)
                else:
                    job = self.session.prepare_understand(request)
            except JanusError as exc:
                self._end(key, _error_outcome(key, exc))
                continue
            jobs.append((key, job))
            free -= need
        if not jobs:
            return False
        try:
            self._admit_jobs(kind, [job for _, job in jobs])
        except Exception as exc:
            if self._is_fatal(exc):
                return True
            del exc
            _free_device_memory()
            for key, job in jobs:  # one bad prompt must fail alone
                try:
                    self._admit_jobs(kind, [job])
                except Exception as single:
                    if self._is_fatal(single):
                        return True
                    self._end(key, _error_outcome(key, single))
        return False  # a prefill is work, but the steps that follow decide whether to pace

    def _admit_jobs(self, kind: BatchKind, jobs: list[Any]) -> None:
        if kind == "generate":
            self.session.admit_images(jobs)
        else:
            self.session.admit_texts(jobs)
        self.live[kind].update(job.key for job in jobs)

    # ---- steps -------------------------------------------------------------------------------------

    def _preview_due(self, key: str, done: int) -> bool:
        every = self.preview_every.get(key, 0)
        return every > 0 and done % every == 0

    def _step_images(self) -> bool:
        if not self.live["generate"]:
            return False
        in_use = self.session.images_in_use
        try:
            report = self.session.step_images(self._preview_due)
            pixels = self.session.decode_pixels(report.finished, report.previews)
        except Exception as exc:
            if not self._is_fatal(exc):
                del exc
                self._retry_alone("generate")
            return True
        total = self.total_steps
        for key, done in sorted(report.progressed, key=lambda item: item[1]):
            self.channel.progress(key, done, total)
            group = self.group_of.get(key)
            if group is not None:
                group.steps = max(group.steps, done)
        for group in {id(g): g for k in self.live["generate"] if (g := self.group_of.get(k))}.values():
            group.occupancy_sum += in_use
            group.occupancy_steps += 1
        for key, images in pixels.previews.items():
            step = next(done for k, done in report.progressed if k == key)
            self._encode(self._encode_preview, images, partial(self._send_preview, key, step))
        for key, images in pixels.finished.items():
            self.live["generate"].discard(key)
            seed = self.session.seed_of(key)
            self.session.finish(key)
            self._encode(
                self._encode_images,
                images,
                partial(self._images_done, key, seed),
                partial(self._encoding_failed, key),
            )
        return True

    def _images_done(self, key: str, seed: int | None, pngs: tuple[bytes, ...]) -> None:
        self._end(key, JobOutcome(key, GenerateResult(key, pngs, seed, self.total_steps)))

    def _encoding_failed(self, key: str, exc: BaseException) -> None:
        self._end(key, _error_outcome(key, exc))

    def _step_texts(self) -> bool:
        if not self.live["understand"]:
            return False
        try:
            report = self.session.step_texts()
        except Exception as exc:
            if not self._is_fatal(exc):
                del exc
                self._retry_alone("understand")
            return True
        for key, piece in report.pieces:
            self.channel.text(key, piece)
        for key, output in report.finished.items():
            self.live["understand"].discard(key)
            result = self.session.text_result(key, output)
            group = self.group_of.get(key)
            if group is not None:
                group.steps = max(group.steps, result.completion_tokens)
            self.channel.flush()  # the job's last text goes out before its result
            self._end(key, JobOutcome(key, result))
        return True

    def _retry_alone(self, kind: BatchKind) -> None:
        """A step failed: its decoder starts afresh and each of its jobs runs alone to its end, so a job
        that breaks the batched step fails only itself."""
        keys = sorted(self.live[kind], key=list(self.requests).index)
        log.warning("a %s step failed with %d jobs in it; retrying them one by one", kind, len(keys))
        if kind == "generate":
            self.session.images.reset()
        else:
            self.session.texts.reset()
        self.live[kind].clear()
        _free_device_memory()
        for key in keys:
            request = self.requests[key]
            outcomes, steps, device_error = _run_single(self.channel, self.runtime, kind, request)
            if device_error is not None:
                self.device_error = device_error
                return
            group = self.group_of.get(key)
            if group is not None:
                group.steps = max(group.steps, steps)
            if key in self.channel.cancelled:
                self.channel.cancelled.discard(key)
            for outcome in outcomes:
                self._end(outcome.job_id, outcome)

    def _is_fatal(self, exc: BaseException) -> bool:
        """An unrecoverable device error: remember it (the loop exits after telling the front)."""
        if is_unrecoverable_device_error(exc):
            self.device_error = _device_error_text(exc)
            return True
        return False

    # ---- encoding ----------------------------------------------------------------------------------

    @staticmethod
    def _encode_images(pixels: Any) -> tuple[bytes, ...]:
        from janus_engine.runtime.decode_session import encode_images

        return encode_images(pixels)

    @staticmethod
    def _encode_preview(pixels: Any) -> bytes:
        from janus_engine.runtime.decode_session import encode_preview

        return encode_preview(pixels)

    def _encode(
        self,
        fn: Callable[[Any], Any],
        pixels: Any,
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.encoding.append(_Encoding(self.pool.submit(fn, pixels), on_done, on_error or _log_error))

    def _send_encoded(self, *, block: bool) -> None:
        """Send finished encodings in submission order; with ``block``, wait a moment for the first."""
        if block and self.encoding and not self.encoding[0].future.done():
            wait_futures([self.encoding[0].future], timeout=_IDLE_WAIT_S)
        while self.encoding and self.encoding[0].future.done():
            item = self.encoding.popleft()
            error = item.future.exception()
            if error is not None:
                item.on_error(error)
            else:
                item.on_done(item.future.result())

    def _send_preview(self, key: str, step: int, png: bytes) -> None:
        if key in self.requests:
            self.channel.send(PreviewImage(key, step, png))

    # ---- endings -----------------------------------------------------------------------------------

    def _end(self, key: str, outcome: JobOutcome) -> None:
        """A job is over: tell the front now; close its batch if it was the last one."""
        if self.requests.pop(key, None) is None:
            return
        self.preview_every.pop(key, None)
        for live in self.live.values():
            live.discard(key)
        group = self.group_of.pop(key, None)
        if group is None:  # pragma: no cover - every accepted job has a group
            return
        self._send_outcome_for(group, outcome)
        group.waiting.discard(key)
        if not group.waiting:
            self._finish_group(group)

    def _send_outcome_for(self, group: _Group, outcome: JobOutcome) -> None:
        self.channel.send(JobFinished(group.batch_id, outcome))

    def _finish_group(self, group: _Group, worker_exiting: str | None = None) -> None:
        self.groups.pop(group.batch_id, None)
        occupancy = group.occupancy_sum / group.occupancy_steps if group.occupancy_steps else None
        self.channel.send(
            BatchFinished(
                batch_id=group.batch_id,
                outcomes=(),
                seconds=time.perf_counter() - group.started,
                steps=group.steps,
                worker_exiting=worker_exiting,
                occupancy=occupancy,
            )
        )

    def _shut_down(self) -> None:
        """Shutdown: what is encoding is sent; everything else ends as cancelled."""
        live = {k for kind in self.live.values() for k in kind}
        if live:
            self.session.drop(live)
        wait_futures([item.future for item in self.encoding])
        self._send_encoded(block=False)
        for key in list(self.requests):
            self._end(key, JobOutcome(key))

    def _exit_for_device_error(self) -> None:
        """Fail every job the worker holds with the device-lost reason, close every batch saying the
        worker exits, and exit: a broken CUDA context cannot serve again."""
        reason = self.device_error
        assert reason is not None
        log.error("worker exits: %s", reason)
        try:
            for key in list(self.requests):
                group = self.group_of.pop(key, None)
                self.requests.pop(key, None)
                if group is not None:
                    self._send_outcome_for(group, _device_lost_outcome(key))
                    group.waiting.discard(key)
            for group in list(self.groups.values()):
                self._finish_group(group, worker_exiting=reason)
        except FrontGone:
            pass
        self.channel.conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(DEVICE_ERROR_EXIT)
