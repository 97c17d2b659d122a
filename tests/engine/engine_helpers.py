"""Engine test helpers: an EngineConfig on the tiny checkpoint, and small event-stream utilities.

Engines are started once per module (workers import torch in ~5 s) and shared by that module's tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from janus_engine.config import EngineConfig
from janus_engine.engine import JobHandle
from janus_engine.protocol import (
    GenerateRequest,
    GenerateResult,
    JobEvent,
    ModelSpec,
    TextSampling,
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.runtime_protocol import OnPreview, OnProgress, OnText, Runtime, ShouldCancel


def tiny_engine_config(model_dir: Path, **overrides: object) -> EngineConfig:
    spec = ModelSpec(model=str(model_dir), device="cpu", local_files_only=True, torch_threads=1)
    settings: dict[str, object] = {"devices": ("cpu",), "worker_start_timeout_s": 120.0}
    settings.update(overrides)
    return EngineConfig(model=spec, **settings)  # type: ignore[arg-type]


def gen_request(job_id: str, *, n: int = 1, seed: int = 0, prompt: str = "a red cube") -> GenerateRequest:
    return GenerateRequest(
        request_id=job_id, prompt=prompt, n_images=n, guidance=3.0, temperature=1.0, seed=seed
    )


def chat_request(job_id: str, text: str = "hello there", max_new_tokens: int = 4) -> UnderstandRequest:
    sampling = TextSampling(temperature=0.0, max_new_tokens=max_new_tokens)
    return UnderstandRequest(request_id=job_id, turns=(Turn("user", text),), sampling=sampling)


async def collect(handle: JobHandle, timeout: float = 60.0) -> list[JobEvent]:
    """Every event of a job's stream, up to and including the terminal one."""

    async def run() -> list[JobEvent]:
        return [event async for event in handle]

    return await asyncio.wait_for(run(), timeout)


class FailingRuntime(Runtime):
    """A stand-in runtime for worker-loop tests: ``generate`` raises ``error`` (built by ``make_error``)
    for any batch of at least ``fail_from`` requests and otherwise returns one None (cancelled) per request.
    Each call that fails first allocates a ``Bulky`` object, as a real call holds a KV cache."""

    device = "cpu"
    dtype_name = "float32"
    num_image_tokens = 4

    def __init__(self, make_error, fail_from: int = 1) -> None:
        self.make_error = make_error
        self.fail_from = fail_from
        self.calls: list[int] = []
        self.on_call = None  # called with the batch size before each call runs

    def validate(self, request: GenerateRequest | UnderstandRequest) -> None:
        """Every request is valid here: these tests are about failures while running."""

    def generate(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: OnProgress | None = None,
        on_preview: OnPreview | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> list[GenerateResult | None]:
        if self.on_call is not None:
            self.on_call(len(requests))
        self.calls.append(len(requests))
        if len(requests) >= self.fail_from:
            kv_cache = Bulky()  # noqa: F841 - kept alive only by this frame, as a real call's tensors are
            raise self.make_error()
        return [None for _ in requests]

    def generate_tokens(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: OnProgress | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> object:
        return {request.request_id: None for request in requests}

    def understand(
        self,
        requests: Sequence[UnderstandRequest],
        on_text: OnText | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> list[UnderstandResult | None]:
        return [None for _ in requests]


class Bulky:
    """Stands for a large tensor; weakref-able so a test can see whether it was freed."""

    instances: list = []

    def __init__(self) -> None:
        import weakref

        Bulky.instances.append(weakref.ref(self))


def cuda_error() -> RuntimeError:
    return RuntimeError("CUDA error: an illegal memory access was encountered")


def serve_failing_runtime(conn) -> None:
    """Spawn target: the real worker loop (``serve``) on a runtime whose every call hits a CUDA error."""
    from janus_engine.worker import WorkerChannel, serve

    serve(WorkerChannel(conn, 0.0), FailingRuntime(cuda_error))


def same_picture(png_a: bytes, png_b: bytes) -> bool:
    """The same image up to the VQ decoder's rounding: every pixel within 1/255, at most 1% of them off.

    Tokens are identical alone and in a batch (the runtime tests assert that exactly), but the VQ decoder
    runs once per step over every finished row, and on CPUs whose convolution kernels block the batch
    (AVX-512 oneDNN, seen here) a batch of 3 sums in another order than a batch of 1: a pixel can land on
    the other side of a rounding step. A different seed or a neighbour's image differs far more."""
    import io

    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16) for png in (png_a, png_b))
    if a.shape != b.shape:
        return False
    diff = np.abs(a - b)
    return int(diff.max()) <= 1 and float((diff > 0).mean()) <= 0.01


@contextlib.contextmanager
def loopback_ray(num_cpus: int) -> Iterator[None]:
    """A one-node Ray cluster on 127.0.0.1 in this process (every Ray process binds and talks on loopback
    only: tests/conftest.py sets the switch before ray is imported), shut down afterwards."""
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=128 * 2**20,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
        yield
    finally:
        ray.shutdown()
