"""``janus-bot check`` tells the truth about what ``run`` needs and writes nothing; ``janus-bot run`` checks
the devices and loads the model before it logs in, and its start-up failures are one line, exit status 2.

Everything is real: the CLI in a child process, real worker processes on the tiny checkpoint, real SQLite
(through bot.store.inspect), and the real discord.py client against discord_emulator/.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.config import parse_config
from bot.preflight import (
    check_batch,
    check_database,
    check_log_file,
    check_model,
    check_ray,
    exit_status,
    model_size,
)
from discord_emulator import DiscordEmulator
from janus_engine.devices import DeviceInfo
from tests.bot.bot_world import write_toml
from tests.bot.cli_process import RUN_SCRIPT

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "JANUS_PREFLIGHT_TOKEN"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lines(out: str) -> dict[str, str]:
    """check's report by item name: {"database": "OK - ...", ...}."""
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _missing_cuda_device() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return "cuda:0", f"cuda:0 is not available: this torch build has no CUDA (torch {torch.__version__})"
    count = torch.cuda.device_count()
    return f"cuda:{count}", f"cuda:{count} does not exist"


def _tiny_doc(tiny_model_dir: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = {
        "discord": {"token_env": TOKEN_ENV},
        "model": {
            "model": str(tiny_model_dir),
            "devices": ["cpu"],
            "local_files_only": True,
            "torch_threads": 1,
        },
        "engine": {"max_images_per_batch": 4, "worker_start_timeout_s": 120},
        "generation": {"max_count": 4},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return doc


# ---- janus-bot check ---------------------------------------------------------------------------------------


def test_check_creates_nothing_and_says_what_run_will_create(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A database in a folder that does not exist yet and a log file that does not exist yet: check says
    run will create them, reports the device and the batch's memory, exits 0, and leaves tmp_path as it
    was (today's check opened the Store: folder, database file and migrations)."""
    cfg = tmp_path / "config.toml"
    write_toml(
        cfg,
        _tiny_doc(
            tiny_model_dir,
            database={"url": "sqlite+aiosqlite:///not-yet/deeper/janus.db"},  # relative to the config file
            logging={"file": str(tmp_path / "bot.log")},
        ),
    )
    before = _tree(tmp_path)
    done = _cli("check", "--config", str(cfg), env=_env(**{TOKEN_ENV: "secret-token-value"}))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(tmp_path) == before, "check created files or folders"
    report = _lines(done.stdout)
    assert report["config"] == f"OK - {cfg} is valid"
    assert report["token"] == f"OK - {TOKEN_ENV} is set"
    db = tmp_path / "not-yet" / "deeper" / "janus.db"
    assert report["database"].startswith(f"OK - sqlite file {db}")
    assert "does not exist; `janus-bot run`" in report["database"] and "will create it" in report["database"]
    assert report["model"] == f"OK - local folder {tiny_model_dir} looks complete"
    assert report["device cpu"].startswith("OK - CPU, ") and "GiB total" in report["device cpu"]
    assert report["batch cpu"].startswith("OK - engine.max_images_per_batch = 4 needs about ")
    assert report["log file"] == f"OK - {tmp_path / 'bot.log'} will be created in {tmp_path}"
    assert "secret-token-value" not in done.stdout + done.stderr
    assert "PROBLEM" not in done.stdout


def test_check_reports_the_default_cuda_device_this_torch_lacks(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The default devices = ["cuda:0"] on a CPU-only torch: a PROBLEM line with the reason, exit 1, and
    no batch line for a device that is not there."""
    device, reason = _missing_cuda_device()
    cfg = tmp_path / "config.toml"
    write_toml(
        cfg,
        _tiny_doc(
            tiny_model_dir,
            model={"devices": ["cpu", device]},
            database={"url": f"sqlite+aiosqlite:///{tmp_path / 'janus.db'}"},
        ),
    )
    done = _cli("check", "--config", str(cfg), env=_env(**{TOKEN_ENV: "t"}))
    assert done.returncode == 1, done.stdout + done.stderr
    report = _lines(done.stdout)
    assert report[f"device {device}"].startswith(f"PROBLEM - {reason}")
    assert f"batch {device}" not in report and report["device cpu"].startswith("OK - ")
    assert not (tmp_path / "janus.db").exists()


def test_check_model_tells_a_missing_folder_from_a_hub_id(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "janus"
    item = check_model(parse_config({"model": {"model": str(missing)}})).item
    assert item.status == "PROBLEM" and item.text.startswith(f"folder {missing} does not exist")
    assert "download" not in item.text
    for form in (f"./{missing.name}-nowhere", "~/no-such-janus-folder", "some/deeper/path"):
        item = check_model(parse_config({"model": {"model": form}})).item
        assert item.status == "PROBLEM" and "does not exist" in item.text, form
    (tmp_path / "empty").mkdir()
    item = check_model(parse_config({"model": {"model": str(tmp_path / "empty")}})).item
    assert item.status == "PROBLEM" and "has no config.json" in item.text
    hub = {"model": "deepseek-community/Janus-Pro-1B", "cache_dir": str(tmp_path / "hf")}
    item = check_model(parse_config({"model": {**hub, "local_files_only": True}})).item
    assert item.status == "PROBLEM" and "local_files_only is true" in item.text
    assert (
        "will download" not in item.text and "janus-bot download deepseek-community/Janus-Pro-1B" in item.text
    )
    remote = check_model(parse_config({"model": {"model": "deepseek-ai/Janus-Pro-7B"}})).item
    assert remote.status == "PROBLEM" and "deepseek-community/Janus-Pro-7B" in remote.text
    assert not (tmp_path / "hf").exists() and not (tmp_path / "models").exists()


def test_check_database_missing_driver_is_a_problem_and_a_missing_file_is_not(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        driver = check_database("postgresql+asyncpg://janus:pw@127.0.0.1:1/janus")
        assert driver.status == "PROBLEM" and "asyncpg" in driver.text and "pw" not in driver.text
    fresh = check_database(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'janus.db'}")
    assert fresh.status == "OK" and "will create it" in fresh.text
    assert not (tmp_path / "new").exists()


def test_check_log_file_in_a_missing_folder_is_a_problem(tmp_path: Path) -> None:
    item = check_log_file(parse_config({"logging": {"file": str(tmp_path / "logs" / "bot.log")}}))
    assert (
        item.status == "PROBLEM" and item.text == f"logging.file: folder {tmp_path / 'logs'} does not exist"
    )
    assert not (tmp_path / "logs").exists()


def test_check_with_the_ray_backend_names_the_actors_and_needs_ray_installed(monkeypatch) -> None:
    import bot.preflight

    config = parse_config(
        {"engine": {"backend": "ray", "ray_address": "auto"}, "model": {"devices": ["cuda", "cuda", "cpu"]}}
    )
    if importlib.util.find_spec("ray") is not None:
        item = check_ray(config)
        assert item.status == "OK" and "3 worker actor(s), 2 on GPUs, placed by Ray at auto" in item.text
    monkeypatch.setattr(bot.preflight.importlib.util, "find_spec", lambda name: None)
    item = check_ray(config)
    assert item.status == "PROBLEM" and "pip install 'janus-discord-bot[ray]'" in item.text


# ---- janus-bot run's start-up ------------------------------------------------------------------------------


async def _run_cli(
    cfg: Path, api: str, gateway: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN_SCRIPT,
        api,
        gateway,
        "run",
        "--config",
        str(cfg),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


async def test_run_with_a_missing_device_never_reaches_the_gateway(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The default cuda:0 on a CPU-only torch: `run` probes the devices before it opens anything, so it
    ends with one readable line and exit 2, the emulator saw no REST call and no gateway connection, and
    no database was created. (A worker started on a missing device fails the same way: test_devices.)"""
    device, reason = _missing_cuda_device()
    cfg = tmp_path / "config.toml"
    write_toml(
        cfg,
        _tiny_doc(
            tiny_model_dir,
            model={"devices": [device]},
            database={"url": f"sqlite+aiosqlite:///{tmp_path / 'janus.db'}"},
        ),
    )
    async with DiscordEmulator(bot_token="the-token") as emu:
        done = await _run_cli(cfg, emu.api_base, emu.gateway_url, _env(**{TOKEN_ENV: "the-token"}))
        assert emu.gateway.sessions == [] and emu.world.requests == []
    assert done.returncode == 2, done.stderr
    assert _last_line(done.stderr) == (
        f"janus-bot run: model.devices: {reason} (`janus-bot check` lists each device)"
    )
    assert "Traceback" not in done.stderr and "_cuda_setDevice" not in done.stderr
    assert not (tmp_path / "janus.db").exists()


async def test_run_with_discord_unreachable_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    """discord.py pointed at a closed loopback port: not aiohttp's traceback, one line and exit 2."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = tmp_path / "config.toml"
    write_toml(
        cfg, _tiny_doc(tiny_model_dir, database={"url": f"sqlite+aiosqlite:///{tmp_path / 'janus.db'}"})
    )
    api = f"http://127.0.0.1:{port}/api/v10"
    done = await _run_cli(cfg, api, f"ws://127.0.0.1:{port}/", _env(**{TOKEN_ENV: "the-token"}))
    assert done.returncode == 2, done.stderr
    assert _last_line(done.stderr).startswith(f"janus-bot run: cannot reach Discord at {api}: ")
    assert f"127.0.0.1:{port}" in _last_line(done.stderr)
    assert "Traceback" not in done.stderr


def test_run_with_a_log_file_in_a_missing_folder_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tmp_path / "config.toml"
    logs = tmp_path / "lgos"  # a typo'd folder is reported, not created
    write_toml(
        cfg,
        _tiny_doc(
            tiny_model_dir,
            logging={"file": str(logs / "bot.log")},
            database={"url": f"sqlite+aiosqlite:///{tmp_path / 'janus.db'}"},
        ),
    )
    done = _cli("run", "--config", str(cfg), env=_env(**{TOKEN_ENV: "the-token"}), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"janus-bot run: logging.file: folder {logs} does not exist"
    assert not logs.exists() and not (tmp_path / "janus.db").exists()


def test_check_batch_warns_with_the_largest_batch_that_fits() -> None:
    """Janus-Pro-7B (its published shape: no files here) in bf16 with the default 16-image batches on a
    24 GiB card: a WARNING naming the largest batch that fits (exit status stays 0); on 12 GiB a PROBLEM."""
    config = parse_config({"model": {"model": "deepseek-community/Janus-Pro-7B"}})
    size = model_size(config, None)
    card = DeviceInfo("cuda:0", "cuda:0", True, name="a 24 GiB card", total_bytes=24 * 2**30)
    item = check_batch(config, card, size)
    assert item.status == "WARNING" and exit_status([item]) == 0
    assert "engine.max_images_per_batch = 16 needs about" in item.text
    assert "the largest batch that fits is 14 (set engine.max_images_per_batch = 14" in item.text
    small = check_batch(config, DeviceInfo("cuda:0", "cuda:0", True, total_bytes=12 * 2**30), size)
    assert small.status == "PROBLEM" and exit_status([small]) == 1
    big = check_batch(config, DeviceInfo("cuda:0", "cuda:0", True, total_bytes=80 * 2**30), size)
    assert big.status == "OK" and "up to 64 would fit" in big.text
