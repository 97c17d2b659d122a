"""Measured speed: decoding step times for ETAs, and recent throughput for the admin status.

Estimates only ever come from what this engine measured (no guessed constants): each worker times a few
decoding steps at two batch sizes when it starts (``worker.measure_step_times``), then every finished
batch adds its figure; with nothing measured, ETAs are None ("unknown").
A generation step's time is fitted as a + b * images over the last
batches (on a GPU b is near zero, on a CPU it dominates), so a queued job's ETA follows the batch sizes
it will actually run in.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_HISTORY = 32
_THROUGHPUT_WINDOW_S = 60.0


@dataclass(frozen=True)
class _Sample:
    finished_at: float
    kind: str
    size: int  # images (generate) or requests (understand)
    steps: int
    seconds: float
    tokens: int


class SpeedMeter:
    """Remembers recent batches; answers 'how long will this take' and 'how fast are we going'."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[_Sample] = deque(maxlen=256)
        self._gen_steps: deque[tuple[int, float]] = deque(maxlen=_HISTORY)  # (images, seconds per step)
        self._und_batches: deque[float] = deque(maxlen=_HISTORY)  # seconds per understanding batch
        self.image_steps: int | None = None  # decoding steps per image, learned from the workers

    def record(self, *, kind: str, size: int, steps: int, seconds: float, tokens: int = 0) -> None:
        self._samples.append(_Sample(self._clock(), kind, size, steps, seconds, tokens))
        if kind == "generate" and steps > 0:
            self._gen_steps.append((size, seconds / steps))
            self.image_steps = steps
        elif kind == "understand":
            self._und_batches.append(seconds)

    def record_warmup(self, images: int, seconds_per_step: float, image_steps: int) -> None:
        """A worker's warm-up measurement: feeds ETAs like a finished batch, but not the throughput."""
        if images > 0 and seconds_per_step > 0:
            self._gen_steps.append((images, seconds_per_step))
            self.image_steps = self.image_steps or image_steps

    # ---- estimates -------------------------------------------------------------------------------------

    def step_seconds(self, images: int) -> float | None:
        """Predicted seconds per generation step for a batch of ``images`` (least squares on history)."""
        if not self._gen_steps:
            return None
        n = len(self._gen_steps)
        mean_x = sum(x for x, _ in self._gen_steps) / n
        mean_y = sum(y for _, y in self._gen_steps) / n
        var_x = sum((x - mean_x) ** 2 for x, _ in self._gen_steps)
        if var_x == 0:  # one batch size seen: assume time proportional to images (the CPU case)
            return mean_y * images / mean_x if mean_x else mean_y
        slope = sum((x - mean_x) * (y - mean_y) for x, y in self._gen_steps) / var_x
        slope = max(slope, 0.0)
        return max(mean_y + slope * (images - mean_x), min(y for _, y in self._gen_steps) * 0.5)

    def batch_seconds(self, kind: str, size: int) -> float | None:
        if kind == "generate":
            per_step = self.step_seconds(size)
            if per_step is None or self.image_steps is None:
                return None
            return per_step * self.image_steps
        if not self._und_batches:
            return None
        return sum(self._und_batches) / len(self._und_batches)

    def avg_step_seconds(self) -> float | None:
        if not self._gen_steps:
            return None
        return sum(y for _, y in self._gen_steps) / len(self._gen_steps)

    # ---- throughput ------------------------------------------------------------------------------------

    def throughput(self, since: float) -> tuple[float, float]:
        """(images/s, tokens/s) over the last minute, or since ``since`` if the engine is younger."""
        now = self._clock()
        window = max(min(_THROUGHPUT_WINDOW_S, now - since), 1e-9)
        recent = [s for s in self._samples if now - s.finished_at <= window]
        images = sum(s.size for s in recent if s.kind == "generate")
        tokens = sum(s.tokens for s in recent if s.kind == "understand")
        return images / window, tokens / window


