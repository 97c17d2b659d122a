"""/settings for server managers: where the bot answers, conversation scope, NSFW policy, defaults.

``default_permissions`` only hides the command by default (server admins can change that), so every
subcommand also checks the member's real Manage Server permission. Changes go through the store with
the actor's id, which writes the audit log entry in the same transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import Refusal
from bot.formatting import quote_prompt
from bot.modlog import post_modlog, where
from bot.policy import (
    DEFAULT_COUNT,
    DEFAULT_GUIDANCE,
    DEFAULT_TEMPERATURE,
    ENABLED,
    MODERATION,
    MODLOG_CHANNEL,
    NSFW_POLICY,
    PERSONA,
    ServerSettings,
    check_prompt,
)
from bot.store import SCOPE_SETTING

if TYPE_CHECKING:
    from bot.app import JanusBot


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(
    commands.GroupCog, group_name="settings", group_description="Server settings (Manage Server)"
):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        perms = interaction.permissions
        if not (perms.manage_guild or perms.administrator or self.bot.access.is_owner(interaction.user.id)):
            # A CheckFailure (not a plain exception) so discord.py hands it to the tree error handler.
            raise app_commands.CheckFailure(
                "You need the Manage Server permission to change the bot's settings."
            )
        return True

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(text, ephemeral=True)

    async def _changed(self, interaction: discord.Interaction, text: str) -> None:
        """Answer a settings change, and tell the server's mod-log who changed what."""
        await self._reply(interaction, text)
        who = where(interaction.user.id, interaction.channel_id)
        name = interaction.command.qualified_name if interaction.command else "settings"
        await post_modlog(self.bot, interaction.guild_id, f"{who}: /{name}: {text}")

    @app_commands.command(name="show", description="Show this channel's effective settings")
    async def show(self, interaction: discord.Interaction) -> None:
        who = self.bot.access.requester(interaction)
        settings = await self.bot.access.settings_for(who)
        memory = self.bot.config.memory
        g = self.bot.config.generation
        filtering = _or(settings.moderation, self.bot.config.moderation.enabled)
        lines = [
            f"Bot enabled here: {'no' if settings.enabled is False else 'yes'}",
            f"Conversation scope: {_or(settings.conversation_scope, memory.default_scope)}",
            f"NSFW policy: {_or(settings.nsfw_policy, self.bot.config.access.nsfw_policy)}",
            f"Default image count: {_or(settings.default_count, g.default_count)}",
            f"Default guidance: {_or(settings.default_guidance, g.default_guidance)}",
            f"Default temperature: {_or(settings.default_temperature, g.default_temperature)}",
            f"Image filter (moderation): {'on' if filtering else 'off'}"
            " (images are never checked in channels marked NSFW)",
        ]
        await self._reply(interaction, "\n".join(lines))

    @app_commands.command(name="channel", description="Turn the bot on or off in a channel")
    @app_commands.describe(enabled="Answer in this channel?", channel="Which channel (default: this one)")
    async def channel(
        self, interaction: discord.Interaction, enabled: bool, channel: discord.TextChannel | None = None
    ) -> None:
        target = channel.id if channel is not None else _channel_id(interaction)
        await self.bot.store.update_channel_settings(
            target,
            # Stored either way: a thread turned on under a channel that is off must override it.
            {ENABLED: enabled},
            guild_id=interaction.guild_id,
            actor_id=interaction.user.id,
        )
        await self._changed(interaction, f"The bot is now {'on' if enabled else 'off'} in <#{target}>.")

    @app_commands.command(name="scope", description="Who shares a conversation in a channel")
    @app_commands.describe(scope="user: each user has their own; shared: the whole channel shares one")
    @app_commands.choices(
        scope=[
            app_commands.Choice(name="per user (private)", value="user"),
            app_commands.Choice(name="shared by the channel", value="shared"),
        ]
    )
    async def scope(
        self, interaction: discord.Interaction, scope: str, channel: discord.TextChannel | None = None
    ) -> None:
        target = channel.id if channel is not None else _channel_id(interaction)
        await self.bot.store.update_channel_settings(
            target, {SCOPE_SETTING: scope}, guild_id=interaction.guild_id, actor_id=interaction.user.id
        )
        await self._changed(interaction, f"Conversations in <#{target}> are now {scope}.")

    @app_commands.command(name="nsfw", description="How NSFW prompts are handled on this server")
    @app_commands.choices(
        policy=[
            app_commands.Choice(name="only in channels marked NSFW", value="nsfw_channels_only"),
            app_commands.Choice(name="never", value="block"),
            app_commands.Choice(name="anywhere (if the bot's config allows)", value="allow"),
        ]
    )
    async def nsfw(self, interaction: discord.Interaction, policy: str) -> None:
        await self.bot.store.update_guild_settings(
            _guild_id(interaction), {NSFW_POLICY: policy}, actor_id=interaction.user.id
        )
        note = ""
        if policy == "allow" and self.bot.config.access.nsfw_policy != "allow":
            note = f" (the bot's config is stricter: {self.bot.config.access.nsfw_policy} still applies)"
        await self._changed(interaction, f"NSFW policy set to {policy}{note}.")

    @app_commands.command(name="moderation", description="Check generated images before they are posted")
    @app_commands.describe(
        enabled="Janus answers the config's moderation question about each image; flagged images are withheld"
    )
    async def moderation(self, interaction: discord.Interaction, enabled: bool) -> None:
        await self.bot.store.update_guild_settings(
            _guild_id(interaction), {MODERATION: enabled}, actor_id=interaction.user.id
        )
        state = "on in channels not marked NSFW" if enabled else "off"
        await self._changed(interaction, f"The image filter is now {state}.")

    @app_commands.command(name="modlog", description="Where refusals, moderation hits and admin actions go")
    @app_commands.describe(channel="The mod-log channel (leave empty to stop posting there)")
    async def modlog(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        guild_id = _guild_id(interaction)
        if channel is None:
            await self.bot.store.update_guild_settings(
                guild_id, {MODLOG_CHANNEL: None}, actor_id=interaction.user.id
            )
            await self._reply(interaction, "The mod-log is off: nothing is posted to a channel any more.")
            return
        await self.bot.store.update_guild_settings(
            guild_id, {MODLOG_CHANNEL: channel.id}, actor_id=interaction.user.id
        )
        await self._changed(interaction, f"The mod-log is now <#{channel.id}>.")

    @app_commands.command(name="persona", description="Who Janus is in /chat and /describe on this server")
    @app_commands.describe(text="The assistant's system prompt here (leave empty for the bot's default)")
    async def persona(
        self, interaction: discord.Interaction, text: app_commands.Range[str, 1, 1000] | None = None
    ) -> None:
        persona = (text or "").strip()
        check_prompt(
            self.bot.config.access, self.bot.access.requester(interaction), ServerSettings(), persona
        )
        await self.bot.store.update_guild_settings(
            _guild_id(interaction), {PERSONA: persona or None}, actor_id=interaction.user.id
        )
        shown = f"now: {quote_prompt(persona, 300)}" if persona else "back to the bot's default"
        await self._changed(interaction, f"The persona for /chat and /describe is {shown}.")

    @app_commands.command(name="defaults", description="Server defaults for /imagine")
    async def defaults(
        self,
        interaction: discord.Interaction,
        count: app_commands.Range[int, 1, 10] | None = None,
        guidance: app_commands.Range[float, 1.01, 100.0] | None = None,
        temperature: app_commands.Range[float, 0.0, 10.0] | None = None,
    ) -> None:
        g = self.bot.config.generation
        changes: dict[str, Any] = {}
        if count is not None:
            if count > g.max_count:
                raise Refusal(f"count: at most {g.max_count}.")
            changes[DEFAULT_COUNT] = count
        if guidance is not None:
            if not g.min_guidance <= guidance <= g.max_guidance:
                raise Refusal(f"guidance: between {g.min_guidance} and {g.max_guidance}.")
            changes[DEFAULT_GUIDANCE] = guidance
        if temperature is not None:
            if temperature > g.max_temperature:
                raise Refusal(f"temperature: at most {g.max_temperature}.")
            changes[DEFAULT_TEMPERATURE] = temperature
        if not changes:
            raise Refusal("Give at least one of count, guidance, temperature.")
        await self.bot.store.update_guild_settings(
            _guild_id(interaction), changes, actor_id=interaction.user.id
        )
        await self._changed(
            interaction, "Defaults updated: " + ", ".join(f"{k}={v}" for k, v in changes.items())
        )


def _or(server: object, config: object) -> object:
    """The server's setting where it has one, else the config's default."""
    return server if server is not None else config


def _guild_id(interaction: discord.Interaction) -> int:
    if interaction.guild_id is None:  # the group is guild_only; a DM never gets here
        raise Refusal("Server settings can only be changed in a server.")
    return interaction.guild_id


def _channel_id(interaction: discord.Interaction) -> int:
    if interaction.channel_id is None:
        raise Refusal("This interaction has no channel.")
    return interaction.channel_id


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(SettingsCog(bot))
