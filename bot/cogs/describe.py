"""/describe, the "Describe image" message menu and the Describe button under generated images.

All three ask Janus about images and stream the answer into the message. The exchange joins the user's
conversation, so a follow-up (/chat, an @mention or a reply) can ask more about the same image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import Refusal
from bot.store import JobKind
from bot.understanding import answer_interaction
from bot.uploads import is_image
from bot.views import DescribeButton

if TYPE_CHECKING:
    from bot.app import JanusBot


class DescribeCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Describe image", callback=self.describe_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(DescribeButton)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(DescribeButton)

    @app_commands.command(name="describe", description="Ask Janus about an image")
    @app_commands.describe(image="The image", question="What to ask about it (default: describe it)")
    async def describe(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        question: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        text = question or self.bot.config.understanding.default_question
        await answer_interaction(self.bot, interaction, text=text, attachments=[image], kind=JobKind.DESCRIBE)

    async def describe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        images = [a for a in message.attachments if is_image(a)]
        if not images:
            raise Refusal("That message has no images to describe.")
        limit = self.bot.config.understanding.max_images_per_message
        await answer_interaction(
            self.bot,
            interaction,
            text=self.bot.config.understanding.default_question,
            attachments=images[:limit],
            kind=JobKind.DESCRIBE,
        )

    async def describe_generated(self, interaction: discord.Interaction, job_id: str, index: int) -> None:
        """The Describe button: the image is read back from the message the button sits on."""
        attachments = interaction.message.attachments if interaction.message else []
        if index >= len(attachments):
            raise Refusal("That image is no longer on this message.")
        await answer_interaction(
            self.bot,
            interaction,
            text=self.bot.config.understanding.default_question,
            attachments=[attachments[index]],
            kind=JobKind.DESCRIBE,
        )


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(DescribeCog(bot))
