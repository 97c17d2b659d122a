"""docs/scaling.md's engine service, as an operator runs it: `ray start --head`, `janus-bot engine serve`,
`janus-bot check` and `janus-bot run` (a real bot process against the emulator) with ``[engine] service``
set. The claim tested: the bot's jobs run on the service's workers, and a bot process killed with SIGKILL
and started again reconnects to the same service, whose workers (and loaded model) stay as they were.

Everything is a child process on 127.0.0.1; the test process never joins the Ray cluster."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from discord_emulator import DiscordEmulator
from tests.bot.bot_world import config_doc, write_toml
from tests.bot.cli_process import RUN_SCRIPT
from tests.engine.test_engine_ray_cluster import RAY, _free_port

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "JANUS_SERVICE_TEST_TOKEN"
NAME = "janus-test"


async def _spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    out = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            *args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        out.close()  # the child holds its own copy


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


async def _wait_for_text(log: Path, text: str, proc: asyncio.subprocess.Process, timeout: float) -> str:
    async with asyncio.timeout(timeout):
        while text not in (content := log.read_text(errors="replace")):
            if proc.returncode is not None:
                raise AssertionError(f"{log.name}: the process exited:\n{content[-3000:]}")
            await asyncio.sleep(0.2)
    return content


def _check(config: Path, env: dict[str, str], status: int = 0) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "check", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == status, result.stdout + result.stderr
    return result.stdout


async def test_bots_use_the_engine_service_and_a_killed_bot_reconnects(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    env = dict(os.environ)  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (tests/conftest.py): loopback only
    client_port = _free_port()  # an ephemeral port: outside Ray's worker port range (10002-19999)
    head = [RAY, "start", "--head", f"--port={_free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    head += [f"--ray-client-server-port={client_port}"]
    head += ["--include-dashboard=false", "--disable-usage-stats"]
    started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        async with DiscordEmulator(bot_token="service-token") as emu:
            guild = emu.add_guild("G")
            channel = emu.add_channel(guild)
            ivy = emu.add_user("ivy")
            emu.add_member(guild, ivy)
            doc = config_doc(
                tiny_model_dir,
                tmp_path / "bot.db",
                guild.id,
                emu.owner.id,
                discord={"token_env": TOKEN_ENV},
                engine={"backend": "ray", "ray_address": "auto", "service": NAME},
            )
            config = tmp_path / "config.toml"
            write_toml(config, doc)
            env[TOKEN_ENV] = emu.bot_token
            missing = _check(config, env, status=1)  # no service yet: a PROBLEM line that says what to do
            assert (
                f"PROBLEM - No engine service called '{NAME}' runs on the Ray cluster at auto: start it with "
                "`janus-bot engine serve" in missing
            ), missing
            serve_log = tmp_path / "serve.log"
            serve_cmd = [sys.executable, "-m", "bot.cli", "engine", "serve", "--config", str(config)]
            serve = await _spawn(serve_cmd, env, serve_log)
            try:
                await _wait_for_text(serve_log, f"engine service '{NAME}' ready", serve, timeout=180)
                before = _check(config, env)
                line = next(x for x in before.splitlines() if x.startswith(f"engine service '{NAME}'"))
                assert ": OK - ready on Ray at auto: worker-0 on cpu idle (pid " in line, before
                assert "device cpu" not in before  # nothing is probed or loaded in the bot's process
                worker_pid = re.search(r"\(pid (\d+)\)", line).group(1)

                # The second process is on "a host that is not a Ray node": it joins as a Ray client.
                client_config = tmp_path / "client.toml"
                doc["engine"]["ray_address"] = f"ray://127.0.0.1:{client_port}"
                write_toml(client_config, doc)
                client_env = {**env, "RAY_AUTH_MODE": "token"}  # docs/scaling.md: what a ray:// client needs
                run = [sys.executable, "-c", RUN_SCRIPT, emu.api_base, emu.gateway_url, "run", "--config"]
                for attempt, cfg, bot_env in ((1, config, env), (2, client_config, client_env)):
                    bot_log = tmp_path / f"bot{attempt}.log"
                    bot = await _spawn([*run, str(cfg)], bot_env, bot_log)
                    await _wait_for_text(bot_log, "connected to engine service", bot, timeout=120)
                    await _wait_for_text(bot_log, "commands to guild", bot, timeout=120)  # ready to serve
                    itx = await emu.slash(ivy, channel, "imagine", prompt=f"a red cube {attempt}")
                    message = await emu.wait_for(
                        lambda i=itx: i.original if i.original and i.original.attachments else None,
                        timeout=120,
                        message="the image",
                    )
                    assert len(message.attachments) == 1
                    if attempt == 1:
                        bot.kill()  # SIGKILL: no goodbye to the service
                        await bot.wait()
                    else:
                        assert await _stop(bot) in (0, 130)
                serve_text = serve_log.read_text(errors="replace")
                assert "main connected again" in serve_text  # the restarted bot took over its session
                assert serve_text.count(f"engine service '{NAME}' ready") == 1  # the model loaded once
                after = _check(config, env)
                assert f"worker-0 on cpu idle (pid {worker_pid})" in after  # the same worker
            finally:
                assert await _stop(serve) == 0, serve_log.read_text(errors="replace")[-3000:]
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
