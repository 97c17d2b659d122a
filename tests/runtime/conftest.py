"""Runtime fixtures: one JanusRuntime on the session's tiny checkpoint, loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def runtime(tiny_model_dir: Path):
    from janus_engine.protocol import ModelSpec
    from janus_engine.runtime import JanusRuntime

    return JanusRuntime.load(ModelSpec(model=str(tiny_model_dir), device="cpu"))
