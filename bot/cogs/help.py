"""/help: what the bot does and the limits that apply here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import JanusBot


class HelpCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What this bot can do")
    async def help(self, interaction: discord.Interaction) -> None:
        c = self.bot.config
        text = "\n".join(
            [
                "**Janus-Pro bot**",
                f"`/imagine prompt` — draw up to {c.generation.max_count} images; buttons: Re-roll,"
                " Edit prompt, Describe, Delete; Cancel while it runs.",
                "`/describe image [question]` — ask about an image"
                " (or right-click a message → Apps → Describe image).",
                "`/chat message [image]`, @mention me, or reply to my answer — a conversation I remember.",
                "`/history [export]` — what I remember of you · `/forget` — delete it.",
                "`/queue` — your jobs, positions and ETAs · `/cancel` — stop them.",
                "`/quota` — the images and messages you have left today.",
                "`/settings` — server managers: channels, conversation scope, NSFW policy, image filter, "
                "mod-log, defaults.",
                "",
                f"Limits: {c.limits.imagine_cooldown_s:g}s between /imagine,"
                f" {c.limits.images_per_user_per_day or '∞'} images and"
                f" {c.limits.messages_per_user_per_day or '∞'} messages a day;"
                f" up to {c.understanding.max_images_per_message} images of"
                f" {c.understanding.max_upload_bytes / 1e6:.0f} MB per message.",
            ]
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(HelpCog(bot))
