"""Shared test setup: one torch thread (two are erratic on 2-core machines), Ray on loopback only, and one
tiny checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray turns a loopback node address into the machine's LAN address unless it runs as a single-machine
# cluster, which this variable says. Ray reads it when it is first imported (and every Ray process and
# child inherits it), so it is set here, before any test module can import ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Janus checkpoint on disk, built once per test session through the real save path."""
    from janus_engine.tiny import build_tiny_checkpoint

    path = tmp_path_factory.mktemp("tiny-janus")
    build_tiny_checkpoint(path)
    return path
