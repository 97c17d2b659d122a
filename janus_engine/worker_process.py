"""The worker process's entry point: load the model, warm it up, then serve the pipe in the configured mode.

The front imports this module to name :func:`worker_main` as the spawn target, so nothing here imports
torch at module level: the runtime is imported inside the child process only. Serving is
:func:`janus_engine.worker.serve` (run-to-completion) or :class:`janus_engine.worker_loop.ContinuousLoop`
(continuous batching), chosen by ``WorkerOptions.batching``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from janus_engine.devices import device_problem, resolve_device
from janus_engine.errors import JanusError, ModelNotAvailable
from janus_engine.ipc import LoadFailed, Ready, WorkerOptions
from janus_engine.protocol import ModelSpec
from janus_engine.runtime_protocol import Runtime
from janus_engine.worker import FrontGone, WorkerChannel, _warm_up, serve
from janus_engine.worker_loop import ContinuousLoop


def worker_main(conn: Connection, spec: ModelSpec, options: WorkerOptions) -> None:
    """Spawn target: load the model, announce Ready, serve batches until Shutdown or the pipe closes."""
    # Ctrl-C in a terminal reaches the whole process group; the front decides how to shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_worker(WorkerChannel(conn, options.step_delay_s), spec, options)
    finally:
        conn.close()
    # Skip the interpreter's slow teardown of torch (over a second): nothing is left to flush but stdio.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_worker(channel: WorkerChannel, spec: ModelSpec, options: WorkerOptions) -> None:
    """Load, announce, serve until Shutdown or the front goes: the part every transport shares (a local
    process here, a Ray actor's thread in :mod:`janus_engine.ray_transport`)."""
    try:
        loaded = _load(channel, spec, options)
        if loaded is None:
            return
        runtime, session = loaded
        if session is not None:
            ContinuousLoop(channel, runtime, session, options).run()
        else:
            serve(channel, runtime)
    except FrontGone:
        pass


def _load(channel: WorkerChannel, spec: ModelSpec, options: WorkerOptions) -> tuple[Runtime, Any] | None:
    """Load the model and warm it up; returns the runtime and, in continuous mode, its decode session
    (None in run-to-completion mode). Sends Ready, or LoadFailed and returns None."""
    try:
        from transformers.utils import logging as hf_logging

        # A background process draws no progress bars (the CLI draws its own from our events); tqdm's
        # bars would also leave a multiprocessing lock behind at our fast exit.
        hf_logging.disable_progress_bar()
        from janus_engine.runtime import JanusRuntime

        _check_device(spec.device)
        spec = dataclasses.replace(spec, device=resolve_device(spec.device))
        if spec.device.startswith("cuda:"):
            import torch

            # Make this worker's GPU the current one before anything touches CUDA: otherwise libraries
            # that use "the current device" create a second context (hundreds of MB) on cuda:0.
            torch.cuda.set_device(torch.device(spec.device))
        runtime = JanusRuntime.load(spec)
        step_seconds = _warm_up(runtime, options.step_delay_s)
        session = None
        if options.batching == "continuous":
            session = runtime.decode_session(
                max_images=options.max_images,
                max_texts=options.max_texts,
                cuda_graphs=options.cuda_graphs,
            )
            session.warm_up()
    except JanusError as exc:
        channel.send(LoadFailed(type(exc).__name__, exc.user_message))
        return None
    except Exception as exc:  # any load failure must reach the front as one readable line
        message = f"Could not load the model: {type(exc).__name__}: {exc}"
        channel.send(LoadFailed("ModelNotAvailable", message))
        return None
    channel.send(
        Ready(
            pid=os.getpid(),
            device=str(runtime.device),
            dtype=str(runtime.dtype_name),
            num_image_tokens=int(runtime.num_image_tokens),
            step_seconds=step_seconds,
        )
    )
    return runtime, session


def _check_device(device: str) -> None:
    """Refuse a device this torch build does not have, in one line, before anything touches it (on a
    CPU-only torch, ``torch.cuda.set_device`` fails with an AttributeError about ``torch._C``)."""
    problem = device_problem(device)
    if problem is not None:
        raise ModelNotAvailable(problem)
