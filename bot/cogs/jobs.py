"""/queue, /cancel and the Cancel button: a user's own jobs, their queue positions and ETAs.

The engine knows what is queued and running (positions, ETAs); the store knows whose job is whose and
what finished. Cancelling checks the job's owner from the store, so nobody cancels someone else's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import NotAllowed, Refusal
from bot.formatting import clip, format_eta, quote_prompt

if TYPE_CHECKING:
    from bot.app import JanusBot


class JobsCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Your queued and running jobs, with positions and ETAs")
    async def queue(self, interaction: discord.Interaction) -> None:
        bot = self.bot
        live = bot.engine.jobs_of(str(interaction.user.id))
        status = bot.engine.status()
        lines = [f"Queue: {status.queue_depth} waiting, {status.running} running."]
        if not live:
            lines.append("You have no queued or running jobs.")
        for info in live:
            job = await bot.store.get_job(info.job_id)
            what = quote_prompt(job.prompt, 80) if job is not None else info.kind
            where = f"position {info.position}" if info.state == "queued" else "running"
            lines.append(f"`{info.job_id}` {info.kind}: {what} — {where}, ETA {format_eta(info.eta_s)}")
        await interaction.response.send_message(clip("\n".join(lines)), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs (or all of them)")
    @app_commands.describe(job="The job id (from /queue); leave empty to cancel all your jobs")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        bot = self.bot
        mine = [info.job_id for info in bot.engine.jobs_of(str(interaction.user.id))]
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
        for info in self.bot.engine.jobs_of(str(interaction.user.id)):
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
        if job.user_id != interaction.user.id and not bot.is_owner_id(interaction.user.id):
            raise NotAllowed("Only the person who started this job can cancel it.")
        if job.status.is_terminal:
            raise Refusal(f"This job already ended ({job.status.value}).")
        if not await bot.engine.cancel(job_id):
            raise Refusal("This job is not running any more.")
        await interaction.response.send_message("Cancelling…", ephemeral=True)


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(JobsCog(bot))
