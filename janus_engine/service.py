"""The engine service: one JanusEngine that several bot processes share, as a named actor on Ray.

``janus-bot engine serve`` (:func:`run_service`) joins the Ray cluster, starts :class:`EngineService`
under a name (``[engine] service``, default ``janus-engine``) on its own node, and waits for Ctrl-C or
SIGTERM. The actor holds the whole engine: the fair queue, continuous batching, the per-user job caps and
the worker actors (``backend = "ray"``, placed by Ray on GPU nodes). Bot processes with the same
``[engine] service`` name hold a :class:`ServiceEngine` instead of an engine of their own, so

- one queue and one set of per-user caps serve every shard process (a user cannot double their share by
  being seen by two processes),
- the model is loaded once, by the service; a bot process that restarts (a deploy, a crash) reconnects
  in a second instead of reloading weights, and the other processes' jobs never notice.

The wire is Ray's actor calls, nothing home-made: ``submit`` / ``cancel`` / ``status`` are calls; a
job's events (queue position, progress, previews, text, the result) go to a per-bot *session* outbox on
the service, which the bot long-polls with ``take`` (one call in flight per bot process, however many
jobs it follows). Refusals come back as ``(error class, message)`` pairs and are raised again in the bot
as the same JanusError, so a user reads the same sentence as with a local engine and never Ray's
traceback.

Sessions and failures:

- A bot's session is keyed by its owner name (the same name its database rows carry: "main" or
  "shards 0-3 of 16"). When a bot process starts again under the same owner, the service cancels what
  the old session still had queued or running: nobody is left to deliver it (the restarted bot closes
  those rows as interrupted, as it does after a crash with a local engine).
- A session that does not poll for ``SESSION_TIMEOUT_S`` (its process was killed and did not come back)
  is dropped the same way, so a vanished bot does not keep GPUs busy.
- When the service stops or dies, every bot fails its open jobs with a clear reason, refuses new ones
  with "not reachable right now", and reconnects by itself when a service of that name is back.

The actor is owned by the serve process (not detached): if that process dies, Ray ends the actor and its
worker actors, so no GPU stays held by an orphan. This module imports ray; only the serve command and a
bot configured with ``[engine] service`` import it. It never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from janus_engine import errors
from janus_engine.config import EngineConfig
from janus_engine.engine import JanusEngine
from janus_engine.errors import InvalidRequest, JanusError, ModelNotAvailable
from janus_engine.handle import JobHandle
from janus_engine.ipc import BatchKind
from janus_engine.protocol import Cancelled, Failed, GenerateRequest, JobEvent, UnderstandRequest
from janus_engine.status import EngineStatus, JobInfo

log = logging.getLogger(__name__)

NAMESPACE = "janus"  # Ray namespace of the service actor: bots look it up by name in this namespace
DEFAULT_NAME = "janus-engine"
POLL_S = 1.0  # how long one ``take`` waits for an event before the bot asks again
SESSION_TIMEOUT_S = 60.0  # a session silent this long belongs to a bot process that is gone
RECONNECT_S = 2.0  # how often a bot that lost the service looks for it again
# A bot's calls are made while a Discord interaction waits (3 s for the first answer): one that takes
# longer than this is given up, and the user hears so, rather than the interaction failing unanswered.
CALL_TIMEOUT_S = 2.0
CLIENT_ATTEMPTS = 3  # tries at starting a Ray client session (ray://) before giving up
Refusal = tuple[str, str]  # (JanusError class name, the message a user reads)

NOT_REACHABLE = "The image engine is not reachable right now; please try again in a minute."
BUSY = "The image engine did not answer in time; please try again."
SERVICE_LOST = "The engine service stopped while this job was waiting or running. Please try again."


def _refusal(exc: JanusError) -> Refusal:
    return (type(exc).__name__, exc.user_message)


@dataclass
class _Session:
    owner: str
    outbox: asyncio.Queue[tuple[str, JobEvent]] = field(default_factory=asyncio.Queue)
    jobs: set[str] = field(default_factory=set)
    seen: float = field(default_factory=time.monotonic)


@ray.remote(max_restarts=0, max_task_retries=0, num_cpus=0)
class EngineService:
    """The service actor (an async actor: every method runs on its event loop, as the engine needs)."""

    def __init__(self, config: EngineConfig) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self._config = config
        self._engine: JanusEngine | None = None
        self._error: str | None = None
        self._loaded = asyncio.Event()
        self._sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- life cycle (the serve process calls these) ------------------------------------------------------

    async def start(self) -> str | None:
        """Start the engine (workers up, model loaded). None when ready, else why not (one line)."""
        engine = JanusEngine(self._config)
        try:
            await engine.start()
        except JanusError as exc:
            self._error = exc.user_message
        except Exception as exc:  # reported, not raised: the serve process prints one line
            log.exception("the engine service could not start")
            self._error = f"{type(exc).__name__}: {exc}"
        else:
            self._engine = engine
            self._keep(self._reap_silent_sessions())
        self._loaded.set()
        return self._error

    async def stop(self, drain: bool, timeout: float) -> None:
        """Stop the engine; give the bots a moment to take the last events (their jobs' Cancelled)."""
        if self._engine is not None:
            await self._engine.stop(drain=drain, timeout=timeout)
        deadline = time.monotonic() + 2 * POLL_S
        while any(not s.outbox.empty() for s in self._sessions.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def ping(self) -> bool:
        return self._engine is not None

    # ---- sessions (one per bot process) ------------------------------------------------------------------

    async def ready(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` for the model to load: None when the engine is ready, else why not."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), timeout)
        if self._engine is not None:
            return None
        if self._error is not None:
            return f"it could not start: {self._error}"
        return f"it is still loading the model (waited {timeout:g} s)"

    async def attach(self, owner: str) -> str:
        """A new session for the bot process ``owner``; an earlier session of the same owner is over."""
        for session_id, session in list(self._sessions.items()):
            if session.owner == owner:
                log.info(
                    "%s connected again: cancelling the %d job(s) its previous process left",
                    owner,
                    len(session.jobs),
                )
                await self._drop(session_id)
        session_id = uuid.uuid4().hex
        self._sessions[session_id] = _Session(owner)
        log.info("bot process %r connected (%d connected)", owner, len(self._sessions))
        return session_id

    async def detach(self, session_id: str) -> None:
        """The bot process is stopping: its jobs are cancelled (nobody would deliver them)."""
        await self._drop(session_id)

    async def take(self, session_id: str, timeout: float) -> list[tuple[str, JobEvent]] | None:
        """The session's events since the last call, waiting up to ``timeout`` for the first; None if
        the session is unknown (dropped as silent, or the service restarted)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        session.seen = time.monotonic()
        try:
            taken = [await asyncio.wait_for(session.outbox.get(), timeout)]
        except TimeoutError:
            return []
        while not session.outbox.empty():
            taken.append(session.outbox.get_nowait())
        session.seen = time.monotonic()
        return taken

    # ---- the engine's calls ------------------------------------------------------------------------------

    async def submit(
        self, session_id: str, request: GenerateRequest | UnderstandRequest, user_id: str
    ) -> Refusal | None:
        session = self._sessions.get(session_id)
        if session is None:
            return ("ModelNotAvailable", NOT_REACHABLE)
        if self._engine is None:
            return ("ModelNotAvailable", NOT_REACHABLE)
        try:
            handle = self._engine.submit(request, user_id=user_id)
        except JanusError as exc:
            return _refusal(exc)
        session.jobs.add(handle.job_id)
        self._keep(self._forward(session, handle))
        return None

    async def cancel(self, job_id: str) -> bool:
        return self._engine is not None and await self._engine.cancel(job_id)

    async def jobs_of(self, user_id: str) -> list[JobInfo]:
        return self._engine.jobs_of(user_id) if self._engine is not None else []

    async def jobs(self) -> list[JobInfo]:
        return self._engine.jobs() if self._engine is not None else []

    async def status(self) -> EngineStatus | None:
        return self._engine.status() if self._engine is not None else None

    async def forget_conversations(self, conversation_ids: tuple[str, ...]) -> None:
        if self._engine is not None:
            self._engine.forget_conversations(conversation_ids)

    async def sessions(self) -> list[tuple[str, int]]:
        """(owner, open jobs) per connected bot process: for logs and tests."""
        return [(s.owner, len(s.jobs)) for s in self._sessions.values()]

    # ---- internals ---------------------------------------------------------------------------------------

    def _keep(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, session: _Session, handle: JobHandle) -> None:
        async for event in handle:
            session.outbox.put_nowait((handle.job_id, event))
        session.jobs.discard(handle.job_id)

    async def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None or self._engine is None:
            return
        for job_id in list(session.jobs):
            await self._engine.cancel(job_id)

    async def _reap_silent_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, SESSION_TIMEOUT_S / 4))
            now = time.monotonic()
            for session_id, session in list(self._sessions.items()):
                if now - session.seen > SESSION_TIMEOUT_S:
                    log.warning(
                        "bot process %r has not polled for %.0f s: dropping it and its %d job(s)",
                        session.owner,
                        now - session.seen,
                        len(session.jobs),
                    )
                    await self._drop(session_id)


# ---- the serve process ----------------------------------------------------------------------------------


async def start_service(config: EngineConfig, name: str) -> Any:
    """Start the service actor on this node and wait until its engine is ready; its handle.

    Raises ModelNotAvailable for what the operator must fix (a wrong backend, a taken name, a model that
    does not load, a cluster without the GPUs asked for)."""
    if config.backend != "ray":
        raise ModelNotAvailable(
            'janus-bot engine serve runs its workers as Ray actors: set [engine] backend = "ray" '
            "(and ray_address) in its config."
        )
    from janus_engine.supervisor import connect_ray  # the same join and cluster-size check as the engine

    await asyncio.to_thread(connect_ray, config.ray_address, config.devices)
    here = ray.get_runtime_context().get_node_id()
    try:
        actor = EngineService.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(config)
    except ValueError as exc:  # Ray: "The name ... is already taken"
        raise ModelNotAvailable(
            f"An engine service called {name!r} already runs on this Ray cluster ({exc}). Stop it first, "
            f"or give this one another [engine] service name."
        ) from None
    error = await actor.start.remote()
    if error is not None:
        ray.kill(actor, no_restart=True)
        raise ModelNotAvailable(f"The engine service could not start: {error}")
    return actor


async def run_service(config: EngineConfig, name: str, *, stop: asyncio.Event | None = None) -> None:
    """``janus-bot engine serve``: start the service and keep it until SIGINT/SIGTERM (or ``stop``), then
    drain it for up to ``job_timeout_s`` and end it. Raises ModelNotAvailable if the actor dies."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    actor = await start_service(config, name)
    where = config.ray_address or "the Ray instance this process started"
    log.info(
        "engine service %r ready on %s with %d worker(s) (%s): bot processes connect with "
        '[engine] service = "%s" and ray_address = "%s"',
        name,
        where,
        len(config.devices),
        ", ".join(config.devices),
        name,
        config.ray_address or "auto",
    )
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            try:
                await actor.ping.remote()
            except RayActorError:
                raise ModelNotAvailable(
                    f"The engine service actor {name!r} died (its process was killed or its node lost)."
                ) from None
        log.info("stopping the engine service %r (finishing running jobs)", name)
        with contextlib.suppress(RayError):
            await actor.stop.remote(True, config.job_timeout_s)
    finally:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


# ---- the bot's side -------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    """An exception in one line (Ray's messages carry whole remote tracebacks)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _awaited(ref: Any) -> Any:
    return await ref


def _consume(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


def _find_service(name: str, address: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise ModelNotAvailable(
            f"No engine service called {name!r} runs on the Ray cluster at {address or 'auto'}: start it "
            f"with `janus-bot engine serve --config FILE` (same [engine] service and ray_address)."
        ) from None


def _join_as_client(address: str) -> None:
    """Join the cluster the service runs on ("" = this machine's cluster, as "auto")."""
    if ray.is_initialized():
        return
    attempts = CLIENT_ATTEMPTS if address.startswith("ray://") else 1
    first = ""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address or "auto", include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # no cluster at that address: one line, not Ray's traceback
            first = _first_line(exc)
        if attempt == attempts or "Initialization failure from server" not in first:
            break
        # Ray's client server starts one "specific server" process per client; on a busy host that
        # start fails now and then (seen in CI): another try gets a fresh one.
        log.warning("Ray client session at %s did not start (%s); trying again", address, first)
        time.sleep(2.0 * attempt)
    hint = ""
    if address.startswith("ray://") and os.environ.get("RAY_AUTH_MODE") != "token":
        hint = (
            " (a Ray client sends the cluster's token only with RAY_AUTH_MODE=token in its environment"
            " and the token in ~/.ray/auth_token)"
        )
    raise ModelNotAvailable(
        f"Could not reach the Ray cluster at {address or 'auto'} to find the engine service: {first}{hint}"
    )


def probe_service(name: str, address: str) -> str:
    """One line on the running service for ``janus-bot check`` (read-only: it opens no session);
    ModelNotAvailable if it is not there or not ready."""
    joined = not ray.is_initialized()
    _join_as_client(address)
    try:
        actor = _find_service(name, address)
        try:
            reason = ray.get(actor.ready.remote(0.0), timeout=30)
            if reason is not None:
                raise ModelNotAvailable(f"The engine service {name!r} is not ready: {reason}")
            status: EngineStatus = ray.get(actor.status.remote(), timeout=30)
            bots = ray.get(actor.sessions.remote(), timeout=30)
        except RayError as exc:
            raise ModelNotAvailable(
                f"The engine service {name!r} did not answer ({type(exc).__name__})."
            ) from None
    finally:
        if joined:
            ray.shutdown()
    workers = ", ".join(f"{w.name} on {w.device} {w.state} (pid {w.pid})" for w in status.workers)
    return (
        f"ready on Ray at {address or 'auto'}: {workers}; queue {status.queue_depth}, running "
        f"{status.running}; {len(bots)} bot process(es) connected"
    )


class ServiceEngine:
    """An EngineClient for the engine service (see the module docstring for sessions and failures)."""

    def __init__(self, name: str, address: str, *, owner: str, ready_timeout_s: float = 600.0) -> None:
        self.name = name
        self.address = address
        self.owner = owner
        self.ready_timeout_s = ready_timeout_s
        self.call_timeout_s = CALL_TIMEOUT_S
        self.description = f"engine service {name!r} on Ray at {address or 'auto'}"
        self._actor: Any = None
        self._session: str | None = None
        self._handles: dict[str, JobHandle] = {}
        self._pump: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._actor is not None

    async def start(self) -> None:
        """Find the service, wait for its model (up to ``ready_timeout_s``), open this bot's session."""
        await asyncio.to_thread(_join_as_client, self.address)
        await self._attach(self.ready_timeout_s)
        self._closing = False
        self._pump = asyncio.create_task(self._pump_events(), name=f"janus-service-{self.name}")

    async def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None:
        """Close the session: the service cancels this bot's open jobs; their handles end Cancelled.

        ``drain`` waits (up to ``timeout``) for this bot's jobs to finish first."""
        if drain and self._handles:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self._handles and self.connected:
                        await asyncio.sleep(0.1)
        self._closing = True
        actor, session = self._actor, self._session
        if actor is not None and session is not None:
            with contextlib.suppress(RayError, TimeoutError):
                await asyncio.wait_for(actor.detach.remote(session), min(timeout, 10.0))
        if self._pump is not None:
            # Let the poll in flight return (within POLL_S) rather than cancel it: a Ray client
            # (ray://) prints a traceback from its own thread for a cancelled call.
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), POLL_S + 5.0)
            except TimeoutError:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump
        for job_id, handle in list(self._handles.items()):
            handle.emit(Cancelled(job_id))
        self._handles.clear()
        self._actor = self._session = None

    async def __aenter__(self) -> ServiceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def submit(self, request: GenerateRequest | UnderstandRequest, *, user_id: str) -> JobHandle:
        if not isinstance(request, GenerateRequest | UnderstandRequest):
            raise InvalidRequest("A job must be an image generation or an image understanding request.")
        actor, session = self._actor, self._session
        if actor is None or self._closing:
            raise ModelNotAvailable(NOT_REACHABLE)
        job_id = request.request_id
        if job_id in self._handles:
            raise InvalidRequest(f"Job id {job_id!r} is already in use.")
        kind: BatchKind = "generate" if isinstance(request, GenerateRequest) else "understand"
        # Registered before the call: the job's first events may come back before the call's reply.
        handle = JobHandle(job_id, str(user_id), kind)
        self._handles[job_id] = handle
        try:
            refused = await self._call(actor.submit.remote(session, request, str(user_id)))
        except BaseException as exc:
            self._handles.pop(job_id, None)
            if isinstance(exc, TimeoutError):  # it may still be queued there: nobody would follow it
                actor.cancel.remote(job_id)
                raise ModelNotAvailable(BUSY) from None
            raise
        if refused is not None:
            self._handles.pop(job_id, None)
            name, message = refused
            raise errors.error_class(name, JanusError)(message)
        return handle

    async def cancel(self, job_id: str) -> bool:
        if self._actor is None:
            return False
        return bool(await self._ask(self._actor.cancel.remote(job_id)))

    async def jobs_of(self, user_id: str) -> list[JobInfo]:
        if self._actor is None:
            return []
        return list(await self._ask(self._actor.jobs_of.remote(str(user_id))))

    async def jobs(self) -> list[JobInfo]:
        if self._actor is None:
            return []
        return list(await self._ask(self._actor.jobs.remote()))

    async def status(self) -> EngineStatus:
        status = None if self._actor is None else await self._ask(self._actor.status.remote())
        if status is None:
            raise ModelNotAvailable(NOT_REACHABLE)
        return status

    async def forget_conversations(self, conversation_ids: Sequence[str]) -> None:
        if self._actor is not None:
            ids = tuple(str(c) for c in conversation_ids)
            await self._ask(self._actor.forget_conversations.remote(ids), timeout=10.0)

    # ---- internals ---------------------------------------------------------------------------------------

    async def _attach(self, wait: float) -> None:
        actor = await asyncio.to_thread(_find_service, self.name, self.address)
        try:
            reason = await actor.ready.remote(wait)
            if reason is not None:
                raise ModelNotAvailable(f"The engine service {self.name!r} is not ready: {reason}")
            session = await actor.attach.remote(self.owner)
        except RayError as exc:
            raise ModelNotAvailable(
                f"The engine service {self.name!r} stopped while this bot connected ({type(exc).__name__})."
            ) from None
        self._actor, self._session = actor, session
        log.info("connected to %s as %r", self.description, self.owner)

    async def _call(self, ref: Any, timeout: float | None = None) -> Any:
        """Await one actor call; a lost service becomes ModelNotAvailable (never Ray's traceback), and
        one slower than ``timeout`` TimeoutError (see :meth:`_ask`)."""
        call = asyncio.ensure_future(_awaited(ref))
        call.add_done_callback(_consume)  # a call given up on still ends; its outcome is not wanted
        try:
            # shield: cancelling a Ray call in flight makes a Ray client (ray://) print a traceback
            return await asyncio.wait_for(asyncio.shield(call), timeout or self.call_timeout_s)
        except TimeoutError:
            log.warning(
                "the engine service took more than %g s to answer a call", timeout or self.call_timeout_s
            )
            raise
        except RayActorError:
            self._lost("the engine service stopped")
            raise ModelNotAvailable(NOT_REACHABLE) from None
        except RayError as exc:
            first = _first_line(exc)
            log.warning("engine service call failed: %s", first)
            raise ModelNotAvailable("The image engine could not answer; please try again.") from None

    async def _ask(self, ref: Any, timeout: float | None = None) -> Any:
        """:meth:`_call` for the calls that change nothing worth undoing: a slow one is "busy"."""
        try:
            return await self._call(ref, timeout)
        except TimeoutError:
            raise ModelNotAvailable(BUSY) from None

    def _lost(self, why: str) -> None:
        """The service is gone (or forgot this session): every open job fails with a clear reason."""
        if self._actor is None:
            return
        log.warning("%s: %s; failing %d open job(s), reconnecting", self.description, why, len(self._handles))
        self._actor = self._session = None
        for job_id, handle in list(self._handles.items()):
            handle.emit(Failed(job_id, SERVICE_LOST, "JobFailed"))
        self._handles.clear()

    async def _pump_events(self) -> None:
        """Long-poll this session's events into the jobs' handles; reconnect when the service is lost."""
        while not self._closing:
            actor, session = self._actor, self._session
            if actor is None:
                await asyncio.sleep(RECONNECT_S)
                with contextlib.suppress(ModelNotAvailable):
                    await self._attach(RECONNECT_S)
                continue
            try:
                taken = await actor.take.remote(session, POLL_S)
            except ActorUnavailableError:  # a transient network fault: Ray retries the connection
                continue
            except RayActorError:
                self._lost("the engine service stopped")
                continue
            except Exception as exc:  # Ray itself went away, or an event did not unpickle
                log.exception("%s: lost contact", self.description)
                self._lost(f"contact lost ({type(exc).__name__})")
                continue
            if taken is None:
                if self._closing:
                    break  # our own detach
                self._lost("the engine service no longer knows this bot's session")
                continue
            for job_id, event in taken:
                handle = self._handles.get(job_id)
                if handle is None:
                    continue
                handle.emit(event)
                if handle.done:
                    del self._handles[job_id]
