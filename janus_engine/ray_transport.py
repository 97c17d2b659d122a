"""Engine workers as Ray actors: the same worker, the same messages, carried by Ray instead of a pipe.

``[engine] backend = "ray"`` makes the supervisor start one :class:`WorkerActor` per ``devices`` entry
("cuda": an actor with ``num_gpus=1`` that Ray places on any node with a free GPU; "cpu": one CPU). The
actor runs :func:`janus_engine.worker_process.run_worker` on a thread of its own, exactly as a local child
process does, over a :class:`QueueLink` instead of a pipe; everything above it (the fair scheduler,
continuous batching, cancel between steps, timeouts, restarts) is the engine's and unchanged. That is the
point of this module: Ray places processes on GPUs and carries bytes, and our scheduler keeps deciding
which rows decode together, which a task-per-job queue (Ray Serve, Celery) cannot do.

Messages: the front calls ``deliver`` for each message (one-at-a-time concurrency group, so they arrive in
the order sent: a cancel never overtakes its batch) and a reader thread long-polls ``take``, which returns
every message the worker produced since the last call (one round trip per decoding step or so, ~1 ms on a
LAN). An actor that dies (kill -9, node lost, the worker's own exit after a CUDA error) fails the pending
``take`` with ``RayActorError``: the reader reports the end, the supervisor fails the actor's jobs with a
clear reason and starts a new actor, as it does for a local process. Actors are owned by the engine's
process (not detached), so Ray removes them if that process dies: no orphans holding GPUs.

This module imports ray at module level; only the supervisor imports it, and only for ``backend = "ray"``.
It must not import torch (the front stays torch-free): the runtime is imported inside the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from janus_engine.errors import ModelNotAvailable
from janus_engine.ipc import WorkerOptions
from janus_engine.pool import post_to_loop
from janus_engine.protocol import ModelSpec
from janus_engine.worker import WorkerChannel
from janus_engine.worker_process import run_worker

log = logging.getLogger(__name__)

POLL_S = 1.0  # how long one ``take`` waits for a message; the reader then asks again
ACTOR_LOST = "the Ray worker actor died (its process was killed or its node was lost)"


def connect(address: str, devices: tuple[str, ...]) -> None:
    """Join the configured Ray cluster once per process ("" = start one here; see EngineSettings) and
    check that it has the GPUs and CPUs ``devices`` asks for: a missing GPU would otherwise leave an actor
    pending until the start timeout, with no word of why.

    A process that already called ``ray.init`` (a test's local cluster, an operator's own driver) keeps
    its connection: the engine adds its actors to it."""
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=True)
    total = ray.cluster_resources()
    log.info("Ray cluster: %s", {k: v for k, v in total.items() if k in ("CPU", "GPU", "memory")})
    need = {"GPU": 0.0, "CPU": 0.0}
    for device in devices:
        resources = actor_resources(device)
        need["GPU"] += resources["num_gpus"]
        need["CPU"] += resources["num_cpus"]
    short = [
        f"{need[k]:g} {k}s asked, {total.get(k, 0.0):g} in the cluster"
        for k in need
        if need[k] > total.get(k, 0.0)
    ]
    if short:
        raise ModelNotAvailable(f"The Ray cluster is too small for model.devices ({'; '.join(short)}).")


def actor_resources(device: str) -> dict[str, float]:
    """What one worker actor asks Ray for: a whole GPU for "cuda" (Ray sets CUDA_VISIBLE_DEVICES, so the
    actor sees only its own card, as cuda:0), one CPU either way (the actor's threads are few)."""
    return {"num_cpus": 1, "num_gpus": 1 if device == "cuda" else 0}


@dataclass(frozen=True)
class WorkerEnded:
    """The actor's serving thread returned (Shutdown, or a model that did not load): the actor is done."""


class _Closed:
    """Put in the inbox when the link closes: the blocked ``recv`` raises EOFError, as a pipe does."""


class QueueLink:
    """The worker's side of a Ray actor: an inbox the front fills through ``deliver`` and an outbox the
    front drains through ``take``; the same four calls as a multiprocessing Connection."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.outbox: queue.Queue[Any] = queue.Queue()
        self._closed = False

    def send(self, obj: Any) -> None:
        if self._closed:
            raise OSError("the link to the front is closed")
        self.outbox.put(obj)

    def recv(self) -> Any:
        message = self.inbox.get()
        if isinstance(message, _Closed):
            self.inbox.put(message)  # every later recv sees the end too
            raise EOFError
        return message

    def poll(self) -> bool:
        return not self.inbox.empty()

    def close(self) -> None:
        self._closed = True
        self.inbox.put(_Closed())

    def take(self, timeout: float) -> list[Any]:
        """Every message waiting in the outbox, waiting up to ``timeout`` for the first."""
        try:
            taken = [self.outbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                taken.append(self.outbox.get_nowait())
            except queue.Empty:
                return taken


@ray.remote(  # type: ignore[call-overload]  # ray's stubs lack concurrency_groups for classes
    max_restarts=0, max_task_retries=0, concurrency_groups={"inbox": 1, "outbox": 1}
)
class WorkerActor:
    """One engine worker inside a Ray actor: loads the model on its own thread and serves the link."""

    def __init__(self, spec: ModelSpec, options: WorkerOptions) -> None:
        self._link = QueueLink()
        self._thread = threading.Thread(
            target=self._serve, args=(spec, options), name=options.name, daemon=True
        )
        self._thread.start()

    def _serve(self, spec: ModelSpec, options: WorkerOptions) -> None:
        try:
            run_worker(WorkerChannel(self._link, options.step_delay_s), spec, options)
        except Exception:  # reported as the actor's end; the front's supervisor decides what follows
            log.exception("%s stopped on an error", options.name)
        finally:
            self._link.outbox.put(WorkerEnded())

    @ray.method(concurrency_group="inbox")
    def deliver(self, message: Any) -> None:
        self._link.inbox.put(message)

    @ray.method(concurrency_group="outbox")
    def take(self, timeout: float) -> list[Any]:
        return self._link.take(timeout)


class RayWorker:
    """The front's handle on one worker actor (a :class:`janus_engine.pool.WorkerTransport`).

    A reader thread long-polls the actor and hands each message to the loop; when the actor ends or dies
    it reports the end once, after the last message, as :class:`janus_engine.pool.WorkerProcess` does."""

    def __init__(
        self,
        spec: ModelSpec,
        options: WorkerOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[RayWorker, Any], None],
        on_exit: Callable[[RayWorker, int | None], None],
    ) -> None:
        self.spec = spec
        self.options = options
        self._loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self.exitcode: int | None = None
        self._end: str | None = None
        self._exited = threading.Event()
        self._actor = WorkerActor.options(  # type: ignore[attr-defined]
            name=None, **actor_resources(spec.device)
        ).remote(spec, options)
        self._reader = threading.Thread(target=self._read, name=f"{options.name}-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return None  # on another machine, perhaps; the worker's Ready message carries its pid

    def send(self, message: Any) -> bool:
        if self._exited.is_set():
            return False
        try:
            self._actor.deliver.remote(message)
            return True
        except Exception:  # the actor handle is gone (Ray shut down)
            return False

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self._actor, no_restart=True)

    def join(self, timeout: float) -> bool:
        return self._exited.wait(timeout)

    def describe_end(self, exitcode: int | None) -> str:
        return self._end or ACTOR_LOST

    def _read(self) -> None:
        try:
            self._pump()
        finally:
            self._exited.set()
            post_to_loop(self._loop, self._on_exit, self, self.exitcode)

    def _pump(self) -> None:
        listening = True
        while True:
            try:
                # A future rather than ray.get: inside the engine service's async actor Ray warns about
                # every ray.get (it cannot tell this reader thread from the event loop).
                messages = self._actor.take.remote(POLL_S).future().result()
            except ActorUnavailableError:  # a transient network fault: Ray retries the connection
                continue
            except RayActorError as exc:
                log.warning("%s: %s", self.options.name, str(exc).splitlines()[0] if str(exc) else exc)
                self._end = ACTOR_LOST
                return
            except Exception as exc:  # Ray itself went away (shutdown), or a message did not unpickle
                log.exception("%s: lost the Ray worker actor", self.options.name)
                self._end = f"the Ray worker actor could not be reached ({type(exc).__name__})"
                self.kill()
                return
            for message in messages:
                if isinstance(message, WorkerEnded):
                    self.exitcode = 0
                    self._end = "the Ray worker actor exited"
                    self.kill()  # its thread is done: free the GPU now rather than at the driver's exit
                    return
                if listening:
                    listening = post_to_loop(self._loop, self._on_message, self, message)
