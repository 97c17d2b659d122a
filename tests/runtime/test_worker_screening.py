"""The worker screens a batch before running it: one bad request fails alone, the others still run
together in one batched call (not through the slow one-by-one retry), on the real tiny runtime."""

from __future__ import annotations

import multiprocessing

from janus_engine.ipc import RunBatch
from janus_engine.protocol import GenerateRequest, GenerateResult
from janus_engine.worker import WorkerChannel, run_batch


class CountingRuntime:
    """The real runtime, with the batch size of every generate call written down."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.calls: list[int] = []

    def validate(self, request) -> None:
        self.runtime.validate(request)

    def generate(self, requests, **kwargs):
        self.calls.append(len(requests))
        return self.runtime.generate(requests, **kwargs)


def test_a_bad_request_fails_alone_and_the_rest_of_its_batch_runs_together(runtime) -> None:
    front, worker = multiprocessing.Pipe()
    try:
        counting = CountingRuntime(runtime)
        batch = RunBatch(
            7,
            "generate",
            (
                GenerateRequest("ok-1", "a red kite", temperature=0.0),
                GenerateRequest("bad", "a blue kite", guidance=0.5),  # guidance must be > 1
                GenerateRequest("ok-2", "a green kite", temperature=0.0),
            ),
        )
        finished = run_batch(WorkerChannel(worker, 0.0), counting, batch)
    finally:
        front.close()
        worker.close()
    assert counting.calls == [2]  # one batched call for the two good requests, no retries
    by_id = {o.job_id: o for o in finished.outcomes}
    assert set(by_id) == {"ok-1", "bad", "ok-2"}
    assert by_id["bad"].error_kind == "InvalidRequest" and "guidance" in by_id["bad"].error_message.lower()
    assert isinstance(by_id["ok-1"].result, GenerateResult) and by_id["ok-1"].result.images
    assert isinstance(by_id["ok-2"].result, GenerateResult)
