"""The continuous worker loop in-process, over a real pipe and the tiny model: per-job results, previews
before results, /forget reaching the feature cache, and the fault rules (a failing step's jobs retried
alone; a device error fails everything the worker holds and exits)."""

from __future__ import annotations

import io
import multiprocessing
import threading

from PIL import Image

from janus_engine.ipc import (
    BatchFinished,
    ForgetConversations,
    JobFinished,
    PreviewImage,
    RunBatch,
    Shutdown,
    StepProgress,
    WorkerOptions,
)
from janus_engine.protocol import GenerateRequest, TextSampling, Turn, UnderstandRequest
from janus_engine.worker import DEVICE_ERROR_EXIT, WorkerChannel
from janus_engine.worker_loop import ContinuousLoop


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def gen(key: str, *, n: int = 1, seed: int = 1, preview_every: int = 0) -> GenerateRequest:
    return GenerateRequest(key, "a red cube", n_images=n, seed=seed, preview_every=preview_every)


def describe(key: str, conversation: str | None = None) -> UnderstandRequest:
    turn = Turn("user", "What is this?", (png((250, 20, 20)),))
    return UnderstandRequest(key, (turn,), TextSampling(temperature=0.0, max_new_tokens=3), conversation)


class Harness:
    """A ContinuousLoop on a thread; the test holds the front's end of the pipe."""

    def __init__(self, runtime, session=None) -> None:
        self.front, worker = multiprocessing.Pipe()
        self.session = session or runtime.decode_session(max_images=4, max_texts=4, cuda_graphs=False)
        self.loop = ContinuousLoop(WorkerChannel(worker, 0.0), runtime, self.session, WorkerOptions("t"))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:
            self.error = exc

    def messages_until_batches_end(self, batch_ids: set[int], timeout: float = 60.0) -> list:
        seen = []
        open_ids = set(batch_ids)
        while open_ids:
            assert self.front.poll(timeout), f"no message; so far {seen}"
            message = self.front.recv()
            seen.append(message)
            if isinstance(message, BatchFinished):
                open_ids.discard(message.batch_id)
        return seen

    def stop(self) -> None:
        self.front.send(Shutdown())
        self.thread.join(30)
        self.front.close()


def outcomes(messages) -> dict[str, object]:
    return {m.outcome.job_id: m.outcome for m in messages if isinstance(m, JobFinished)}


def test_jobs_end_one_by_one_with_previews_before_results(runtime) -> None:
    h = Harness(runtime)
    try:
        h.front.send(RunBatch(1, "generate", (gen("img", n=2, preview_every=4),)))
        h.front.send(RunBatch(2, "understand", (describe("chat"),)))
        seen = h.messages_until_batches_end({1, 2})
    finally:
        h.stop()
    ends = outcomes(seen)
    assert set(ends) == {"img", "chat"}
    assert len(ends["img"].result.images) == 2 and ends["chat"].result.completion_tokens >= 1
    kinds = [type(m).__name__ for m in seen if not isinstance(m, StepProgress)]
    previews = [m for m in seen if isinstance(m, PreviewImage)]
    assert [p.step for p in previews] == [4, 8, 12]
    img_end = next(i for i, m in enumerate(seen) if isinstance(m, JobFinished) and m.outcome.job_id == "img")
    assert all(seen.index(p) < img_end for p in previews)
    # Each batch closes right after its last job, with its measured time.
    assert kinds.index("BatchFinished") > kinds.index("JobFinished")
    batch = next(m for m in seen if isinstance(m, BatchFinished) and m.batch_id == 1)
    assert batch.steps == runtime.num_image_tokens and batch.occupancy is not None


def test_forget_reaches_the_feature_cache(runtime) -> None:
    h = Harness(runtime)
    try:
        h.front.send(RunBatch(1, "understand", (describe("c1", conversation="conv-7"),)))
        h.messages_until_batches_end({1})
        assert len(h.session.features) == 1
        h.front.send(ForgetConversations(("conv-7",)))
        h.front.send(RunBatch(2, "understand", (describe("c2"),)))  # no conversation: stays cached
        h.messages_until_batches_end({2})
        assert h.session.features.conversations(h.session.features.keys()[0]) == frozenset()
    finally:
        h.stop()


def test_a_failing_step_retries_its_jobs_alone_and_only_the_bad_one_fails(runtime) -> None:
    h = Harness(runtime)
    real_step = h.session.step_images
    calls = {"n": 0}

    def flaky(preview_due=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("shape mismatch in a batched step")
        return real_step(preview_due)

    h.session.step_images = flaky
    try:
        h.front.send(RunBatch(1, "generate", (gen("a", seed=1), gen("b", n=2, seed=2))))
        seen = h.messages_until_batches_end({1})
        alone = runtime.generate([gen("b", n=2, seed=2)])[0]
    finally:
        h.stop()
    ends = outcomes(seen)
    assert {k: o.error_kind for k, o in ends.items()} == {"a": None, "b": None}
    assert ends["b"].result.images == alone.images  # the retry ran it through the batch loop, alone


def test_a_device_error_fails_every_job_and_exits(runtime, monkeypatch) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("janus_engine.worker_loop.os._exit", fake_exit)
    h = Harness(runtime)

    def broken(preview_due=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    h.session.step_images = broken
    h.front.send(RunBatch(1, "generate", (gen("a"),)))
    h.front.send(RunBatch(2, "understand", (describe("q"),)))
    seen = []
    while h.front.poll(30):
        try:
            seen.append(h.front.recv())
        except (EOFError, ConnectionResetError):
            break
    h.thread.join(30)
    ends = outcomes(seen)
    assert set(ends) <= {"a", "q"} and "a" in ends
    assert all("restarting" in (o.error_message or "") for k, o in ends.items() if o.result is None)
    finished = [m for m in seen if isinstance(m, BatchFinished)]
    assert any(m.worker_exiting and "illegal memory access" in m.worker_exiting for m in finished)
    assert exits == [DEVICE_ERROR_EXIT]
