"""Who is asking, and may they: the policy helpers every feature shares.

:class:`Access` turns a Discord user and channel into a plain :class:`~bot.policy.Requester`, admits it
(the config's rules and the server's /settings) and says which conversation it joins. It reads the
config at each call, so an ``/admin reload`` applies at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import discord

from bot.config import BotConfig
from bot.policy import Requester, check_access
from bot.store import ConversationKey, ConversationScope, ServerSettings, Store


class Access:
    """Built once by the Bot; it takes a getter for the config (not the config) so reloads apply."""

    def __init__(self, config: Callable[[], BotConfig], store: Store) -> None:
        self._config = config
        self._store = store

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

    def requester(self, interaction: discord.Interaction[Any]) -> Requester:
        return self.requester_of(
            interaction.user, interaction.channel, interaction.guild, guild_id=interaction.guild_id
        )

    async def settings_for(self, who: Requester) -> ServerSettings:
        if who.guild_id is None:
            return ServerSettings()
        data = await self._store.effective_settings(
            guild_id=who.guild_id, channel_id=who.channel_id, parent_channel_id=who.parent_channel_id
        )
        return ServerSettings.from_data(data)

    async def admit(self, who: Requester) -> ServerSettings:
        """The access check shared by every feature; returns the effective server settings."""
        settings = await self.settings_for(who)
        check_access(self._config().access, who, settings)
        return settings

    def conversation_key(self, who: Requester, settings: ServerSettings) -> ConversationKey:
        if who.is_dm:
            scope = ConversationScope.DM
        else:
            value = settings.conversation_scope
            if value is None:
                value = self._config().memory.default_scope
            scope = ConversationScope.SHARED if value == "shared" else ConversationScope.USER
        return ConversationKey.for_scope(
            scope, guild_id=who.guild_id, channel_id=who.channel_id, user_id=who.user_id
        )

    def is_owner(self, user_id: int) -> bool:
        return user_id in self._config().discord.owners
