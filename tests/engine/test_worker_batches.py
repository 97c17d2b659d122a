"""The worker's batch loop on a stand-in runtime: the one-by-one retry after a failed batch, and the
worker's exit after an unrecoverable device error (a CUDA error cannot be made here: they are fabricated)."""

from __future__ import annotations

import gc
import multiprocessing

import pytest

from janus_engine.ipc import BatchFinished, RunBatch
from janus_engine.worker import DEVICE_ERROR_EXIT, WorkerChannel, is_unrecoverable_device_error, run_batch
from tests.engine.engine_helpers import Bulky, FailingRuntime, cuda_error, gen_request, serve_failing_runtime


class AcceleratorError(RuntimeError):
    """Named like torch.AcceleratorError (torch >= 2.8), which is what the check looks at."""


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError."""


@pytest.fixture
def channel():
    front, worker = multiprocessing.Pipe()
    yield WorkerChannel(worker, 0.0)
    front.close()
    worker.close()


def _batch(n: int) -> RunBatch:
    return RunBatch(1, "generate", tuple(gen_request(f"job-{i}") for i in range(n)))


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (AcceleratorError("CUDA error: unspecified launch failure"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), True),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError("CUDA error: out of memory"), False),
        (RuntimeError("shape '[2, 576]' is invalid for input of size 576"), False),
        (ValueError("CUDA error: not a RuntimeError"), False),
        (KeyError("cuda"), False),
    ],
)
def test_unrecoverable_device_errors_are_told_apart_from_recoverable_ones(exc, fatal):
    assert is_unrecoverable_device_error(exc) is fatal


def test_the_one_by_one_retry_runs_after_the_failed_batch_is_freed(channel):
    Bulky.instances.clear()
    alive_during_retry: list[bool] = []
    runtime = FailingRuntime(lambda: MemoryError("batch too big"), fail_from=2)

    def on_call(size: int) -> None:
        if size == 1:  # a retry: the failed batched call's "KV cache" must be gone by now
            gc.collect()
            alive_during_retry.append(any(ref() is not None for ref in Bulky.instances))

    runtime.on_call = on_call
    finished = run_batch(channel, runtime, _batch(3))
    assert runtime.calls == [3, 1, 1, 1]
    assert alive_during_retry == [False, False, False]
    assert [o.error_kind for o in finished.outcomes] == [None, None, None]  # each alone succeeded
    assert finished.worker_exiting is None


def test_a_device_error_fails_the_batch_without_retries_and_asks_the_worker_to_exit(channel):
    runtime = FailingRuntime(cuda_error)
    finished = run_batch(channel, runtime, _batch(3))
    assert runtime.calls == [3]  # a broken device is not retried job by job
    assert finished.worker_exiting is not None and "illegal memory access" in finished.worker_exiting
    assert all(o.error_kind == "JobFailed" for o in finished.outcomes)
    assert all("restarting" in (o.error_message or "") for o in finished.outcomes)


def test_a_worker_process_reports_its_batch_then_exits_after_a_device_error():
    ctx = multiprocessing.get_context("spawn")
    front, worker_end = ctx.Pipe()
    process = ctx.Process(target=serve_failing_runtime, args=(worker_end,), daemon=True)
    process.start()
    worker_end.close()
    try:
        front.send(_batch(2))
        assert front.poll(60)
        finished = front.recv()
        assert isinstance(finished, BatchFinished) and finished.worker_exiting
        assert [o.job_id for o in finished.outcomes] == ["job-0", "job-1"]
        process.join(30)
        assert process.exitcode == DEVICE_ERROR_EXIT
    finally:
        if process.is_alive():
            process.kill()
        front.close()
