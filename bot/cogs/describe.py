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
from bot.formatting import clip, quote_prompt
from bot.limits import CHAT
from bot.prompt_craft import IMAGE_PROMPT_QUESTION, prompts_for_image
from bot.store import JobKind, JobStatus
from bot.understanding import answer_interaction
from bot.uploads import check_attachments, is_image, read_images
from bot.views import DescribeButton, proposals_view

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
    @app_commands.describe(
        image="The image",
        question="What to ask about it (default: describe it)",
        prompts="Propose four /imagine prompts for this image instead, with buttons that draw them",
    )
    async def describe(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        question: app_commands.Range[str, 1, 2000] | None = None,
        prompts: bool = False,
    ) -> None:
        if prompts:
            await self.propose_prompts(interaction, image)
            return
        text = question or self.bot.config.understanding.default_question
        await answer_interaction(self.bot, interaction, text=text, attachments=[image], kind=JobKind.DESCRIBE)

    async def propose_prompts(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        """Midjourney's /describe: Janus proposes prompts for the image; each gets an Imagine button. The
        proposals are stored as a describe job, so the buttons work after a restart."""
        bot = self.bot
        who = bot.access.requester(interaction)
        await bot.access.admit(who)
        check_attachments([image], bot.config.understanding)
        reservation = await bot.limiter.reserve(who.user_id, CHAT, roles=who.role_ids, guild_id=who.guild_id)
        try:
            await interaction.response.defer(thinking=True)
            interaction.extras["public_defer"] = True
            (png,) = await read_images([image], bot.config.understanding)
            await interaction.edit_original_response(content="Janus is looking for the words…")
            found = await prompts_for_image(bot, png, user_id=who.user_id)
        except BaseException:
            await bot.limiter.release(reservation)
            raise
        job = await bot.store.create_job(
            JobKind.DESCRIBE,
            user_id=who.user_id,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            prompt=IMAGE_PROMPT_QUESTION,
            params={"prompts": found},
        )
        lines = [f"<@{who.user_id}>: prompts Janus proposes for this image:"]
        lines += [f"{i + 1}. {quote_prompt(p, 300)}" for i, p in enumerate(found)]
        message = await interaction.edit_original_response(
            content=clip("\n".join(lines)),
            view=proposals_view(job.id, len(found)),
            allowed_mentions=discord.AllowedMentions.none(),
        )
        interaction.extras["answered"] = True
        await bot.store.finish_job(job.id, JobStatus.DONE, message_ids=[message.id])

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
