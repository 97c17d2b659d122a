"""The operator's path in docs/scaling.md: a Ray cluster started with `ray start --head`, joined by the
engine through ``ray_address = "auto"``; `janus-bot check` names the actors; a job runs on an actor of that
cluster; `ray stop` ends it. Everything on 127.0.0.1, in child processes (the test process never joins
the cluster, so nothing of it lingers here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

RAY = str(Path(sys.executable).with_name("ray"))
# The engine as a bot process would run it: joins the cluster at the given address, one CPU actor.
JOB = textwrap.dedent(
    """
    import asyncio, os, sys
    from janus_engine.config import EngineConfig
    from janus_engine.engine import JanusEngine
    from janus_engine.protocol import ModelSpec, TextSampling, Turn, UnderstandRequest

    async def main(model_dir, address):
        spec = ModelSpec(model=model_dir, local_files_only=True, torch_threads=1)
        config = EngineConfig(model=spec, devices=("cpu",), backend="ray", ray_address=address)
        async with JanusEngine(config) as engine:
            sampling = TextSampling(temperature=0.0, max_new_tokens=4)
            request = UnderstandRequest("on-cluster", (Turn("user", "hello"),), sampling)
            result = await engine.submit(request, user_id="u").result()
            print("ANSWER:" + result.request_id)
            print("WORKER:" + str(engine.status().workers[0].pid))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_engine_joins_a_cluster_started_with_ray_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ)  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (tests/conftest.py): loopback only
    port = _free_port()
    head = [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    head += ["--include-dashboard=false", "--disable-usage-stats"]
    started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        address = "auto"  # docs/scaling.md: this host ran `ray start`, the engine joins that cluster
        config = tmp_path / "config.toml"
        config.write_text(
            f'[model]\nmodel = "{tiny_model_dir}"\ndevices = ["cpu"]\nlocal_files_only = true\n'
            f'[engine]\nbackend = "ray"\nray_address = "{address}"\n'
        )
        check = subprocess.run(
            [sys.executable, "-m", "bot.cli", "check", "--config", str(config)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert f"ray: OK - 1 worker actor(s), 0 on GPUs, placed by Ray at {address}" in check.stdout
        assert "device cpu" not in check.stdout  # the cluster's devices are not probed here
        job = subprocess.run(
            [sys.executable, "-c", JOB, str(tiny_model_dir), address],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr[-3000:]
        assert "ANSWER:on-cluster" in job.stdout
        actor_pid = int(job.stdout.split("WORKER:")[1].split()[0])
        assert actor_pid != os.getpid()
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
