"""``janus-bot check``: what ``janus-bot run`` will need, checked without changing anything.

One line per item, ``name: OK - ...``, ``name: WARNING - ...`` or ``name: PROBLEM - ...``: the token's
environment variable; the database (:func:`bot.store.inspect.inspect_database`, which opens nothing for
writing: a missing SQLite file is reported as "will be created", not created); each device (does this
torch build have it, how much memory) and whether ``engine.max_images_per_batch`` fits it
(:mod:`janus_engine.memory_budget`); the model (a local folder, or a hub id in the cache, or one the workers
will download); the log file's folder.

Read-only: the check creates no file and no folder anywhere (no database, no log file, no cache entry).
torch is imported only by a child process (``python -m janus_engine.devices``), so the checking process
stays light and a torch that fails to import is reported as a device problem.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from bot.config import BotConfig, ConfigError
from janus_engine.config import EngineSettings
from janus_engine.devices import DeviceInfo, gib
from janus_engine.memory_budget import (
    JANUS_PRO_1B,
    JANUS_PRO_1B_PARAMS,
    JANUS_PRO_7B,
    JANUS_PRO_7B_PARAMS,
    ModelShape,
    batch_budget,
    checkpoint_files,
    model_shape_from_config,
    parameter_count,
    runtime_dtype_bytes,
)

Status = Literal["OK", "WARNING", "PROBLEM"]
PROBE_TIMEOUT_S = 180.0  # importing torch on a cold, slow disk takes a while
MAX_BATCH = next(f for f in fields(EngineSettings) if f.name == "max_images_per_batch").metadata["hi"]
_KNOWN_SHAPES = {
    "deepseek-community/janus-pro-7b": (JANUS_PRO_7B, JANUS_PRO_7B_PARAMS),
    "deepseek-community/janus-pro-1b": (JANUS_PRO_1B, JANUS_PRO_1B_PARAMS),
}


@dataclass(frozen=True)
class Item:
    """One line of the report."""

    name: str
    status: Status
    text: str

    @property
    def line(self) -> str:
        return f"{self.name}: {self.status} - {self.text}"


def ok(name: str, text: str) -> Item:
    return Item(name, "OK", text)


def problem(name: str, text: str) -> Item:
    return Item(name, "PROBLEM", text)


def exit_status(items: Sequence[Item]) -> int:
    """0 when no item is a PROBLEM (warnings included), 1 otherwise."""
    return 1 if any(item.status == "PROBLEM" for item in items) else 0


# ---- the items -------------------------------------------------------------------------------------------


def check_token(config: BotConfig, environ: dict[str, str] | None = None) -> Item:
    try:
        config.read_token(environ)
    except ConfigError as exc:
        return problem("token", exc.user_message)
    return ok("token", f"{config.discord.token_env} is set")


def check_database(url: str) -> Item:
    from bot.store.inspect import inspect_database

    state = asyncio.run(inspect_database(url))
    return problem("database", state.summary) if state.problem else ok("database", state.summary)


@dataclass(frozen=True)
class ModelFiles:
    """Where the model's files are on this machine (None: not here) and what the check said."""

    item: Item
    directory: Path | None


