"""The process holding a JanusEngine never imports torch or transformers (only its workers do), and if
that process dies abruptly its worker does not linger as an orphan."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from janus_engine.engine import JanusEngine
    from janus_engine.config import EngineConfig
    from janus_engine.protocol import GenerateRequest, ModelSpec

    async def main(model_dir):
        config = EngineConfig(model=ModelSpec(model=model_dir, local_files_only=True), devices=("cpu",))
        engine = JanusEngine(config)
        await engine.start()
        result = await engine.submit(GenerateRequest("one", "a cat", guidance=2.0), user_id="u").result()
        assert result.images, "no image came back"
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print("HEAVY:" + ",".join(heavy))
        print("WORKER:" + str(engine.status().workers[0].pid), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # die without stopping the engine, like a crashed bot

    asyncio.run(main(sys.argv[1]))
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_front_runs_a_job_without_torch_and_its_worker_dies_with_it(tiny_model_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == -9, done.stderr  # it killed itself after printing
    heavy = done.stdout.split("HEAVY:")[1].splitlines()[0]
    assert heavy == "", f"the engine front imported {heavy}"
    worker = int(done.stdout.split("WORKER:")[1].split()[0])
    assert worker != os.getpid()
    deadline = time.monotonic() + 20
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived the process that owned its engine"


def test_the_ray_transport_imports_without_torch():
    # The front imports janus_engine.ray_transport for backend = "ray"; the actor imports torch itself.
    probe = (
        "import sys, janus_engine.ray_transport\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
