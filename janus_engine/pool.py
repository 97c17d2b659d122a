"""One worker process as the front sees it: spawn, send, a reader thread, and how it ended.

The reader thread blocks on the pipe so the event loop never does; it hands every message (and finally
the process's exit) to the loop with ``call_soon_threadsafe``. A process that dies for any reason (kill -9,
segfault, out-of-memory killer) closes its end of the pipe, so the reader sees EOF at once and the front
learns of the death within milliseconds, with the exit code to explain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

from janus_engine.ipc import WorkerOptions
from janus_engine.protocol import ModelSpec
from janus_engine.worker_process import worker_main

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")


class WorkerTransport(Protocol):
    """One worker incarnation as the supervisor drives it, whatever carries the messages: a local child
    process (:class:`WorkerProcess`) or a Ray actor (:class:`janus_engine.ray_transport.RayWorker`). The
    constructor takes ``(spec, options, *, loop, on_message, on_exit)``; both callbacks run on the loop,
    ``on_exit`` exactly once, after the last message."""

    options: WorkerOptions

    @property
    def pid(self) -> int | None: ...

    def send(self, message: Any) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float) -> bool: ...

    def describe_end(self, exitcode: int | None) -> str:
        """How this incarnation ended, as the clause a failed job's message is built from."""
        ...


def post_to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> bool:
    """Hand a reader thread's news to the event loop; False once the loop is closed (nobody left to tell,
    so the reader stops posting)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
        return True
    except RuntimeError:
        return False


def describe_exit(exitcode: int | None) -> str:
    """A readable account of how a worker process ended."""
    if exitcode is None:
        return "the worker process stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hints = {
            "SIGKILL": " (killed: out of memory, or stopped by an administrator)",
            "SIGSEGV": " (a crash inside the model code)",
            "SIGABRT": " (aborted by the model code)",
        }
        return f"the worker process died from {name}{hints.get(name, '')}"
    return f"the worker process exited with status {exitcode}"


class WorkerProcess:
    """One incarnation of a worker: a restart makes a new WorkerProcess (stale messages are then easy to
    tell apart: they come from an object the engine no longer holds)."""

    def __init__(
        self,
        spec: ModelSpec,
        options: WorkerOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerProcess, Any], None],
        on_exit: Callable[[WorkerProcess, int | None], None],
    ) -> None:
        self.spec = spec
        self.options = options
        self._loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self._conn, child_conn = _SPAWN.Pipe(duplex=True)
        self.process = _SPAWN.Process(
            target=worker_main, args=(child_conn, spec, options), name=options.name, daemon=True
        )
        self.process.start()
        child_conn.close()  # only the child holds its end: its death gives us EOF
        self.exitcode: int | None = None
        self._exited = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"{options.name}-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, message: Any) -> bool:
        """Send from the event loop thread; False if the worker is already gone."""
        try:
            self._conn.send(message)
            return True
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError, ValueError):
            self.process.kill()

    def describe_end(self, exitcode: int | None) -> str:
        return describe_exit(exitcode)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` (blocking: call through a thread from async code) for the process to end.

        Only the reader thread reaps the process: two threads waiting on one child race for its exit
        status, and the loser would wrongly see it as still alive."""
        return self._exited.wait(timeout)

    def _read(self) -> None:
        listening = True
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: report it as a dead worker rather than hang
                log.exception("could not read a message from %s", self.options.name)
                self.kill()
                break
            if listening:
                listening = post_to_loop(self._loop, self._on_message, self, message)
        self.process.join()  # EOF: the process has closed its end and is exiting (or was killed)
        self.exitcode = self.process.exitcode
        with contextlib.suppress(OSError):
            self._conn.close()
        self._exited.set()
        post_to_loop(self._loop, self._on_exit, self, self.exitcode)
