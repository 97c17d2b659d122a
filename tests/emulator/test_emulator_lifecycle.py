"""Connecting, reconnecting and restarting the real client; global sync; bad tokens and intents."""

from __future__ import annotations

import asyncio

import discord
import pytest

from discord_emulator import DiscordEmulator
from tests.emulator.emulated_bot import EmulatedTestBot, Observed, start_bot, stop_bot


async def test_global_sync_and_login_identity_match_the_application() -> None:
    async with DiscordEmulator() as emu:
        guild = emu.add_guild()
        general = emu.add_channel(guild)
        carol = emu.add_user("carol")
        emu.add_member(guild, carol)
        with emu.configure_client():
            bot, task = await start_bot(emu, None, Observed())
            try:
                assert bot.user.id == emu.bot_user.id == bot.application_id == emu.application_id
                assert bot.get_guild(guild.id).get_channel(general.id).name == "general"
                assert bot.get_guild(guild.id).me.id == emu.bot_user.id
                assert {c["name"] for c in emu.synced_commands()} >= {"ping", "imagine"}
                assert emu.synced_commands(guild) == []
                info = await bot.application_info()
                assert info.id == emu.application_id and info.owner.id == emu.owner.id
                itx = await emu.slash(carol, general, "ping")
                assert (await itx.wait_original()).content == "pong"
                assert "guild_id" not in itx.payload["data"]  # a global command
                in_dm = await emu.slash(carol, emu.dm_channel(carol), "ping")  # global commands work in DMs
                assert (await in_dm.wait_original()).content == "pong"
                thread = emu.add_thread(general, "side chat")
                in_thread = await emu.slash(carol, thread, "echo", text="threaded")
                assert (await in_thread.wait_original()).channel is thread
            finally:
                await stop_bot(bot, task)
        emu.assert_clean()


async def test_two_shards_each_get_only_their_guilds_and_dms_go_to_shard_0() -> None:
    async with DiscordEmulator() as emu:
        guild_a = emu.add_guild("A", on_shard=(0, 2))
        guild_b = emu.add_guild("B", on_shard=(1, 2))
        assert ((guild_a.id >> 22) % 2, (guild_b.id >> 22) % 2) == (0, 1)  # Discord's rule
        chan_a, chan_b = emu.add_channel(guild_a), emu.add_channel(guild_b)
        erin = emu.add_user("erin")
        emu.add_member(guild_a, erin)
        emu.add_member(guild_b, erin)
        with emu.configure_client():
            bot0, task0 = await start_bot(emu, None, Observed(), shard_id=0, shard_count=2)
            bot1, task1 = await start_bot(emu, None, Observed(), shard_id=1, shard_count=2)
            try:
                assert [g.id for g in bot0.guilds] == [guild_a.id]
                assert [g.id for g in bot1.guilds] == [guild_b.id]
                for channel, answer in (
                    (chan_a, "shard 0"),
                    (chan_b, "shard 1"),
                    (emu.dm_channel(erin), "shard 0"),
                ):
                    itx = await emu.slash(erin, channel, "shard")
                    assert (await itx.wait_original()).content == answer
                # A guild created later goes to its shard's session only.
                late = emu.add_guild("C", on_shard=(1, 2))
                async with asyncio.timeout(5):
                    while bot1.get_guild(late.id) is None:
                        await asyncio.sleep(0.02)
                await emu.gateway.flush()
                assert bot0.get_guild(late.id) is None
            finally:
                await stop_bot(bot1, task1)
                await stop_bot(bot0, task0)
        emu.assert_clean()


async def test_button_on_an_old_message_works_after_a_full_bot_restart() -> None:
    async with DiscordEmulator() as emu:
        guild = emu.add_guild()
        general = emu.add_channel(guild)
        dave = emu.add_user("dave")
        emu.add_member(guild, dave)
        with emu.configure_client():
            bot, task = await start_bot(emu, guild.id, Observed())
            itx = await emu.slash(dave, general, "imagine", prompt="a boat")
            message = await itx.wait_original()
            await stop_bot(bot, task)
            assert emu.sessions == []

            bot, task = await start_bot(emu, guild.id, Observed())  # a new process would do the same
            try:
                press = await emu.press_button(dave, message, "job:42:reroll")
                await press.wait_response()
                assert message.content == "job 42 re-rolled by dave"
            finally:
                await stop_bot(bot, task)
        assert len(emu.command_syncs) == 2
        emu.assert_clean()


async def test_gateway_drop_reconnects_and_events_flow_again() -> None:
    async with DiscordEmulator() as emu:
        guild = emu.add_guild()
        general = emu.add_channel(guild)
        erin = emu.add_user("erin")
        emu.add_member(guild, erin)
        with emu.configure_client():
            bot, task = await start_bot(emu, guild.id, Observed())
            try:
                first = emu.sessions[0]
                await emu.disconnect_bot()
                # Sent while the bot is away: Discord replays it when the client RESUMEs.
                await emu.send_message(erin, general, "still there?", mentions_bot=True)
                session = await emu.wait_for(lambda: next((s for s in emu.sessions if s is not first), None))
                await asyncio.wait_for(session.ready.wait(), 10)
                assert session.session_id == first.session_id  # resumed, not re-identified
                reply = await emu.wait_for_message(general, author=emu.bot_user)
                assert "still there?" in reply.content
                itx = await emu.slash(erin, general, "ping")
                assert (await itx.wait_original()).content == "pong"
            finally:
                await stop_bot(bot, task)
        emu.assert_clean()


async def test_wrong_token_fails_login_like_discord() -> None:
    async with DiscordEmulator() as emu:
        with emu.configure_client():
            bot = EmulatedTestBot(None, Observed())
            with pytest.raises(discord.LoginFailure):
                await bot.start("not-the-token")
            await bot.close()
        assert emu.rejections[0].status == 401


async def test_privileged_intent_not_enabled_closes_with_4014() -> None:
    async with DiscordEmulator(privileged_intents=False) as emu:
        with emu.configure_client():
            bot = EmulatedTestBot(None, Observed())
            bot._connection._intents.message_content = True  # what intents=...message_content=True sets
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(bot.start(emu.bot_token), 10)
            await bot.close()


async def test_configure_client_restores_discord_py_urls() -> None:
    before = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordEmulator() as emu:
        with emu.configure_client():
            assert emu.api_base == discord.http.Route.BASE
        assert before == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
