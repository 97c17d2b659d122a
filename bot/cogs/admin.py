"""/admin reload and /admin stats, for the owners named in the config (checked by the bot itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.formatting import format_eta
from bot.modlog import post_modlog, where

if TYPE_CHECKING:
    from bot.app import JanusBot


class AdminCog(commands.GroupCog, group_name="admin", group_description="Bot owners only"):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not self.bot.access.is_owner(interaction.user.id):
            # A CheckFailure (not a plain exception) so discord.py hands it to the tree error handler.
            raise app_commands.CheckFailure(
                "Only the bot's owners (named in its config file) can use /admin."
            )
        return True

    @app_commands.command(
        name="reload", description="Re-read the config file (an invalid file keeps the old one)"
    )
    async def reload(self, interaction: discord.Interaction) -> None:
        message = self.bot.reload_config()
        await self.bot.store.record_audit(
            actor_id=interaction.user.id,
            action="admin.reload",
            guild_id=interaction.guild_id,
            details={"result": message},
        )
        await interaction.response.send_message(message, ephemeral=True)
        who = where(interaction.user.id, interaction.channel_id)
        await post_modlog(self.bot, interaction.guild_id, f"{who}: /admin reload: {message}")

    @app_commands.command(name="stats", description="Engine workers, queue and throughput")
    async def stats(self, interaction: discord.Interaction) -> None:
        s = await self.bot.engine.status()
        lines = [
            f"Uptime {format_eta(s.uptime_s).lstrip('~')} · queue {s.queue_depth} · running {s.running}",
            f"Jobs done {s.jobs_done} · failed {s.jobs_failed} · cancelled {s.jobs_cancelled}"
            f" · batches {s.batches}",
            f"Last minute: {s.images_per_s:.2f} images/s · {s.tokens_per_s:.1f} tokens/s"
            + (f" · {s.avg_step_s * 1000:.1f} ms/step" if s.avg_step_s else ""),
            "Workers:",
        ]
        for w in s.workers:
            jobs = f" running {len(w.job_ids)} job(s)" if w.job_ids else ""
            err = f" · last error: {w.last_error}" if w.last_error else ""
            lines.append(f"- {w.name} on {w.device}: {w.state}{jobs} · restarts {w.restarts}{err}")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(AdminCog(bot))