def _cached_snapshot(model: str, cache_dir: str | None) -> Path | None:
    """The Hugging Face cache's snapshot folder of ``model`` (its config.json's folder), read-only."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
    except Exception:  # an invalid repo id, an unreadable cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_model(config: BotConfig) -> ModelFiles:
    from janus_engine.hub import REMOTE_CODE_REPOS, has_weights, hub_offline, looks_like_path

    model = config.model.model
    if looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.exists():
            return ModelFiles(
                problem("model", f"folder {folder} does not exist (model.model names a local folder)"), None
            )
        if not folder.is_dir():
            return ModelFiles(problem("model", f"{folder} is a file, not a checkpoint folder"), None)
        if not (folder / "config.json").is_file():
            return ModelFiles(problem("model", f"folder {folder} has no config.json: not a checkpoint"), None)
        if not has_weights(folder):
            return ModelFiles(problem("model", f"folder {folder} has no (or incomplete) *.safetensors"), None)
        return ModelFiles(ok("model", f"local folder {folder} looks complete"), folder)
    replacement = REMOTE_CODE_REPOS.get(model.lower())
    if replacement:
        return ModelFiles(
            problem(
                "model", f"{model} is a remote-code checkpoint the workers cannot load; use {replacement}"
            ),
            None,
        )
    snapshot = _cached_snapshot(model, config.model.cache_dir)
    if snapshot is not None and has_weights(snapshot):
        return ModelFiles(ok("model", f"{model} is in the Hugging Face cache ({snapshot})"), snapshot)
    if config.model.local_files_only or hub_offline():
        why = "model.local_files_only is true" if config.model.local_files_only else "HF_HUB_OFFLINE is set"
        return ModelFiles(
            problem(
                "model",
                f"{model} is not in the local Hugging Face cache and {why}, so the workers cannot download "
                f"it; run `janus-bot download {model}` on a machine with internet access",
            ),
            None,
        )
    return ModelFiles(
        ok(
            "model",
            f"{model} is not in the local cache; the workers will download it at start "
            f"(or run `janus-bot download {model}` first)",
        ),
        None,
    )


def model_size(config: BotConfig, directory: Path | None) -> tuple[ModelShape, float] | None:
    """The model's shape and parameter count: from its files when they are here, else the published
    numbers of the two Janus-Pro checkpoints; None when neither is known."""
    if directory is not None:
        try:
            data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            files = checkpoint_files(directory)
            if files:
                return model_shape_from_config(data), float(parameter_count(files))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return _KNOWN_SHAPES.get(config.model.model.lower())


def probe_devices(devices: Sequence[str], *, timeout_s: float = PROBE_TIMEOUT_S) -> list[DeviceInfo]:
    """:func:`janus_engine.devices.probe_device` for each device, in a child process (which imports torch
    as the workers will; a GPU's memory query leaves a CUDA context only there)."""
    command = [sys.executable, "-m", "janus_engine.devices", *devices]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = f"probing the devices failed: {type(exc).__name__}: {exc}"
        return [DeviceInfo(d, d, False, problem=why) for d in devices]
    infos = []
    for line in done.stdout.splitlines():
        try:
            infos.append(DeviceInfo.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    if len(infos) != len(devices):
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        why = f"torch could not be imported to probe the devices: {tail}"
        return [DeviceInfo(d, d, False, problem=why) for d in devices]
    return infos


def check_device(info: DeviceInfo) -> Item:
    name = f"device {info.device}"
    return ok(name, info.detail) if info.exists else problem(name, info.detail)


def check_batch(config: BotConfig, info: DeviceInfo, size: tuple[ModelShape, float] | None) -> Item:
    """Whether engine.max_images_per_batch images fit the device next to the weights."""
    name = f"batch {info.device}"
    images = config.engine.max_images_per_batch
    if size is None:
        return ok(name, "cannot estimate the memory a batch needs until the model's files are here")
    if info.total_bytes is None:
        return ok(name, f"{info.device} does not say how much memory it has; cannot estimate")
    shape, parameters = size
    device_type = info.resolved.split(":")[0]
    budget = batch_budget(
        shape,
        parameters=parameters,
        dtype_bytes=runtime_dtype_bytes(config.model.dtype, device_type),
        total_bytes=info.total_bytes,
        images=images,
    )
    numbers = (
        f"weights {gib(budget.weights_bytes)} + {gib(budget.per_image_bytes)} per image + "
        f"{gib(budget.reserve_bytes)} reserve"
    )
    if budget.fits:
        most = min(budget.max_images, MAX_BATCH)
        return ok(
            name,
            f"engine.max_images_per_batch = {images} needs about {gib(budget.needed_bytes)} of "
            f"{gib(info.total_bytes)} ({numbers}); up to {most} would fit",
        )
    if budget.max_images < 1:
        one = budget.weights_bytes + budget.reserve_bytes + budget.per_image_bytes
        return problem(
            name,
            f"even one image needs about {gib(one)} ({numbers}) but {info.device} has "
            f"{gib(info.total_bytes)}: use a device with more memory, a smaller model or a smaller dtype",
        )
    return Item(
        name,
        "WARNING",
        f"engine.max_images_per_batch = {images} needs about {gib(budget.needed_bytes)} but {info.device} "
        f"has {gib(info.total_bytes)} ({numbers}); the largest batch that fits is {budget.max_images} "
        f"(set engine.max_images_per_batch = {budget.max_images}; bigger batches fail and are retried "
        f"one job at a time)",
    )


def check_ray(config: BotConfig) -> Item:
    """With ``backend = "ray"`` the devices live on the cluster: check that Ray is installed here and say
    what will be asked of the cluster (its resources are checked when the engine connects)."""
    if importlib.util.find_spec("ray") is None:
        return problem(
            "ray", "engine.backend = \"ray\" but Ray is not installed: pip install 'janus-discord-bot[ray]'"
        )
    gpus = sum(d == "cuda" for d in config.model.devices)
    actors = len(config.model.devices)
    where = config.engine.ray_address or "a Ray instance started on this machine"
    return ok("ray", f"{actors} worker actor(s), {gpus} on GPUs, placed by Ray at {where}")


def check_service(config: BotConfig) -> Item:
    """With ``[engine] service`` set the engine is the shared service: it must run on the Ray cluster now
    (``janus-bot engine serve``); the line says its workers, its queue and the bots already connected."""
    name = f"engine service {config.engine.service!r}"
    if importlib.util.find_spec("ray") is None:
        return problem(
            name, "engine.service is set but Ray is not installed: pip install 'janus-discord-bot[ray]'"
        )
    from janus_engine.errors import JanusError
    from janus_engine.service import probe_service

    try:
        return ok(name, probe_service(config.engine.service, config.engine.ray_address))
    except JanusError as exc:
        return problem(name, exc.user_message)


def check_token_counts(config: BotConfig) -> Item:
    """How conversation memory will count tokens (the model's tokenizer.json, or an estimate)."""
    from bot.tokens import load_model_facts

    facts = load_model_facts(config)
    how = (
        "exact, from the model's tokenizer.json" if facts.exact else "estimated (no tokenizer.json here yet)"
    )
    return ok("token counts", f"{how}; {facts.image_tokens} tokens per image, context {facts.context_tokens}")


def check_log_file(config: BotConfig) -> Item:
    file = config.logging.file
    if not file:
        return ok("log file", "none (logging.file is not set; logs go to stderr)")
    path = Path(file).expanduser()
    folder = path.parent
    if not folder.is_dir():
        return problem("log file", f"logging.file: folder {folder} does not exist")
    if path.exists():
        if path.is_dir():
            return problem("log file", f"logging.file: {path} is a folder, not a file")
        if not os.access(path, os.W_OK):
            return problem("log file", f"logging.file: {path} is not writable")
        return ok("log file", f"{path} is writable (appended to)")
    if not os.access(folder, os.W_OK | os.X_OK):
        return problem("log file", f"logging.file: folder {folder} is not writable")
    return ok("log file", f"{path} will be created in {folder}")


# ---- the whole check ------------------------------------------------------------------------------------


def run_checks(config: BotConfig, environ: dict[str, str] | None = None) -> list[Item]:
    """Every item of ``janus-bot check`` for a loaded config, in the order they are printed."""
    items = [ok("config", f"{config.source or 'the config'} is valid"), check_token(config, environ)]
    items.append(check_database(config.database.url))
    if config.engine.service:  # the service holds the model and the devices; this bot only counts tokens
        items += [check_token_counts(config), check_service(config), check_log_file(config)]
        return items
    model = check_model(config)
    items += [model.item, check_token_counts(config)]
    size = model_size(config, model.directory)
    if config.engine.backend == "ray":
        items.append(check_ray(config))
    else:
        for info in probe_devices(config.model.devices):
            items.append(check_device(info))
            if info.exists:
                items.append(check_batch(config, info, size))
    items.append(check_log_file(config))
    return items