def simulate_queue(
    order: Sequence[tuple[str, str, int]],
    free_at: Sequence[float | None],
    batch_seconds: Callable[[str, int], float | None],
    limits: dict[str, int],
) -> dict[str, float | None]:
    """Seconds until each queued job is done: ``order`` is (job_id, kind, weight) in fair order, grouped
    greedily into batches of one kind up to ``limits[kind]``; each batch goes to whichever worker frees
    up first (``free_at``: seconds until each live worker is idle). Unknown (None) if any needed figure
    has not been measured yet or no worker is alive: better no ETA than an invented one."""
    unknown: dict[str, float | None] = {job_id: None for job_id, _, _ in order}
    if not free_at or any(t is None for t in free_at):
        return unknown
    workers = [float(t) for t in free_at if t is not None]
    heapq.heapify(workers)
    etas: dict[str, float | None] = {}
    index = 0
    while index < len(order):
        _, kind, size = order[index]
        members = [order[index][0]]
        index += 1
        while index < len(order) and order[index][1] == kind and size + order[index][2] <= limits[kind]:
            size += order[index][2]
            members.append(order[index][0])
            index += 1
        seconds = batch_seconds(kind, size)
        if seconds is None:
            return unknown
        finish = heapq.heappop(workers) + seconds
        heapq.heappush(workers, finish)
        etas.update(dict.fromkeys(members, finish))
    return etas


@dataclass(frozen=True)
class RunningRows:
    """A running job as the continuous ETA sees it: its kind, the rows it holds, seconds it still needs."""

    kind: str
    weight: int
    seconds_left: float


def simulate_rows(
    order: Sequence[tuple[str, str, int]],
    workers: Sequence[Sequence[RunningRows]],
    capacity: dict[str, int],
    job_seconds: Callable[[str, int], float | None],
) -> dict[str, float | None]:
    """Seconds until each queued job is done under continuous batching.

    A queued job (``order``: (job_id, kind, weight) in fair order) joins a worker as soon as enough of
    that kind's rows (``capacity[kind]`` per worker) are free, which is when running jobs finish: it
    counts the rows that will free up, not whole batches. Within a kind nobody overtakes (the scheduler's
    rule), so a job never starts before the one ahead of it. It then runs for ``job_seconds(kind,
    occupancy)``: the measured time of a job decoding beside ``occupancy`` rows of its kind. A job
    larger than a whole worker starts when its kind is idle there. Unknown (None) for every job if a
    needed figure is missing or no worker is alive."""
    unknown: dict[str, float | None] = {job_id: None for job_id, _, _ in order}
    if not workers:
        return unknown
    # Per worker and kind: (end time, rows) of what runs or will run there.
    ends: list[dict[str, list[tuple[float, int]]]] = []
    for running in workers:
        by_kind: dict[str, list[tuple[float, int]]] = {}
        for job in running:
            by_kind.setdefault(job.kind, []).append((max(0.0, job.seconds_left), job.weight))
        ends.append(by_kind)
    last_start: dict[str, float] = {}
    etas: dict[str, float | None] = {}
    for job_id, kind, weight in order:
        cap = capacity[kind]
        best: tuple[float, int, int] | None = None  # (start, worker, rows in use at the start)
        for index, by_kind in enumerate(ends):
            start, in_use = _earliest_start(by_kind.get(kind, []), weight, cap, last_start.get(kind, 0.0))
            if best is None or start < best[0]:
                best = (start, index, in_use)
        assert best is not None
        start, index, in_use = best
        seconds = job_seconds(kind, min(cap, in_use + weight) if weight <= cap else weight)
        if seconds is None:
            return unknown
        finish = start + seconds
        ends[index].setdefault(kind, []).append((finish, weight))
        last_start[kind] = start
        etas[job_id] = finish
    return etas


def _earliest_start(
    running: list[tuple[float, int]], weight: int, cap: int, not_before: float
) -> tuple[float, int]:
    """The first moment from ``not_before`` on when ``weight`` rows are free (all rows, for a job
    bigger than ``cap``), and the rows in use then."""
    for t in sorted({not_before, *(end for end, _ in running if end > not_before)}):
        in_use = sum(rows for end, rows in running if end > t)
        if in_use + weight <= cap or in_use == 0:
            return t, in_use
    return not_before, 0  # pragma: no cover - the last end time always leaves the worker empty
