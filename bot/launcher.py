"""``janus-bot run`` and ``janus-bot check``: logging, then the store and the engine, then the Bot.

The launcher opens what the bot uses and closes it again (RoboDanny's ``launcher.py``): the store
(schema upgraded at start), the engine (worker processes started and the model loaded), and then
``JanusBot`` gets both passed in. The Bot itself only wires Discord (see :mod:`bot.app`).

``janus-bot check`` lives in :mod:`bot.preflight` (read-only); this module only prints its lines.

The heavy imports (discord.py, SQLAlchemy, the engine) happen inside the commands, so that
``janus-bot --help`` and the engine-only subcommands, which only need :func:`setup_logging`, start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import BotConfig, ConfigError, load_config
from bot.logs import LOG_FORMAT, set_log_levels

if TYPE_CHECKING:
    from janus_engine.client import EngineClient
    from janus_engine.config import EngineConfig

log = logging.getLogger(__name__)


def setup_logging(config: BotConfig | None = None, *, verbose: bool = False) -> None:
    """The one logging set-up of the ``janus-bot`` command: a stderr handler (unless the process already
    has one), then, once a config is known, its level and its log file.

    A log file in a folder that does not exist is a ConfigError (a typo'd path is reported, not created)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    if config is None:
        return
    set_log_levels(logging.DEBUG if verbose else config.logging.level)
    if config.logging.file:
        path = Path(config.logging.file).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"logging.file: folder {path.parent} does not exist")
        try:
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot open {path}: {exc.strerror or exc}") from None
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)


async def serve(
    config: BotConfig, token: str, *, engine_config: EngineConfig | None = None, **bot_kwargs: Any
) -> None:
    """Open the store and the engine, run the bot until it closes, then close what was opened."""
    from bot.app import make_bot
    from bot.store import Store
    from bot.tokens import load_model_facts

    facts = load_model_facts(config)
    owner = config.discord.owner  # the name this process's jobs carry (its shard set)
    async with await Store.open(config.database.url, count_tokens=facts.count_tokens, owner=owner) as store:
        engine = engine_client(config, engine_config)
        log.info("starting the engine: %s", engine.description)
        await engine.start()
        try:
            bot = make_bot(config, store=store, engine=engine, facts=facts, **bot_kwargs)
            async with bot:
                await bot.start(token)
        finally:
            await engine.stop()


def engine_client(config: BotConfig, engine_config: EngineConfig | None = None) -> EngineClient:
    """The engine this bot process uses: its own (workers started by ``start``) or, with ``[engine]
    service`` set, the shared engine service on Ray (``janus-bot engine serve``)."""
    if config.engine.service:
        try:
            from janus_engine.service import ServiceEngine
        except ImportError as exc:
            raise ConfigError(
                f"engine.service needs Ray, which is not installed ({exc}): "
                "pip install 'janus-discord-bot[ray]'"
            ) from None
        return ServiceEngine(
            config.engine.service,
            config.engine.ray_address,
            owner=config.discord.owner,
            ready_timeout_s=config.engine.worker_start_timeout_s,
        )
    from janus_engine.client import LocalEngine
    from janus_engine.engine import JanusEngine

    return LocalEngine(JanusEngine(engine_config or config.engine_config()))


def run_command(args: argparse.Namespace) -> int:
    """``janus-bot run``: the devices are checked and the model loaded (the engine started) before the
    bot logs in to Discord, so a broken device or model never gets as far as the gateway. What goes wrong
    on purpose ends as a ConfigError or JanusError: one line and exit status 2 from :func:`bot.cli.main`."""
    import aiohttp
    import discord

    config = load_config(args.config)
    setup_logging(config, verbose=getattr(args, "verbose", False))
    token = config.read_token()
    _require_devices(config)
    try:
        asyncio.run(serve(config, token, install_signal_handlers=True))
    except discord.LoginFailure:
        raise ConfigError(
            f"Discord refused the token in {config.discord.token_env}; check it in the developer portal"
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise ConfigError(
            "discord.message_content_intent is true but the intent is not enabled for this bot in the "
            "developer portal (Bot -> Privileged Gateway Intents)"
        ) from None
    except (aiohttp.ClientConnectionError, discord.GatewayNotFound) as exc:
        raise ConfigError(f"cannot reach Discord at {_discord_base()}: {_reason(exc)}") from None
    return 0


def engine_serve_command(args: argparse.Namespace) -> int:
    """``janus-bot engine serve``: run the engine as its own process, a named service on the Ray cluster
    that bot processes with the same ``[engine] service`` connect to (:mod:`janus_engine.service`). It
    loads the model (on Ray worker actors) before it reports ready, and drains on Ctrl-C or SIGTERM."""
    config = load_config(args.config)
    setup_logging(config, verbose=getattr(args, "verbose", False))
    try:
        from janus_engine.service import DEFAULT_NAME, run_service
    except ImportError as exc:
        raise ConfigError(
            f"janus-bot engine serve needs Ray, which is not installed ({exc}): "
            "pip install 'janus-discord-bot[ray]'"
        ) from None
    asyncio.run(run_service(config.engine_config(), config.engine.service or DEFAULT_NAME))
    return 0


def _require_devices(config: BotConfig) -> None:
    """Refuse to start when a configured device is missing from this torch build, before anything is
    opened: the database is not created and the model not loaded for a bot that cannot run. The probe
    runs in a child process (:func:`bot.preflight.probe_devices`): this process never imports torch."""
    from bot.preflight import probe_devices

    if config.engine.backend == "ray" or config.engine.service:
        return  # the GPUs are the cluster's (or the engine service's): checked where the workers start
    missing = [info for info in probe_devices(config.model.devices) if not info.exists]
    if missing:
        reasons = "; ".join(info.problem or f"{info.device} is not available" for info in missing)
        raise ConfigError(f"model.devices: {reasons} (`janus-bot check` lists each device)")


def _discord_base() -> str:
    from discord.http import Route

    return Route.BASE


def _reason(exc: BaseException) -> str:
    """One line for a connection failure (aiohttp's messages name the host and the OS error)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_command(args: argparse.Namespace) -> int:
    """``janus-bot check``: what ``run`` will need, one line per item (see :mod:`bot.preflight`), without
    connecting to Discord, loading the model or writing anything.

    Exit status: 0 when every item is OK (WARNING lines included), 1 when any item is a PROBLEM; a config
    that cannot be loaded is a ConfigError (one line on stderr, exit status 2 from the CLI)."""
    from bot.preflight import exit_status, run_checks

    config = load_config(args.config)
    items = run_checks(config)
    for item in items:
        print(item.line, flush=True)
    return exit_status(items)
