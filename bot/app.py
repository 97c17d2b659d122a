"""The Bot subclass: Discord wiring only.

The launcher (:mod:`bot.launcher`) opens the store and the engine and passes them in. ``setup_hook`` runs
once, before the gateway connects: jobs left over by a previous process are marked failed, the cogs are
loaded (each registers its own restart-proof buttons, and the jobs cog reports the interrupted jobs), the
commands are synced (guild-scoped when guild ids are configured, else global), and the retention loop
starts. Errors from every command, button and modal end in :meth:`JanusBot.report_error`: typed errors
become an ephemeral message saying why, anything else is logged and the user gets a short apology - never
"This interaction failed".
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.access import Access
from bot.config import BotConfig, ConfigError, load_config, restart_required_changes
from bot.limits import UsageLimiter
from bot.logs import set_log_levels
from bot.metrics import BotMetrics
from bot.modlog import LOGGED_REFUSALS, post_modlog, where
from bot.status_http import StatusServer
from bot.store import JobRecord, Store
from bot.store.retention import run_retention
from bot.tokens import ModelFacts, load_model_facts
from janus_engine.client import EngineClient
from janus_engine.errors import JanusError

log = logging.getLogger(__name__)

COG_MODULES = (
    "bot.cogs.imagine",
    "bot.cogs.describe",
    "bot.cogs.chat",
    "bot.cogs.jobs",
    "bot.cogs.quota",
    "bot.cogs.settings",
    "bot.cogs.admin",
    "bot.cogs.help",
)


def build_intents(config: BotConfig) -> discord.Intents:
    """Only what the features need: guilds, messages (for @mentions and replies), and the privileged
    message-content intent only when the operator enabled it in the config (and the developer portal)."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = config.discord.message_content_intent
    return intents


def shard_options(config: BotConfig, *, sharded_client: bool) -> dict[str, Any]:
    """discord.py's shard arguments for this process: none unsharded; ``shard_id`` for a process that
    runs one shard (a plain client); ``shard_ids`` for one that runs several (an AutoShardedBot)."""
    section = config.discord
    if not section.shard_count:
        return {}
    if sharded_client:
        return {"shard_count": section.shard_count, "shard_ids": list(section.shards)}
    (only,) = section.shards
    return {"shard_count": section.shard_count, "shard_id": only}


def make_bot(config: BotConfig, **kwargs: Any) -> JanusBot:
    """The bot for this process's shards: one connection (:class:`JanusBot`), or one per shard
    (:class:`ShardedJanusBot`) when ``discord.shard_ids`` gives this process several."""
    cls = ShardedJanusBot if len(config.discord.shards) > 1 else JanusBot
    return cls(config, **kwargs)


