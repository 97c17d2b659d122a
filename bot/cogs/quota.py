"""/quota: what a user may still do today (their caps, the server's, a cooldown still running)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.limits import CHAT, IMAGINE, Quota

if TYPE_CHECKING:
    from bot.app import JanusBot

_UNITS = {IMAGINE: ("Images", "image"), CHAT: ("Messages", "message")}


def quota_line(q: Quota) -> str:
    name, _ = _UNITS[q.action]
    if q.cap:
        line = f"{name} today: {q.used} of {q.cap} used, {max(q.cap - q.used, 0)} left"
    else:
        line = f"{name} today: {q.used} used, no daily limit"
    if q.server_cap:
        line += f" · this server: {q.server_used} of {q.server_cap}"
    if q.cooldown_left_s > 0:
        line += f" · next one in {q.cooldown_left_s:.0f}s"
    return line


class QuotaCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description="Your remaining images and messages today")
    async def quota(self, interaction: discord.Interaction) -> None:
        who = self.bot.access.requester(interaction)
        lines = [
            quota_line(
                await self.bot.limiter.quota(who.user_id, action, roles=who.role_ids, guild_id=who.guild_id)
            )
            for action in (IMAGINE, CHAT)
        ]
        lines.append("Limits reset at 00:00 UTC.")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(QuotaCog(bot))
