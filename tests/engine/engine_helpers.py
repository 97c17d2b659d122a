"""Engine test helpers: an EngineConfig on the tiny checkpoint, and small event-stream utilities.

Engines are started once per module (workers import torch in ~5 s) and shared by that module's tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from janus_engine.config import EngineConfig
from janus_engine.engine import JobHandle
from janus_engine.protocol import GenerateRequest, JobEvent, ModelSpec, TextSampling, Turn, UnderstandRequest


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
