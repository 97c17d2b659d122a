"""The process holding a JanusEngine never imports torch or transformers: only its workers do."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from janus_engine.engine import JanusEngine
    from janus_engine.config import EngineConfig
    from janus_engine.protocol import GenerateRequest, ModelSpec

    async def main(model_dir):
        config = EngineConfig(model=ModelSpec(model=model_dir, local_files_only=True), devices=("cpu",))
        async with JanusEngine(config) as engine:
            result = await engine.submit(GenerateRequest("one", "a cat", guidance=2.0), user_id="u").result()
            assert result.images, "no image came back"
        heavy = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
        print("HEAVY:" + ",".join(heavy))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_engine_front_runs_a_job_without_importing_torch(tiny_model_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY:" in done.stdout
    heavy = done.stdout.split("HEAVY:")[1].strip()
    assert "torch" not in heavy and "transformers" not in heavy, heavy
