"""Buttons that keep working after restarts: DynamicItems whose custom_id carries the job id.

A plain ``ui.View`` dies after 180 s or with the process ("This interaction failed"). Here every button's
custom_id is ``janus:<action>:<job id>[:<image index>]``; the bot registers the classes once with
``add_dynamic_items`` and discord.py rebuilds the button from any message's custom_id, after any
restart. The job's prompt, parameters and owner live in the database, so the button needs nothing else.
The callbacks only route to the cogs, which hold the behaviour; errors go to the bot's single reporter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import ui

if TYPE_CHECKING:
    from bot.app import JanusBot

_JOB = r"(?P<job>[A-Za-z0-9_-]{1,64})"


def _bot(interaction: discord.Interaction) -> JanusBot:
    return interaction.client  # type: ignore[return-value]


class _JobButton:
    """Mixin for the job buttons: build the custom_id, parse it back, route errors to the bot's reporter.

    (A plain mixin, because discord.py requires a template on every DynamicItem subclass.)"""

    action = ""
    label = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str, *, row: int | None = None) -> None:
        super().__init__(  # type: ignore[call-arg]  # DynamicItem.__init__, next in the MRO
            ui.Button(label=self.label, style=self.style, custom_id=f"janus:{self.action}:{job_id}", row=row)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: ui.Button, match: re.Match[str], /
    ) -> _JobButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> Any:
        bot = _bot(interaction)
        try:
            await self.run(bot, interaction)
        except Exception as exc:
            await bot.report_error(interaction, exc)

    async def run(self, bot: JanusBot, interaction: discord.Interaction) -> None:
        raise NotImplementedError


class CancelButton(_JobButton, ui.DynamicItem[ui.Button], template=rf"janus:cancel:{_JOB}"):
    action, label, style = "cancel", "Cancel", discord.ButtonStyle.danger

    async def run(self, bot: JanusBot, interaction: discord.Interaction) -> None:
        await bot.jobs_cog.cancel_from_button(interaction, self.job_id)


class RerollButton(_JobButton, ui.DynamicItem[ui.Button], template=rf"janus:reroll:{_JOB}"):
    action, label, style = "reroll", "Re-roll", discord.ButtonStyle.primary

    async def run(self, bot: JanusBot, interaction: discord.Interaction) -> None:
        await bot.imagine_cog.reroll(interaction, self.job_id)


class EditPromptButton(_JobButton, ui.DynamicItem[ui.Button], template=rf"janus:edit:{_JOB}"):
    action, label = "edit", "Edit prompt"

    async def run(self, bot: JanusBot, interaction: discord.Interaction) -> None:
        await bot.imagine_cog.open_edit_modal(interaction, self.job_id)


class DeleteButton(_JobButton, ui.DynamicItem[ui.Button], template=rf"janus:delete:{_JOB}"):
    action, label = "delete", "Delete"

    async def run(self, bot: JanusBot, interaction: discord.Interaction) -> None:
        await bot.imagine_cog.delete_result(interaction, self.job_id)


class DescribeButton(ui.DynamicItem[ui.Button], template=rf"janus:describe:{_JOB}:(?P<index>\d{{1,2}})"):
    """Ask Janus about one generated image; the image is read back from the message the button sits on."""

    def __init__(self, job_id: str, index: int, *, label: str = "Describe", row: int | None = None) -> None:
        super().__init__(
            ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"janus:describe:{job_id}:{index}",
                row=row,
            )
        )
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: ui.Button, match: re.Match[str], /
    ) -> DescribeButton:
        return cls(match["job"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> Any:
        bot = _bot(interaction)
        try:
            await bot.describe_cog.describe_generated(interaction, self.job_id, self.index)
        except Exception as exc:
            await bot.report_error(interaction, exc)


DYNAMIC_ITEMS = (CancelButton, RerollButton, EditPromptButton, DeleteButton, DescribeButton)


def progress_view(job_id: str) -> ui.View:
    """Shown while a job is queued or running."""
    view = ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def retry_view(job_id: str) -> ui.View:
    """Shown under a job that a restart interrupted: run it again, as it was or with another prompt."""
    view = ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(EditPromptButton(job_id))
    return view


def result_view(job_id: str, n_images: int) -> ui.View:
    """Shown under finished images: Re-roll, Edit prompt, Delete, and one Describe per image."""
    view = ui.View(timeout=None)
    view.add_item(RerollButton(job_id, row=0))
    view.add_item(EditPromptButton(job_id, row=0))
    view.add_item(DeleteButton(job_id, row=0))
    if n_images == 1:
        view.add_item(DescribeButton(job_id, 0, row=0))
    else:
        for i in range(min(n_images, 10)):
            view.add_item(DescribeButton(job_id, i, label=f"Describe {i + 1}", row=1 + i // 5))
    return view


class EditPromptModal(ui.Modal, title="Edit prompt"):
    """Pre-filled with the job's prompt; submitting starts a new job with the same parameters."""

    prompt: ui.TextInput = ui.TextInput(
        label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph, max_length=1000
    )

    def __init__(self, job_id: str, prompt: str, max_chars: int) -> None:
        # A modal lives as long as the interaction that opened it (15 minutes); forget it after that.
        super().__init__(timeout=15 * 60, custom_id=f"janus:editmodal:{job_id}")
        self.job_id = job_id
        self.prompt.default = prompt[:max_chars]
        self.prompt.max_length = max_chars

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot = _bot(interaction)
        try:
            await bot.imagine_cog.submit_edited(interaction, self.job_id, str(self.prompt.value))
        except Exception as exc:
            await bot.report_error(interaction, exc)
