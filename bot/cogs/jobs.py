"""/queue, /cancel and the Cancel button: a user's own jobs, their queue positions and ETAs.

The engine knows what is queued and running (positions, ETAs); the store knows whose job is whose and
what finished. Cancelling checks the job's owner from the store, so nobody cancels someone else's job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import NO_PINGS
from bot.errors import NotAllowed, Refusal
from bot.formatting import clip, format_eta, plural, quote_prompt
from bot.store import INTERACTION_ID, REPLY_TO, JobKind, JobRecord
from bot.views import CancelButton, retry_view

if TYPE_CHECKING:
    from bot.app import JanusBot

log = logging.getLogger(__name__)


class JobsCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelButton)
        if self.bot.interrupted_jobs:
            self.bot.run_in_background(report_interrupted(self.bot, self.bot.interrupted_jobs))

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CancelButton)

    @app_commands.command(name="queue", description="Your queued and running jobs, with positions and ETAs")
    async def queue(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        live = await bot.engine.jobs_of(str(interaction.user.id))
        status = await bot.engine.status()
        lines = [f"Queue: {status.queue_depth} waiting, {status.running} running."]
        if not live:
            lines.append("You have no queued or running jobs.")
        for info in live:
            job = await bot.store.get_job(info.job_id)
            what = quote_prompt(job.prompt, 80) if job is not None and job.prompt else info.kind
            where = f"position {info.position}" if info.state == "queued" else "running"
            lines.append(f"`{info.job_id}` {info.kind}: {what} — {where}, ETA {format_eta(info.eta_s)}")
        await interaction.response.send_message(clip("\n".join(lines)), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs (or all of them)")
    @app_commands.describe(job="The job id (from /queue); leave empty to cancel all your jobs")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        bot = self.bot
        mine = [info.job_id for info in await bot.engine.jobs_of(str(interaction.user.id))]
        if job is not None:
            if job not in mine:
                raise Refusal("You have no queued or running job with that id (see /queue).")
            mine = [job]
        if not mine:
            raise Refusal("You have no queued or running jobs.")
        cancelled = [job_id for job_id in mine if await bot.engine.cancel(job_id)]
        if not cancelled:
            raise Refusal("Those jobs had already finished.")
        await interaction.response.send_message(
            f"Cancelling {len(cancelled)} job(s): " + ", ".join(f"`{j}`" for j in cancelled), ephemeral=True
        )

    @cancel.autocomplete("job")
    async def _job_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        out = []
        for info in await self.bot.engine.jobs_of(str(interaction.user.id)):
            if current in info.job_id:
                out.append(
                    app_commands.Choice(
                        name=f"{info.kind} {info.state} {info.job_id}"[:100], value=info.job_id
                    )
                )
        return out[:25]

    async def cancel_from_button(self, interaction: discord.Interaction, job_id: str) -> None:
        bot = self.bot
        job = await bot.store.get_job(job_id)
        if job is None:
            raise Refusal("This job is no longer known.")
        if job.user_id != interaction.user.id and not bot.access.is_owner(interaction.user.id):
            raise NotAllowed("Only the person who started this job can cancel it.")
        if job.status.is_terminal:
            raise Refusal(f"This job already ended ({job.status.value}).")
        if not await bot.engine.cancel(job_id):
            raise Refusal("This job is not running any more.")
        await interaction.response.send_message("Cancelling…", ephemeral=True)


INTERRUPTED = "This job was interrupted: the bot restarted before it finished."


async def report_interrupted(client: discord.Client, jobs: Sequence[JobRecord]) -> None:
    """After a restart, edit the messages of jobs the previous process left unfinished to say so.

    Without this, a user would be left looking at a progress bar that never moves and a Cancel button
    that answers "already ended". An /imagine job gets Re-roll and Edit prompt buttons, so running it
    again is one click; a question is asked again by the user. Uses only REST (the bot's own messages),
    so it works before the gateway is ready and long after the interaction token died."""
    for job in jobs:
        if job.channel_id is None:
            continue
        channel = client.get_partial_messageable(job.channel_id)
        message_ids = job.message_ids or await _find_messages(client, channel, job)
        view: Any = None
        if job.kind == JobKind.IMAGINE:
            count = int(job.params.get("count", 1))
            text = (
                f"<@{job.user_id}>: {quote_prompt(job.prompt)} · {plural(count, 'image')}\n"
                f"{INTERRUPTED} Press Re-roll to run it again."
            )
            view = retry_view(job.id)
        else:
            text = f"{INTERRUPTED} Please ask again."
        for message_id in message_ids:
            try:
                await channel.get_partial_message(message_id).edit(
                    content=text, attachments=[], view=view, allowed_mentions=NO_PINGS
                )
            except discord.HTTPException as exc:  # deleted meanwhile, or no longer visible to the bot
                log.info("could not update interrupted job %s's message %s: %s", job.id, message_id, exc)


async def _find_messages(client: discord.Client, channel: Any, job: JobRecord) -> tuple[int, ...]:
    """The messages of a job whose ids were never recorded (the process died between showing its first
    message and writing the id): the channel's messages since the job began that carry its interaction
    (``interaction_metadata``), or that reply to the @mention it answers."""
    interaction_id = job.params.get(INTERACTION_ID)
    reply_to = job.params.get(REPLY_TO)
    if interaction_id is None and reply_to is None:
        return ()
    since = discord.Object(discord.utils.time_snowflake(job.created_at - timedelta(seconds=5)))
    own_id = client.user.id if client.user is not None else None
    found: list[int] = []
    try:
        async for message in channel.history(limit=100, after=since, oldest_first=True):
            meta = message.interaction_metadata
            started_it = interaction_id is not None and meta is not None and meta.id == int(interaction_id)
            answers_it = (
                reply_to is not None
                and message.author.id == own_id
                and message.reference is not None
                and message.reference.message_id == int(reply_to)
            )
            if started_it or answers_it:
                found.append(message.id)
    except discord.HTTPException as exc:  # no Read Message History there, or the channel is gone
        log.info("could not look for interrupted job %s's messages: %s", job.id, exc)
    return tuple(found)


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(JobsCog(bot))
