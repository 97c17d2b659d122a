"""The ``world`` fixture: the emulator, a guild, users and a started JanusBot (see bot_world.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
import pytest_asyncio

from bot.config import load_config
from discord_emulator import DiscordEmulator
from tests.bot.bot_world import BotWorld, config_doc, write_toml
from tests.postgres_support import fresh_database


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotWorld]:
    """A module may set CONFIG_OVERRIDES = {"section": {key: value}} to start its bot differently, and
    DATABASE = "postgresql" to run on a fresh PostgreSQL database instead of a SQLite file."""
    tmp = tmp_path_factory.mktemp("bot-world")
    overrides = dict(getattr(request.module, "CONFIG_OVERRIDES", {}))
    with contextlib.ExitStack() as databases:
        if getattr(request.module, "DATABASE", "sqlite") == "postgresql":
            overrides["database"] = {"url": databases.enter_context(fresh_database())}
        async with _world(tiny_model_dir, tmp, overrides) as w:
            yield w


@contextlib.asynccontextmanager
async def _world(tiny_model_dir: Path, tmp: Path, overrides: dict) -> AsyncIterator[BotWorld]:
    async with DiscordEmulator() as emu:
        guild = emu.add_guild("Janus Test", upload_limit=10 * 1024 * 1024)
        general = emu.add_channel(guild, "general")
        owner = emu.add_user("owner")
        emu.add_member(guild, owner)
        manager = emu.add_user("manager")
        mods = emu.add_role(guild, "mods", permissions=discord.Permissions(manage_guild=True))
        emu.add_member(guild, manager, roles=[mods])
        doc = config_doc(tiny_model_dir, tmp / "janus.db", guild.id, owner.id, **overrides)
        write_toml(tmp / "config.toml", doc)
        w_doc = doc
        config = load_config(tmp / "config.toml")
        w = BotWorld(emu, guild, general, {}, owner, manager, config, tmp, doc=w_doc)
        with emu.configure_client():
            await w.start_bot()
            await emu.wait_for(lambda: emu.synced_commands(guild), timeout=30)
            try:
                yield w
            finally:
                await w.stop_bot()
