"""The Bot subclass and the ``janus-bot run`` / ``janus-bot check`` commands.

``setup_hook`` wires everything once, before the gateway connects: the config (read in one place and
passed down), the store (schema upgraded at start; jobs left over by a previous process marked failed),
the engine (worker processes started and the model loaded), the cogs, the restart-proof buttons
(``add_dynamic_items``) and the command sync (guild-scoped when guild ids are configured, else global).
Errors from every command, button and modal end in :meth:`JanusBot.report_error`: typed errors become an
ephemeral message saying why, anything else is logged and the user gets a short apology - never
"This interaction failed".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import BotConfig, ConfigError, load_config, restart_required_changes
from bot.delivery import report_interrupted
from bot.limits import UsageLimiter
from bot.policy import Requester, check_access
from bot.store import SCOPE_SETTING, ConversationKey, ConversationScope, Store, apply_retention
from bot.tokens import ModelFacts, load_model_facts
from bot.views import DYNAMIC_ITEMS
from janus_engine.errors import JanusError

if TYPE_CHECKING:
    from bot.cogs.chat import ChatCog
    from bot.cogs.describe import DescribeCog
    from bot.cogs.imagine import ImagineCog
    from bot.cogs.jobs import JobsCog
    from janus_engine.engine import JanusEngine

log = logging.getLogger(__name__)

COG_MODULES = (
    "bot.cogs.imagine",
    "bot.cogs.describe",
    "bot.cogs.chat",
    "bot.cogs.jobs",
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


class JanusBot(commands.Bot):
    """discord.py Bot wired to the Janus engine and the store.

    ``engine`` and ``store`` may be passed in (tests share one engine across bot restarts; the demo uses
    a tiny model); otherwise they are built from the config in ``setup_hook`` and owned by the bot.
    """

    def __init__(
        self,
        config: BotConfig,
        *,
        engine: JanusEngine | None = None,
        engine_config: Any = None,
        install_signal_handlers: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("command_prefix", commands.when_mentioned)
        kwargs.setdefault("help_command", None)
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(intents=build_intents(config), **kwargs)
        self.config = config
        self.engine: JanusEngine = engine  # type: ignore[assignment]  # set in setup_hook if None
        self._owns_engine = engine is None
        self._engine_config = engine_config
        self.store: Store = None  # type: ignore[assignment]
        self.facts: ModelFacts = load_model_facts(config)
        self.limiter = UsageLimiter(config.limits)
        self._install_signal_handlers = install_signal_handlers
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tree.error(self._on_tree_error)

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: messages are handled by the chat cog's listener only (this default
        handler would otherwise treat every @mention as an unknown prefix command)."""

    # ---- wiring ------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.store = await Store.open(self.config.database.url, count_tokens=self.facts.count_tokens)
        stale = await self.store.fail_interrupted_jobs()
        if stale:
            log.info("marked %d job(s) of a previous run as failed", len(stale))
            self.spawn(report_interrupted(self, stale))
        if self.engine is None:
            from janus_engine.engine import JanusEngine

            self.engine = JanusEngine(self._engine_config or self.config.engine_config())
            log.info("starting engine workers on %s", ", ".join(self.config.model.devices))
            await self.engine.start()
        for module in COG_MODULES:
            await self.load_extension(module)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.sync_commands()
        self.spawn(self._retention_loop())
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
        await super().close()
        if self.engine is not None and self._owns_engine:
            await self.engine.stop()
        if self.store is not None:
            await self.store.close()

    async def _retention_loop(self, interval_s: float = 3600.0) -> None:
        """Delete conversation turns older than memory.retention_days, hourly (read at each pass, so a
        reload applies). One failed pass is logged and retried, never the end of the loop."""
        while True:
            days = self.config.memory.retention_days
            if days > 0:
                try:
                    await apply_retention(self.store, days)
                except Exception:
                    log.exception("retention pass failed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a job follower in the background; tracked so close() can end it cleanly."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ---- cogs, for the buttons ---------------------------------------------------------------------

    @property
    def imagine_cog(self) -> ImagineCog:
        return self.get_cog("ImagineCog")  # type: ignore[return-value]

    @property
    def describe_cog(self) -> DescribeCog:
        return self.get_cog("DescribeCog")  # type: ignore[return-value]

    @property
    def chat_cog(self) -> ChatCog:
        return self.get_cog("ChatCog")  # type: ignore[return-value]

    @property
    def jobs_cog(self) -> JobsCog:
        return self.get_cog("JobsCog")  # type: ignore[return-value]

    # ---- policy helpers the cogs share -------------------------------------------------------------

    @staticmethod
    def requester_of(
        user: discord.abc.User, channel: Any, guild: discord.Guild | None, *, guild_id: int | None = None
    ) -> Requester:
        gid = guild.id if guild is not None else guild_id
        roles = frozenset(r.id for r in getattr(user, "roles", ()) if gid is None or r.id != gid)
        parent = getattr(channel, "parent_id", None)
        nsfw = bool(getattr(channel, "nsfw", False)) or bool(
            getattr(getattr(channel, "parent", None), "nsfw", False)
        )
        return Requester(
            user_id=user.id,
            guild_id=gid,
            channel_id=channel.id,
            parent_channel_id=parent,
            role_ids=roles,
            channel_nsfw=nsfw,
        )

    def requester(self, interaction: discord.Interaction) -> Requester:
        return self.requester_of(
            interaction.user, interaction.channel, interaction.guild, guild_id=interaction.guild_id
        )

    async def settings_for(self, who: Requester) -> dict[str, Any]:
        if who.guild_id is None:
            return {}
        return await self.store.effective_settings(
            guild_id=who.guild_id, channel_id=who.channel_id, parent_channel_id=who.parent_channel_id
        )

    async def gate(self, who: Requester) -> dict[str, Any]:
        """Access check shared by every feature; returns the effective server settings."""
        settings = await self.settings_for(who)
        check_access(self.config.access, who, settings)
        return settings

    def conversation_key(self, who: Requester, settings: dict[str, Any]) -> ConversationKey:
        if who.is_dm:
            scope = ConversationScope.DM
        else:
            value = settings.get(SCOPE_SETTING, self.config.memory.default_scope)
            scope = ConversationScope.SHARED if value == "shared" else ConversationScope.USER
        return ConversationKey.for_scope(
            scope, guild_id=who.guild_id, channel_id=who.channel_id, user_id=who.user_id
        )

    def is_owner_id(self, user_id: int) -> bool:
        return user_id in self.config.discord.owners

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
            await self.refuse(interaction, exc.user_message)
        elif isinstance(exc, app_commands.CheckFailure):
            await self.refuse(interaction, str(exc) or "You cannot use this command here.")
        else:
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
            return f"Reload failed, the running config is unchanged: {exc}"
        pending = restart_required_changes(self.config, new)
        # Keep the sections that need a restart as they are running, so the bot stays consistent.
        from dataclasses import replace

        applied = replace(
            new,
            model=self.config.model,
            engine=self.config.engine,
            database=self.config.database,
            logging=replace(new.logging, file=self.config.logging.file),
            memory=replace(new.memory, tokenizer_path=self.config.memory.tokenizer_path),
        )
        self.config = applied
        self.limiter.update(applied.limits)
        root = logging.getLogger()
        root.setLevel(applied.logging.level)  # the level applies at once (the file needs a restart)
        logging.getLogger("discord").setLevel(max(root.level, logging.INFO))
        log.info("config reloaded from %s", new.source)
        msg = "Config reloaded."
        if pending:
            msg += " These changes need a restart to take effect: " + ", ".join(pending) + "."
        return msg

    def _on_sighup(self) -> None:
        log.info("SIGHUP: %s", self.reload_config())


def _describe(interaction: discord.Interaction) -> str:
    cmd = (
        interaction.command.qualified_name if interaction.command else interaction.data.get("custom_id", "?")
    )
    return f"{cmd!s} (user {interaction.user.id})"


# ---- janus-bot run / check -------------------------------------------------------------------------


def configure_logging(config: BotConfig, *, verbose: bool = False) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else config.logging.level)
    if config.logging.file:
        handler = logging.FileHandler(config.logging.file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    logging.getLogger("discord").setLevel(max(root.level, logging.INFO))


def run_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config, verbose=getattr(args, "verbose", False))
    token = config.read_token()
    bot = JanusBot(config, install_signal_handlers=True)

    async def main() -> None:
        async with bot:
            await bot.start(token)

    try:
        asyncio.run(main())
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
    from pathlib import Path

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
