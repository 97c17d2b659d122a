"""Messages between the engine front and a worker process, over one duplex multiprocessing Pipe.

Plain frozen dataclasses of ids, numbers, strings and the protocol's request/result types, so they pickle
cheaply and the front never needs torch to read them. The front only sends ``RunBatch`` to an idle
worker in run-to-completion mode; in continuous mode it sends ``RunBatch`` whenever the worker has free
rows, and the worker admits the batch's jobs into its running decode at the next step and reports each
job's end (``JobFinished``) as it happens. Either way the worker polls the pipe between decoding steps and
so sees ``CancelJobs`` and ``Shutdown`` at the next step.
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
    # "continuous": requests join and leave the running decode (worker_loop); "run_to_completion": one
    # batch at a time, to its end (worker.run_batch). See EngineSettings.batching.
    batching: str = "continuous"
    max_images: int = 16  # image rows (pairs) the continuous decoder holds; at least one request's worth
    max_texts: int = 8  # conversations the continuous text decoder holds
    cuda_graphs: bool = True  # static-shape image steps captured as CUDA graphs (CUDA devices only)


@dataclass(frozen=True)
class RunBatch:
    batch_id: int
    kind: BatchKind
    requests: tuple[GenerateRequest, ...] | tuple[UnderstandRequest, ...]


@dataclass(frozen=True)
class CancelJobs:
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class ForgetConversations:
    """/forget: drop what the worker keeps of these conversations (their images' cached features)."""

    conversation_ids: tuple[str, ...]


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
class JobFinished:
    """One job of a running batch ended (continuous batching: jobs end one by one, the batch goes on)."""

    batch_id: int
    outcome: JobOutcome


@dataclass(frozen=True)
class BatchFinished:
    batch_id: int
    outcomes: tuple[JobOutcome, ...]
    seconds: float  # wall time of the runtime call(s), for throughput and ETA
    steps: int  # decoding steps run (image tokens or the longest answer's tokens)
    # Set when the device is broken (an unrecoverable CUDA error): the worker exits right after this
    # message, so the front must not hand it another batch; the text says why, for status.
    worker_exiting: str | None = None
    # Continuous batching: the mean number of images decoding beside this batch's during its steps (its
    # seconds per step were spent at that occupancy, which is what the ETA fit needs); None = the batch ran
    # alone, at its own size.
    occupancy: float | None = None