class JanusBot(commands.Bot):
    """discord.py Bot wired to the Janus engine and the store, which its launcher opened and closes."""

    def __init__(
        self,
        config: BotConfig,
        *,
        store: Store,
        engine: EngineClient,
        facts: ModelFacts | None = None,
        install_signal_handlers: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("command_prefix", commands.when_mentioned)
        kwargs.setdefault("help_command", None)
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        kwargs.update(shard_options(config, sharded_client=isinstance(self, commands.AutoShardedBot)))
        super().__init__(intents=build_intents(config), **kwargs)
        self.config = config
        self.store = store
        self.engine = engine
        self.facts = facts if facts is not None else load_model_facts(config)
        self.limiter = UsageLimiter(config.limits, store)
        self.access = Access(lambda: self.config, store)
        self.interrupted_jobs: Sequence[JobRecord] = ()  # left unfinished by a previous process
        self.metrics = BotMetrics()
        self.status_server: StatusServer | None = None  # /healthz and /metrics, when [http] port is set
        self._install_signal_handlers = install_signal_handlers
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tree.error(self._on_tree_error)

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: messages are handled by the chat cog's listener only (this default
        handler would otherwise treat every @mention as an unknown prefix command)."""

    # ---- wiring ------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.interrupted_jobs = await self.store.fail_interrupted_jobs()  # the jobs cog reports them
        if self.interrupted_jobs:
            log.info("marked %d job(s) of a previous run as failed", len(self.interrupted_jobs))
        for module in COG_MODULES:
            await self.load_extension(module)
        shards = self.config.discord.shards
        if not shards or 0 in shards:  # one process syncs the commands; the others would repeat it
            await self.sync_commands()
        self.run_in_background(run_retention(self.store, lambda: self.config.memory.retention_days))
        if self.config.http.port:
            server = StatusServer(self, self.config.http.host, self.config.http.port)
            await server.start()
            self.status_server = server
        if self._install_signal_handlers:
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            except (NotImplementedError, RuntimeError, AttributeError):  # Windows or not the main thread
                log.debug("SIGHUP reload not available here")

    async def sync_commands(self) -> None:
        guild_ids = self.config.discord.guild_ids
        if guild_ids:
            for gid in guild_ids:
                guild = discord.Object(gid)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to guild %d", len(synced), gid)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (may take up to an hour to appear)", len(synced))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.status_server is not None:
            await self.status_server.stop()
            self.status_server = None
        await super().close()

    def run_in_background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a job follower (or another loop) in the background; tracked so close() can end it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ---- errors ------------------------------------------------------------------------------------

    async def refuse(self, interaction: discord.Interaction, text: str) -> None:
        """An ephemeral 'no, because ...'.

        After a public defer Discord cannot make the answer ephemeral any more (the first follow-up takes
        the defer's visibility), so then the 'thinking' message itself becomes the explanation.
        """
        none = discord.AllowedMentions.none()
        try:
            if not interaction.response.is_done():
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=none)
            elif interaction.extras.get("public_defer") and not interaction.extras.get("answered"):
                await interaction.edit_original_response(content=text, allowed_mentions=none)
            else:
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=none)
        except discord.HTTPException as exc:
            log.warning("could not tell the user why (%s): %s", exc, text)

    async def report_error(self, interaction: discord.Interaction, exc: BaseException) -> None:
        if isinstance(exc, app_commands.CommandInvokeError):
            exc = exc.original
        if isinstance(exc, JanusError):
            reason = type(exc).__name__
            self.metrics.refused(reason)
            await self.refuse(interaction, exc.user_message)
            if reason in LOGGED_REFUSALS:
                what = f"/{interaction.command.qualified_name}" if interaction.command else "a request"
                self.run_in_background(
                    post_modlog(
                        self,
                        interaction.guild_id,
                        f"{where(interaction.user.id, interaction.channel_id)}: {what} refused "
                        f"({reason}): {exc.user_message}",
                    )
                )
        elif isinstance(exc, app_commands.CheckFailure):
            self.metrics.refused(type(exc).__name__)
            await self.refuse(interaction, str(exc) or "You cannot use this command here.")
        else:
            self.metrics.refused("UnexpectedError")
            ref = uuid.uuid4().hex[:8]
            log.error("unexpected error (ref %s) in %s", ref, _describe(interaction), exc_info=exc)
            await self.refuse(interaction, f"Something went wrong on our side (ref `{ref}`); it was logged.")

    async def _on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await self.report_error(interaction, error)

    # ---- reload ------------------------------------------------------------------------------------

    def reload_config(self) -> str:
        """Re-read the config file. On an error the running config stays and the error is returned."""
        if self.config.source is None:
            return "This bot was not started from a config file; nothing to reload."
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            # The reply goes to Discord (and the modlog channel): the file by its name, not its path on
            # this machine (the log line above has the path).
            reason = str(exc).replace(str(self.config.source), self.config.source.name)
            return f"Reload failed, the running config is unchanged: {reason}"
        pending = restart_required_changes(self.config, new)
        # Keep the sections that need a restart as they are running, so the bot stays consistent.
        applied = replace(
            new,
            model=self.config.model,
            engine=self.config.engine,
            database=self.config.database,
            http=self.config.http,
            logging=replace(new.logging, file=self.config.logging.file),
            memory=replace(new.memory, tokenizer_path=self.config.memory.tokenizer_path),
        )
        self.config = applied
        self.limiter.update(applied.limits)
        set_log_levels(applied.logging.level)  # the level applies at once (the file needs a restart)
        log.info("config reloaded from %s", new.source)
        msg = "Config reloaded."
        if pending:
            msg += " These changes need a restart to take effect: " + ", ".join(pending) + "."
        return msg

    def _on_sighup(self) -> None:
        log.info("SIGHUP: %s", self.reload_config())


def _describe(interaction: discord.Interaction) -> str:
    data: Any = interaction.data or {}
    cmd = interaction.command.qualified_name if interaction.command else data.get("custom_id", "?")
    return f"{cmd!s} (user {interaction.user.id})"


class ShardedJanusBot(JanusBot, commands.AutoShardedBot):
    """:class:`JanusBot` on discord.py's AutoShardedBot: one gateway connection per shard of
    ``discord.shard_ids``, one event loop, one engine and one store for all of them."""
