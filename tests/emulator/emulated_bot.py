"""A small real discord.py bot for the emulator tests, and helpers to start and stop it.

The bot is defined here, not imported from bot/, so these tests check the emulator on its own: every
path the product bot uses (slash, defer + file follow-up, DynamicItem buttons, modals, context menus,
mentions) runs through the real client against the loopback server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from dataclasses import dataclass, field

import discord
from discord import app_commands
from discord.ext import commands

from discord_emulator import Channel, DiscordEmulator, Guild, User


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=r"job:(?P<job>\d+):(?P<action>\w+)"):
    """Restart-proof button: the job id and action live in the custom_id."""

    def __init__(self, job: int, action: str) -> None:
        super().__init__(discord.ui.Button(label=action.title(), custom_id=f"job:{job}:{action}"))
        self.job = job
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> JobButton:
        return cls(int(match["job"]), match["action"])

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.action == "edit":
            await interaction.response.send_modal(EditPrompt(self.job))
        elif self.action == "cancel":  # acknowledge now (type 6), edit the message afterwards
            await interaction.response.defer()
            await interaction.edit_original_response(content=f"job {self.job} cancelled", view=None)
        else:  # "reroll": update the message in place (callback type 7)
            await interaction.response.edit_message(
                content=f"job {self.job} re-rolled by {interaction.user.name}"
            )


class EditPrompt(discord.ui.Modal, title="Edit prompt"):
    prompt: discord.ui.TextInput = discord.ui.TextInput(label="Prompt", custom_id="prompt", max_length=200)

    def __init__(self, job: int) -> None:
        super().__init__()
        self.job = job

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            f"job {self.job} new prompt: {self.prompt.value}", allowed_mentions=discord.AllowedMentions.none()
        )


@dataclass
class Observed:
    """What the bot saw and the errors it got back, for tests to assert on."""

    errors: list[Exception] = field(default_factory=list)
    release_late_followup: asyncio.Event = field(default_factory=asyncio.Event)
    stop_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    described_bytes: list[int] = field(default_factory=list)
    slow_seconds: float = 0.5
    seen: list[str] = field(default_factory=list)  # content of user messages as the bot received them


class EmulatedTestBot(commands.Bot):
    def __init__(self, guild_id: int | None, observed: Observed, **options: object) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),  # no message-content intent: mentions must still work
            guild_ready_timeout=0.05,
            **options,  # e.g. shard_id / shard_count
        )
        self.guild_id = guild_id
        self.observed = observed
        self._define_commands()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton)
        if self.guild_id is None:
            await self.tree.sync()
        else:
            guild = discord.Object(self.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)

    async def on_message(self, message: discord.Message) -> None:
        if not message.author.bot:
            self.observed.seen.append(message.content)
        if message.author.bot or self.user not in message.mentions:
            return
        sizes = [a.size for a in message.attachments]
        await message.reply(
            f"hi {message.author.name}: {message.content!r} files={sizes}",
            allowed_mentions=discord.AllowedMentions.none(),
        )

    def _define_commands(self) -> None:
        tree, observed = self.tree, self.observed

        @tree.command(description="Say pong")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong", ephemeral=True)

        @tree.command(description="Which shard answers")
        async def shard(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"shard {interaction.client.shard_id}")

        @tree.command(description="Repeat text")
        async def echo(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message(text, allowed_mentions=discord.AllowedMentions.none())

        @tree.command(description="Pretend to draw")
        @app_commands.describe(prompt="what to draw", count="how many")
        async def imagine(
            interaction: discord.Interaction, prompt: str, count: app_commands.Range[int, 1, 4] = 1
        ) -> None:
            await interaction.response.defer(thinking=True)
            files = [discord.File(io.BytesIO(_png_bytes(i)), filename=f"image{i}.png") for i in range(count)]
            view = discord.ui.View(timeout=None)
            view.add_item(JobButton(42, "reroll"))
            view.add_item(JobButton(42, "edit"))
            await interaction.followup.send(
                f"{prompt} x{count}", files=files, view=view, allowed_mentions=discord.AllowedMentions.none()
            )

        @tree.command(description="Progress, then an extra follow-up that is edited and deleted")
        async def progress(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.edit_original_response(content="50%")
            await interaction.edit_original_response(content="100%")
            extra = await interaction.followup.send("extra", wait=True)
            await extra.edit(content="extra edited")
            await extra.delete()

        @tree.command(description="Answer with an embed and a file at once")
        async def card(interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(JobButton(7, "cancel"))
            await interaction.response.send_message(
                embed=discord.Embed(title="Card", description="a card"),
                file=discord.File(io.BytesIO(b"card-bytes"), filename="card.txt"),
                view=view,
            )

        @tree.command(description="Send the user a DM")
        async def dm(interaction: discord.Interaction) -> None:
            await interaction.user.send("a private note")
            await interaction.response.send_message("check your DMs", ephemeral=True)

        @tree.command(description="Answer too late")
        async def slow(interaction: discord.Interaction) -> None:
            with contextlib.suppress(TimeoutError):  # the fixture releases it at teardown
                await asyncio.wait_for(observed.stop_waiting.wait(), observed.slow_seconds)
            try:
                await interaction.response.send_message("too late")
            except discord.HTTPException as exc:
                observed.errors.append(exc)

        @tree.command(description="Follow up after the test says so")
        async def later(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await observed.release_late_followup.wait()
            try:
                await interaction.followup.send("done")
            except discord.HTTPException as exc:
                observed.errors.append(exc)
                await interaction.channel.send(
                    f"{interaction.user.mention} done (token expired)",
                    allowed_mentions=discord.AllowedMentions.none(),
                )

        @tree.command(description="Upload a file of the given size")
        async def upload(interaction: discord.Interaction, mebibytes: int) -> None:
            await interaction.response.defer()
            try:
                await interaction.followup.send(
                    file=discord.File(io.BytesIO(_blob(mebibytes)), filename="big.bin")
                )
            except discord.HTTPException as exc:
                observed.errors.append(exc)
                await interaction.followup.send(f"too large for {interaction.filesize_limit} bytes")

        @tree.command(description="Describe an attachment")
        async def describe(interaction: discord.Interaction, image: discord.Attachment) -> None:
            data = await image.read()
            observed.described_bytes.append(len(data))
            await interaction.response.send_message(
                f"{image.filename}: {len(data)} bytes, {image.content_type}"
            )

        admin = app_commands.Group(
            name="admin",
            description="Owner tools",
            default_permissions=discord.Permissions(manage_guild=True),
        )

        @admin.command(name="reload", description="Reload config")
        async def admin_reload(interaction: discord.Interaction) -> None:
            perms = interaction.permissions
            verdict = "reloaded" if perms.manage_guild else "denied"
            await interaction.response.send_message(verdict, ephemeral=True)

        tree.add_command(admin)

        @tree.context_menu(name="Describe image")
        async def describe_image(interaction: discord.Interaction, message: discord.Message) -> None:
            sizes = [len(await a.read()) for a in message.attachments]
            await interaction.response.send_message(f"{len(sizes)} image(s): {sizes}", ephemeral=True)


def _png_bytes(seed: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes([seed]) * 64


def _blob(mebibytes: int) -> bytes:
    return b"\0" * (mebibytes * 1024 * 1024)


@dataclass
class Scene:
    emu: DiscordEmulator
    bot: EmulatedTestBot
    guild: Guild
    general: Channel
    alice: User
    bob: User
    observed: Observed


async def start_bot(
    emu: DiscordEmulator, guild_id: int | None, observed: Observed, **options: object
) -> tuple[EmulatedTestBot, asyncio.Task[None]]:
    """Start the bot and return once it is ready; if it dies while starting, raise its error at once."""
    bot = EmulatedTestBot(guild_id, observed, **options)
    task = asyncio.create_task(bot.start(emu.bot_token))
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
        raise RuntimeError("the bot stopped while starting")
    if not done:
        raise TimeoutError("the bot did not become ready")
    return bot, task


async def stop_bot(bot: commands.Bot, task: asyncio.Task) -> None:
    await bot.close()
    await asyncio.wait_for(task, 10)
