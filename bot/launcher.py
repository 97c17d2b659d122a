"""``janus-bot run`` and ``janus-bot check``: logging, then the store and the engine, then the Bot.

The launcher opens what the bot uses and closes it again (RoboDanny's ``launcher.py``): the store
(schema upgraded at start), the engine (worker processes started and the model loaded), and then
``JanusBot`` gets both passed in. The Bot itself only wires Discord (see :mod:`bot.app`).

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
    from janus_engine.config import EngineConfig

log = logging.getLogger(__name__)


def setup_logging(config: BotConfig | None = None, *, verbose: bool = False) -> None:
    """The one logging set-up of the ``janus-bot`` command: a stderr handler (unless the process already
    has one), then, once a config is known, its level and its log file."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    if config is None:
        return
    set_log_levels(logging.DEBUG if verbose else config.logging.level)
    if config.logging.file:
        handler = logging.FileHandler(config.logging.file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)


async def serve(
    config: BotConfig, token: str, *, engine_config: EngineConfig | None = None, **bot_kwargs: Any
) -> None:
    """Open the store and the engine, run the bot until it closes, then close what was opened."""
    from bot.app import JanusBot
    from bot.store import Store
    from bot.tokens import load_model_facts
    from janus_engine.engine import JanusEngine

    facts = load_model_facts(config)
    async with await Store.open(config.database.url, count_tokens=facts.count_tokens) as store:
        log.info("starting engine workers on %s", ", ".join(config.model.devices))
        async with JanusEngine(engine_config or config.engine_config()) as engine:
            bot = JanusBot(config, store=store, engine=engine, facts=facts, **bot_kwargs)
            async with bot:
                await bot.start(token)


def run_command(args: argparse.Namespace) -> int:
    import discord

    config = load_config(args.config)
    setup_logging(config, verbose=getattr(args, "verbose", False))
    token = config.read_token()
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
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Validate the config, the database and the model without connecting to Discord or loading torch."""
    from bot.store import Store
    from bot.tokens import load_model_facts

    config = load_config(args.config)
    problems = 0
    print(f"config: {config.source} is valid")
    try:
        config.read_token()
        print(f"token: {config.discord.token_env} is set")
    except ConfigError as exc:
        problems += 1
        print(f"token: PROBLEM - {exc}")

    async def check_db() -> str:
        store = await Store.open(config.database.url, count_tokens=load_model_facts(config).count_tokens)
        try:
            await store.list_jobs(limit=1)
        finally:
            await store.close()
        return "reachable, schema at the newest migration"

    try:
        print(f"database: {asyncio.run(check_db())}")
    except Exception as exc:
        problems += 1
        print(f"database: PROBLEM - {type(exc).__name__}: {exc}")

    facts = load_model_facts(config)
    local = Path(config.model.model).expanduser()
    if local.is_dir():
        ok = (local / "config.json").is_file()
        print(f"model: local directory {local} {'looks complete' if ok else 'has no config.json'}")
        problems += 0 if ok else 1
    elif facts.exact:
        print(f"model: {config.model.model} found in the Hugging Face cache")
    else:
        hint = "" if not config.model.local_files_only else " and model.local_files_only is true"
        print(
            f"model: {config.model.model} is not in the local cache{hint}; the workers will download it at "
            f"start (or run `janus-bot download {config.model.model}` first)"
        )
        problems += 1 if config.model.local_files_only else 0
    print(f"memory: {'exact token counts (tokenizer.json)' if facts.exact else 'estimated token counts'}")
    return 1 if problems else 0
