"""A running emulator with a connected test bot for each test (see emulated_bot.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord
import pytest

from discord_emulator import DiscordEmulator
from tests.emulator.emulated_bot import Observed, Scene, start_bot, stop_bot


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with DiscordEmulator() as emu:
        guild = emu.add_guild("Emulated", upload_limit=2 * 1024 * 1024)
        general = emu.add_channel(guild, "general")
        alice, bob = emu.add_user("alice"), emu.add_user("bob")
        emu.add_member(guild, alice)
        mods = emu.add_role(guild, "mods", permissions=discord.Permissions(manage_guild=True))
        emu.add_member(guild, bob, roles=[mods])
        observed = Observed()
        with emu.configure_client():
            bot, task = await start_bot(emu, guild.id, observed)
            try:
                yield Scene(emu, bot, guild, general, alice, bob, observed)
            finally:
                observed.release_late_followup.set()
                observed.stop_waiting.set()
                await stop_bot(bot, task)
