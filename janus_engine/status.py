"""Read-only snapshots of the engine for admin commands and ``jobs_of`` (plain data, no live objects)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from janus_engine.ipc import BatchKind

WorkerState = Literal["starting", "idle", "busy", "restarting", "failed", "stopped"]
JobState = Literal["queued", "running"]


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kind: BatchKind
    state: JobState
    position: int | None  # 1-based queue position while queued
    eta_s: float | None  # seconds until done (estimate from measured step times), None if unknown


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    device: str
    state: WorkerState
    pid: int | None
    job_ids: tuple[str, ...]  # what it is running now
    restarts: int
    last_error: str | None


@dataclass(frozen=True)
class EngineStatus:
    queue_depth: int
    running: int
    workers: tuple[WorkerStatus, ...]
    jobs_done: int
    jobs_failed: int
    jobs_cancelled: int
    batches: int  # batches dispatched since start (jobs_done / batches = how much batching helped)
    images_per_s: float  # over the last minute
    tokens_per_s: float
    avg_step_s: float | None  # recent generation step time
    uptime_s: float
