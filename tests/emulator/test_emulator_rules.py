"""Discord's rules, enforced: the 3-second first response, the 15-minute token, upload and message limits."""

from __future__ import annotations

import io

import discord
import pytest

from tests.emulator.emulated_bot import Scene


async def test_late_first_response_is_an_interaction_failure_and_rejected_with_10062(scene: Scene) -> None:
    emu = scene.emu
    emu.response_deadline = 0.2
    scene.observed.slow_seconds = 0.5
    itx = await emu.slash(scene.alice, scene.general, "slow")
    await emu.wait_for(lambda: scene.observed.errors)
    assert itx.failed and not itx.acknowledged
    assert emu.failures == [itx.failure]
    error = scene.observed.errors[0]
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert emu.messages(scene.general, include_ephemeral=True) == []
    with pytest.raises(AssertionError, match="interaction failed"):
        emu.assert_clean()


async def test_no_response_at_all_is_recorded_when_the_deadline_passes(scene: Scene) -> None:
    emu = scene.emu
    emu.response_deadline = 60.0
    scene.observed.slow_seconds = 30.0  # the bot will not answer during this test
    itx = await emu.slash(scene.alice, scene.general, "slow")
    assert not itx.failed
    emu.advance_time(61)
    assert itx.failed and "no response" in itx.failure.reason


async def test_follow_up_after_the_token_expired_is_rejected_with_401(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "later")
    await itx.wait_response()
    assert itx.deferred
    emu.advance_time(16 * 60)
    scene.observed.release_late_followup.set()
    fallback = await emu.wait_for_message(scene.general, lambda m: "token expired" in m.content)
    error = scene.observed.errors[0]
    assert isinstance(error, discord.HTTPException) and error.status == 401 and error.code == 50027
    assert fallback.interaction is None  # a plain channel message, which needs no token
    assert itx.original.loading  # the deferred message was never filled
    assert [(r.status, r.code) for r in emu.rejections] == [(401, 50027)]


async def test_follow_up_within_the_token_lifetime_works(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "later")
    await itx.wait_response()
    emu.advance_time(14 * 60)
    scene.observed.release_late_followup.set()
    await itx.wait_original()
    assert itx.original.content == "done"
    emu.assert_clean()


async def test_file_over_the_guild_upload_limit_is_rejected_with_413(scene: Scene) -> None:
    emu = scene.emu  # the scene's guild allows 2 MiB
    itx = await emu.slash(scene.alice, scene.general, "upload", mebibytes=3)
    await itx.wait_original()
    error = scene.observed.errors[0]
    assert isinstance(error, discord.HTTPException) and error.status == 413 and error.code == 40005
    assert itx.original.content == f"too large for {2 * 1024 * 1024} bytes"  # Interaction.filesize_limit
    assert itx.original.attachments == []
    assert [(r.status, r.code) for r in emu.rejections] == [(413, 40005)]


async def test_file_within_the_limit_is_delivered(scene: Scene) -> None:
    itx = await scene.emu.slash(scene.alice, scene.general, "upload", mebibytes=1)
    await itx.wait_original()
    assert itx.original.attachments[0].size == 1024 * 1024
    scene.emu.assert_clean()


async def test_message_limits_raise_the_errors_discord_raises(scene: Scene) -> None:
    channel = scene.bot.get_channel(scene.general.id)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    with pytest.raises(discord.HTTPException) as embeds:
        await channel.send(
            embeds=[discord.Embed(description="y" * 4000), discord.Embed(description="z" * 2001)]
        )
    assert embeds.value.code == 50035
    with pytest.raises(discord.HTTPException) as files:
        await channel.send(files=[discord.File(io.BytesIO(b"1"), filename=f"{i}.txt") for i in range(11)])
    assert files.value.code == 50035
    view = discord.ui.View()
    for i in range(6):
        view.add_item(discord.ui.Button(label=str(i), custom_id=f"b{i}", row=0 if i < 5 else 1))
    sent = await channel.send("five in a row is fine", view=view)
    assert len(scene.emu.message(sent.id).buttons()) == 6
    crowded = {
        "type": 1,
        "components": [{"type": 2, "style": 1, "label": "b", "custom_id": f"c{i}"} for i in range(6)],
    }
    with pytest.raises(discord.HTTPException):
        await scene.bot.http.send_message(
            channel.id, params=_params({"content": "x", "components": [crowded]})
        )
    long_id = {"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": "x" * 101}]}
    with pytest.raises(discord.HTTPException):
        await scene.bot.http.send_message(
            channel.id, params=_params({"content": "x", "components": [long_id]})
        )
    with pytest.raises(discord.HTTPException) as empty:
        await scene.bot.http.send_message(channel.id, params=_params({"content": ""}))
    assert empty.value.code == 50006
    assert len(scene.emu.rejections) == 6


async def test_bot_message_edits_are_recorded_with_their_times(scene: Scene) -> None:
    channel = scene.bot.get_channel(scene.general.id)
    sent = await channel.send("0%")
    scene.emu.advance_time(1.5)
    await sent.edit(content="50%")
    scene.emu.advance_time(1.5)
    await sent.edit(content="100%")
    record = scene.emu.message(sent.id)
    assert [r.content for r in record.revisions] == ["0%", "50%"]
    assert record.revisions[1].at - record.revisions[0].at == pytest.approx(1.5, abs=0.5)
    await sent.delete()
    assert record.deleted and scene.emu.messages(scene.general) == []


def _params(payload: dict) -> discord.http.MultipartParameters:
    return discord.http.MultipartParameters(payload=payload, multipart=None, files=None)


async def test_bot_typing_reactions_threads_and_history(scene: Scene) -> None:
    emu = scene.emu
    channel = scene.bot.get_channel(scene.general.id)
    async with channel.typing():
        sent = await channel.send("thread starter")
    await sent.add_reaction("👍")
    thread = await sent.create_thread(name="details")
    await thread.send("inside")
    record = emu.message(sent.id)
    assert emu.typing and emu.typing[0][0] == scene.general.id
    assert record.reactions == {"👍": {emu.bot_user.id}}
    threads = [c for c in scene.guild.channels.values() if c.name == "details"]
    assert len(threads) == 1 and threads[0].parent_id == scene.general.id and threads[0].id == sent.id
    assert [m.content for m in emu.messages(threads[0])] == ["inside"]
    history = [m.content async for m in channel.history(limit=10)]
    assert history == ["thread starter"]
    fetched = await channel.fetch_message(sent.id)
    assert fetched.reactions[0].emoji == "👍"
    emu.assert_clean()
