"""JobHandle: what ``JanusEngine.submit`` returns, a job's id and its event stream.

The engine feeds it through :meth:`JobHandle.emit` (package-internal: callers only read the stream) and
asks :meth:`JobHandle.note_position` before telling a queued job its place, so a job hears of each new
place once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from janus_engine import errors
from janus_engine.errors import JobCancelled, JobFailed
from janus_engine.ipc import BatchKind
from janus_engine.protocol import (
    TERMINAL_EVENTS,
    Cancelled,
    Done,
    Failed,
    GenerateResult,
    JobEvent,
    UnderstandResult,
)


class JobHandle:
    """What ``submit`` returns: the job's id and its event stream.

    Iterate it (``async for event in handle``) for Queued / Started / Progress / TextDelta events and one
    terminal Done | Failed | Cancelled, after which the stream ends; or just ``await handle.result()``.
    Both may be used together; the stream itself is meant to be consumed once.
    """

    def __init__(self, job_id: str, user_id: str, kind: BatchKind) -> None:
        self.job_id = job_id
        self.user_id = user_id
        self.kind = kind
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._outcome: asyncio.Future[JobEvent] = asyncio.get_running_loop().create_future()
        self._last_position: int | None = None

    @property
    def done(self) -> bool:
        return self._outcome.done()

    def emit(self, event: JobEvent) -> None:
        """Append an event to the stream (for the engine; nothing follows a terminal event)."""
        if self._outcome.done():
            return
        self._events.put_nowait(event)
        if isinstance(event, TERMINAL_EVENTS):
            self._outcome.set_result(event)

    def note_position(self, position: int) -> bool:
        """Remember the job's queue position; True if it changed (the job should be told)."""
        if self._last_position == position:
            return False
        self._last_position = position
        return True

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[JobEvent]:
        while not (self._events.empty() and self._outcome.done()):
            event = await self._events.get()
            yield event
            if isinstance(event, TERMINAL_EVENTS):
                return

    async def result(self) -> GenerateResult | UnderstandResult:
        """The result, or JobFailed (or the more precise error class the worker named) / JobCancelled."""
        event = await asyncio.shield(self._outcome)
        if isinstance(event, Done):
            return event.result
        if isinstance(event, Cancelled):
            raise JobCancelled("The job was cancelled.")
        assert isinstance(event, Failed)
        raise errors.error_class(event.kind, JobFailed)(event.reason)
