"""Messages between the engine front and a worker process, over one duplex multiprocessing Pipe.

Plain frozen dataclasses of ids, numbers, strings and the protocol's request/result types, so they pickle
cheaply and the front never needs torch to read them. The front only sends ``RunBatch`` to an idle
worker; while a batch runs, the worker polls the pipe between decoding steps and so sees ``CancelJobs``
and ``Shutdown`` at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from janus_engine.protocol import GenerateRequest, GenerateResult, UnderstandRequest, UnderstandResult

BatchKind = Literal["generate", "understand"]

# ---- front -> worker ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    """Per-process settings the worker needs besides the model spec."""

    name: str
    step_delay_s: float = 0.0


@dataclass(frozen=True)
class RunBatch:
    batch_id: int
    kind: BatchKind
    requests: tuple[GenerateRequest, ...] | tuple[UnderstandRequest, ...]


@dataclass(frozen=True)
class CancelJobs:
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Shutdown:
    """Finish (cancelling the running batch) and exit."""


# ---- worker -> front ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    pid: int
    device: str
    dtype: str
    num_image_tokens: int
    # Seconds per generation step measured by the worker's warm-up, as (images in the batch, seconds):
    # the first job already gets an ETA, and the GPU's kernels and allocator are primed before it.
    step_seconds: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class LoadFailed:
    kind: str  # name of a janus_engine.errors class
    message: str


@dataclass(frozen=True)
class StepProgress:
    """One decoding step done for these jobs (one message per step for the whole batch, not per job)."""

    job_ids: tuple[str, ...]
    step: int
    total: int


@dataclass(frozen=True)
class PreviewImage:
    job_id: str
    step: int
    png: bytes


@dataclass(frozen=True)
class TextPieces:
    """The text each job produced in one decoding step, as (job id, delta) pairs: one message per step for
    the whole batch, like StepProgress."""

    pieces: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class JobOutcome:
    """One job's end inside a batch: a result, None (cancelled), or an error (kind + readable message)."""

    job_id: str
    result: GenerateResult | UnderstandResult | None = None
    error_kind: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class BatchFinished:
    batch_id: int
    outcomes: tuple[JobOutcome, ...]
    seconds: float  # wall time of the runtime call(s), for throughput and ETA
    steps: int  # decoding steps run (image tokens or the longest answer's tokens)
    # Set when the device is broken (an unrecoverable CUDA error): the worker exits right after this
    # message, so the front must not hand it another batch; the text says why, for status.
    worker_exiting: str | None = None
