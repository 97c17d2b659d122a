"""The fair queue: admission limits, round-robin order between users, and batch selection.

Pure Python and synchronous (no asyncio, no processes), so its rules are unit-tested on their own and the
engine front only asks it "may this job enter?" and "what should an idle worker run next?".

Fairness rule: the next job always comes from the user who was served least recently (users never served,
or not since their queue emptied, first, in order of arrival); each user's own jobs stay in the order they
were submitted. So one user's ten jobs never starve another's one: the newcomer is served next.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from janus_engine.errors import InvalidRequest, QueueFull, UserLimitReached
from janus_engine.ipc import BatchKind
from janus_engine.protocol import GenerateRequest, UnderstandRequest


@dataclass
class QueuedJob:
    job_id: str
    user_id: str
    request: GenerateRequest | UnderstandRequest
    enqueued_at: float  # monotonic seconds, for the batch gathering window
    seq: int = field(default=0)  # arrival order, assigned by the scheduler

    @property
    def kind(self) -> BatchKind:
        return "generate" if isinstance(self.request, GenerateRequest) else "understand"

    @property
    def weight(self) -> int:
        """What the job costs a batch: images for generation, one slot for understanding."""
        return self.request.n_images if isinstance(self.request, GenerateRequest) else 1


class FairScheduler:
    """Queued jobs per user, admission limits, fair order and batch picking. See the module docstring."""

    def __init__(self, *, max_queue: int, max_queued_per_user: int, max_running_per_user: int) -> None:
        self.max_queue = max_queue
        self.max_queued_per_user = max_queued_per_user
        self.max_running_per_user = max_running_per_user
        self._queues: dict[str, deque[QueuedJob]] = {}
        self._by_id: dict[str, QueuedJob] = {}
        self._running: dict[str, str] = {}  # job_id -> user_id
        self._last_served: dict[str, int] = {}  # user -> serve tick (absent = not served recently)
        self._tick = itertools.count(1)
        self._seq = itertools.count(1)

    # ---- admission -------------------------------------------------------------------------------------

    def add(self, job: QueuedJob) -> None:
        """Queue ``job`` or raise at once: InvalidRequest (id in use), QueueFull, UserLimitReached."""
        if job.job_id in self._by_id or job.job_id in self._running:
            raise InvalidRequest(f"A job with id {job.job_id!r} is already queued or running.")
        if len(self._by_id) >= self.max_queue:
            raise QueueFull(
                f"The queue is full ({self.max_queue} jobs waiting). Please try again in a little while."
            )
        queued_of_user = len(self._queues.get(job.user_id, ()))
        if queued_of_user >= self.max_queued_per_user:
            raise UserLimitReached(
                f"You already have {queued_of_user} jobs waiting (the limit is {self.max_queued_per_user}). "
                "Wait for one to finish or cancel one."
            )
        job.seq = next(self._seq)
        self._queues.setdefault(job.user_id, deque()).append(job)
        self._by_id[job.job_id] = job

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a queued job out (cancellation). Returns None if it is not queued."""
        job = self._by_id.pop(job_id, None)
        if job is None:
            return None
        queue = self._queues[job.user_id]
        queue.remove(job)
        if not queue:
            del self._queues[job.user_id]
            self._forget_if_idle(job.user_id)
        return job

    def finish(self, job_id: str) -> None:
        """A running job ended (any way): its user's running count drops."""
        user = self._running.pop(job_id, None)
        if user is not None:
            self._forget_if_idle(user)

    # ---- inspection ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def queued_jobs(self) -> list[QueuedJob]:
        return list(self._by_id.values())

    def running_of(self, user_id: str) -> int:
        return sum(1 for user in self._running.values() if user == user_id)

    def fair_order(self) -> list[QueuedJob]:
        """Every queued job in the order the dispatcher would take them (ignoring running caps)."""
        return list(self._iter_fair())

    def position(self, job_id: str) -> int | None:
        """1-based place of a queued job in the fair order, None if it is not queued."""
        if job_id not in self._by_id:
            return None
        for index, job in enumerate(self._iter_fair(), start=1):
            if job.job_id == job_id:
                return index
        return None  # pragma: no cover - unreachable while the two indexes agree

    def oldest_enqueued_at(self) -> float | None:
        return min((job.enqueued_at for job in self._by_id.values()), default=None)

    def dispatchable_weight(self) -> int:
        """Total weight of queued jobs whose users are below their running cap (what could run now)."""
        return sum(
            job.weight
            for user, queue in self._queues.items()
            if self.running_of(user) < self.max_running_per_user
            for job in queue
        )

    # ---- dispatch --------------------------------------------------------------------------------------

    def next_batch(self, *, max_images: int, max_understand: int) -> list[QueuedJob]:
        """Take the next batch for an idle worker: the first job in fair order whose user may run another,
        then, in fair order, more jobs of the same kind while they fit (images for generation, requests
        for understanding). A user whose next job does not fit is skipped for this batch, so each user's
        jobs still start in submission order. The picked jobs leave the queue and count as running.
        """
        picked: list[QueuedJob] = []
        kind: BatchKind | None = None
        used = 0
        skipped_users: set[str] = set()
        extra_running: dict[str, int] = {}
        for job in self._iter_fair():
            user = job.user_id
            if user in skipped_users:
                continue
            if self.running_of(user) + extra_running.get(user, 0) >= self.max_running_per_user:
                skipped_users.add(user)
                continue
            limit = max_images if job.kind == "generate" else max_understand
            if kind is None:
                kind = job.kind  # the head job always goes, even if it alone is over the bound
            elif job.kind != kind or used + job.weight > limit:
                skipped_users.add(user)
                continue
            picked.append(job)
            used += job.weight
            extra_running[user] = extra_running.get(user, 0) + 1
            if used >= limit:
                break
        self._take(picked)
        return picked

    def next_admission(
        self, *, budgets: dict[BatchKind, int], idle_kinds: frozenset[BatchKind] | set[BatchKind]
    ) -> list[QueuedJob]:
        """Continuous batching: the next jobs to join a worker that has ``budgets[kind]`` free rows (images
        for generation, conversations for understanding; 0 = none of that kind now).

        Same fair order and per-user order as :meth:`next_batch`, one kind per pick, with one rule more:
        no overtaking within a kind. If the first job of a kind in fair order does not fit the free rows,
        no job of that kind joins until it does, so a 16-image request is not starved by a stream of
        1-image ones. A job bigger than a whole batch joins when its kind is idle on the worker
        (``idle_kinds``), alone, as in :meth:`next_batch`.
        """
        picked: list[QueuedJob] = []
        kind: BatchKind | None = None
        used = 0
        blocked: set[BatchKind] = set()
        skipped_users: set[str] = set()
        extra_running: dict[str, int] = {}
        for job in self._iter_fair():
            user = job.user_id
            if user in skipped_users:
                continue
            if self.running_of(user) + extra_running.get(user, 0) >= self.max_running_per_user:
                skipped_users.add(user)
                continue
            if job.kind in blocked or (kind is not None and job.kind != kind):
                skipped_users.add(user)  # the user's later jobs wait behind this one
                continue
            budget = budgets.get(job.kind, 0)
            if used + job.weight > budget:
                alone_when_idle = kind is None and job.kind in idle_kinds and budget > 0
                if not alone_when_idle:
                    if kind is not None:
                        break  # the batch is full: whoever comes next goes in the next pick
                    blocked.add(job.kind)
                    skipped_users.add(user)
                    continue
            kind = job.kind
            picked.append(job)
            used += job.weight
            extra_running[user] = extra_running.get(user, 0) + 1
            if used >= budget:
                break
        self._take(picked)
        return picked

    def _take(self, picked: list[QueuedJob]) -> None:
        for job in picked:
            self._by_id.pop(job.job_id)
            queue = self._queues[job.user_id]
            queue.popleft()
            if not queue:
                del self._queues[job.user_id]
            self._running[job.job_id] = job.user_id
            self._last_served[job.user_id] = next(self._tick)

    # ---- internals -------------------------------------------------------------------------------------

    def _forget_if_idle(self, user_id: str) -> None:
        """A user with nothing queued or running starts afresh next time (counts as not served recently)."""
        if user_id not in self._queues and user_id not in self._running.values():
            self._last_served.pop(user_id, None)

    def _iter_fair(self) -> Iterator[QueuedJob]:
        """Simulate the dispatch order: least recently served user first, one job per turn."""
        heap: list[tuple[int, int, str]] = [
            (self._last_served.get(user, 0), queue[0].seq, user) for user, queue in self._queues.items()
        ]
        heapq.heapify(heap)
        taken: dict[str, int] = {}
        tick = 1 << 62  # simulated serve ticks, later than any real one
        while heap:
            _, _, user = heapq.heappop(heap)
            index = taken.get(user, 0)
            queue = self._queues[user]
            yield queue[index]
            taken[user] = index + 1
            if index + 1 < len(queue):
                tick += 1
                heapq.heappush(heap, (tick, queue[index + 1].seq, user))
