"""EngineClient: what the bot holds, whether the engine runs in its own process or as a shared service.

The bot never needs to know which: :class:`LocalEngine` wraps a :class:`~janus_engine.engine.JanusEngine`
running in this process (one bot process, its own workers), and
:class:`janus_engine.service.ServiceEngine` talks to the engine service that ``janus-bot engine serve``
runs on a Ray cluster (several bot processes, one queue, one set of workers, the model loaded once). The
calls are async because a service call is a round trip; for the local engine they return at once.

Every call raises the engine's own errors (:mod:`janus_engine.errors`) with the same user-readable
messages either way, so the bot's handling of QueueFull, UserLimitReached or InvalidRequest is one path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from janus_engine.engine import JanusEngine
from janus_engine.handle import JobHandle
from janus_engine.protocol import GenerateRequest, UnderstandRequest
from janus_engine.status import EngineStatus, JobInfo


@runtime_checkable
class EngineClient(Protocol):
    """The engine as the bot uses it. ``start`` returns once the model is loaded (or raises
    ModelNotAvailable); ``stop`` ends this client's jobs (a local engine also stops its workers)."""

    description: str  # for logs and /stats: where the engine runs

    async def start(self) -> None: ...

    async def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None: ...

    async def submit(self, request: GenerateRequest | UnderstandRequest, *, user_id: str) -> JobHandle: ...

    async def cancel(self, job_id: str) -> bool: ...

    async def jobs_of(self, user_id: str) -> list[JobInfo]: ...

    async def jobs(self) -> list[JobInfo]: ...

    async def status(self) -> EngineStatus: ...

    async def forget_conversations(self, conversation_ids: Sequence[str]) -> None: ...


class LocalEngine:
    """An EngineClient for a JanusEngine in this process (``engine`` stays reachable for tests and tools)."""

    description = "engine in this process"

    def __init__(self, engine: JanusEngine) -> None:
        self.engine = engine

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None:
        await self.engine.stop(drain=drain, timeout=timeout)

    async def submit(self, request: GenerateRequest | UnderstandRequest, *, user_id: str) -> JobHandle:
        return self.engine.submit(request, user_id=user_id)

    async def cancel(self, job_id: str) -> bool:
        return await self.engine.cancel(job_id)

    async def jobs_of(self, user_id: str) -> list[JobInfo]:
        return self.engine.jobs_of(user_id)

    async def jobs(self) -> list[JobInfo]:
        return self.engine.jobs()

    async def status(self) -> EngineStatus:
        return self.engine.status()

    async def forget_conversations(self, conversation_ids: Sequence[str]) -> None:
        self.engine.forget_conversations(tuple(conversation_ids))

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
