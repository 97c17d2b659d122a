"""The real discord.py client against the emulator: every interaction path a bot uses."""

from __future__ import annotations

import discord
import pytest

from discord_emulator import EmulatorUsageError, Upload
from tests.emulator.emulated_bot import Scene


async def test_commands_synced_to_the_guild_with_ids_and_permissions(scene: Scene) -> None:
    emu = scene.emu
    commands = {c["name"]: c for c in emu.synced_commands(scene.guild)}
    assert {
        "ping",
        "echo",
        "imagine",
        "slow",
        "later",
        "upload",
        "describe",
        "admin",
        "Describe image",
    } <= set(commands)
    assert emu.synced_commands() == []  # guild-scoped only
    assert commands["Describe image"]["type"] == 3
    assert commands["admin"]["options"][0]["name"] == "reload"
    assert commands["admin"]["default_member_permissions"] == str(
        discord.Permissions(manage_guild=True).value
    )
    assert all(c["guild_id"] == str(scene.guild.id) for c in commands.values())
    assert [s.guild_id for s in emu.command_syncs] == [scene.guild.id]


async def test_slash_response_is_a_message_answering_the_interaction(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "ping")
    await itx.wait_response()
    assert itx.response_type == 4 and itx.ephemeral and not itx.deferred
    assert itx.original is not None and itx.original.content == "pong"
    assert itx.original.interaction is itx and itx.original.author is emu.bot_user
    # Ephemeral: only alice sees it; it is not in the channel for everyone.
    assert emu.messages(scene.general) == []
    assert emu.messages(scene.general, include_ephemeral=True) == [itx.original]
    emu.assert_clean()


async def test_echoed_text_cannot_ping_because_of_allowed_mentions(scene: Scene) -> None:
    emu = scene.emu
    text = f"@everyone {scene.bob.mention} {scene.guild.everyone.mention} hello"
    itx = await emu.slash(scene.alice, scene.general, "echo", text=text)
    await itx.wait_response()
    message = itx.original
    assert message.content == text
    assert message.allowed_mentions == {"parse": []}
    assert not message.pings and not message.mention_everyone
    assert message.mentions == [scene.bob]  # mentioned in the text, yet not notified
    emu.assert_clean()


async def test_deferred_command_follow_up_fills_the_thinking_message_with_files_and_buttons(
    scene: Scene,
) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "imagine", prompt="a cat", count=2)
    await itx.wait_response()
    assert itx.response_type == 5 and itx.deferred and not itx.ephemeral
    message = await itx.wait_original()
    assert itx.followups == []  # the first follow-up replaced "thinking...", as on Discord
    assert message.content == "a cat x2"
    assert [a.filename for a in message.attachments] == ["image0.png", "image1.png"]
    assert message.attachments[1].data == b"\x89PNG\r\n\x1a\n" + bytes([1]) * 64
    assert message.attachments[0].content_type == "image/png"
    assert message.custom_ids() == ["job:42:reroll", "job:42:edit"]
    assert len(message.revisions) == 1 and message.revisions[0].flags & 128  # was "thinking"
    assert emu.messages(scene.general) == [message]
    emu.assert_clean()


async def test_dynamic_button_updates_its_message(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "imagine", prompt="a dog")
    message = await itx.wait_original()
    press = await emu.press_button(scene.bob, message, "job:42:reroll")
    await press.wait_response()
    assert press.response_type == 7
    assert press.original is message
    assert message.content == "job 42 re-rolled by bob"
    assert message.revisions[-1].content == "a dog x1"
    lines = emu.format_transcript().splitlines()
    assert lines[0].endswith("#general alice: /imagine prompt:'a dog'")
    assert any(
        "#general Janus: answers 'a dog x1' [file image0.png 72 B] [button Reroll] [button Edit]" in x
        for x in lines
    )
    assert lines[-2].endswith("#general bob: pressed [Reroll]")
    assert lines[-1].endswith(
        "Janus: edited -> 'job 42 re-rolled by bob' [file image0.png 72 B] [button Reroll] [button Edit]"
    )
    emu.assert_clean()


async def test_pressing_a_button_the_message_lacks_is_a_usage_error(scene: Scene) -> None:
    itx = await scene.emu.slash(scene.alice, scene.general, "imagine", prompt="x")
    message = await itx.wait_original()
    with pytest.raises(EmulatorUsageError, match="no component"):
        await scene.emu.press_button(scene.alice, message, "job:43:reroll")


async def test_modal_opened_by_a_button_and_submitted(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "imagine", prompt="a fox")
    message = await itx.wait_original()
    press = await emu.press_button(scene.alice, message, "job:42:edit")
    await press.wait_response()
    assert press.response_type == 9 and press.modal["title"] == "Edit prompt"
    with pytest.raises(EmulatorUsageError, match="required"):
        await emu.submit_modal(scene.alice, press, {})
    submit = await emu.submit_modal(scene.alice, press, {"prompt": "a red fox <@&1>"})
    await submit.wait_response()
    assert submit.original.content == "job 42 new prompt: a red fox <@&1>"
    assert not submit.original.pings
    emu.assert_clean()


async def test_message_context_menu_downloads_the_attachments_from_the_cdn(scene: Scene) -> None:
    emu = scene.emu
    posted = await emu.send_message(
        scene.alice, scene.general, "look", attachments=[("cat.png", b"\x89PNG" + b"1" * 100, "image/png")]
    )
    itx = await emu.context_menu(scene.bob, posted, "Describe image")
    await itx.wait_response()
    assert itx.original.content == "1 image(s): [104]"
    assert itx.ephemeral
    assert emu.cdn_downloads == [posted.attachments[0].id]
    emu.assert_clean()


async def test_attachment_option_is_resolved_and_downloadable(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "describe", image=Upload("photo.jpg", b"jpegdata" * 10))
    await itx.wait_response()
    assert itx.original.content == "photo.jpg: 80 bytes, image/jpeg"
    assert scene.observed.described_bytes == [80]
    emu.assert_clean()


async def test_subcommand_group_and_default_permissions(scene: Scene) -> None:
    emu = scene.emu
    with pytest.raises(EmulatorUsageError, match="default_member_permissions"):
        await emu.slash(scene.alice, scene.general, "admin reload")
    denied = await emu.slash(scene.alice, scene.general, "admin reload", ignore_default_permissions=True)
    allowed = await emu.slash(scene.bob, scene.general, "admin reload")
    await denied.wait_response()
    await allowed.wait_response()
    assert denied.original.content == "denied"
    assert allowed.original.content == "reloaded"
    emu.assert_clean()


async def test_options_are_checked_like_discords_client(scene: Scene) -> None:
    emu = scene.emu
    with pytest.raises(EmulatorUsageError, match="required"):
        await emu.slash(scene.alice, scene.general, "imagine")
    with pytest.raises(EmulatorUsageError, match="<= 4"):
        await emu.slash(scene.alice, scene.general, "imagine", prompt="x", count=9)
    with pytest.raises(EmulatorUsageError, match="unknown options"):
        await emu.slash(scene.alice, scene.general, "imagine", prompt="x", colour="red")
    with pytest.raises(EmulatorUsageError, match="no synced command"):
        await emu.slash(scene.alice, scene.general, "nope")
    assert emu.interactions == []


async def test_mention_reaches_the_bot_without_the_message_content_intent(scene: Scene) -> None:
    emu = scene.emu
    await emu.send_message(scene.alice, scene.general, "no mention here")
    sent = await emu.send_message(
        scene.alice, scene.general, "what is this?", mentions_bot=True, attachments=[("a.png", b"12345")]
    )
    reply = await emu.wait_for_message(scene.general, author=emu.bot_user)
    assert reply.reference_id == sent.id
    assert reply.content == f"hi alice: '{emu.bot_user.mention} what is this?' files=[5]"
    assert not reply.pings  # replied without pinging the author
    assert len(emu.bot_messages(scene.general)) == 1  # the plain message got no answer
    emu.assert_clean()


async def test_without_message_content_intent_plain_messages_arrive_empty(scene: Scene) -> None:
    emu = scene.emu
    await emu.send_message(scene.alice, scene.general, "secret words")
    await emu.send_message(scene.alice, scene.general, "hello bot", mentions_bot=True)
    await emu.wait_for(lambda: len(scene.observed.seen) == 2)
    assert scene.observed.seen == ["", f"{emu.bot_user.mention} hello bot"]


async def test_edit_original_follow_up_edit_and_delete_by_message_id(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "progress")
    await emu.wait_for(lambda: itx.followups and itx.followups[0].deleted)
    assert itx.ephemeral and itx.original.ephemeral
    assert itx.original.content == "100%"
    assert [r.content for r in itx.original.revisions] == ["", "50%"]
    extra = itx.followups[0]
    assert extra.ephemeral is False and [r.content for r in extra.revisions] == ["extra"]
    assert extra.content == "extra edited"
    assert emu.messages(scene.general) == []  # the follow-up was deleted, the original is ephemeral
    emu.assert_clean()


async def test_response_with_embed_and_file_then_deferred_update_from_a_button(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.alice, scene.general, "card")
    message = await itx.wait_original()
    assert message.embeds[0]["title"] == "Card"
    assert message.attachments[0].data == b"card-bytes"
    press = await emu.press_button(scene.alice, message, "job:7:cancel")
    await emu.wait_for(lambda: message.content == "job 7 cancelled")
    assert press.response_type == 6 and press.deferred and press.original is message
    assert message.components == [] and message.embeds[0]["title"] == "Card"
    emu.assert_clean()


async def test_bot_opens_a_dm_and_a_user_can_write_there(scene: Scene) -> None:
    emu = scene.emu
    itx = await emu.slash(scene.bob, scene.general, "dm")
    await itx.wait_response()
    dm = emu.dm_channel(scene.bob)
    note = await emu.wait_for_message(dm, author=emu.bot_user)
    assert note.content == "a private note" and note.guild is None
    await emu.send_message(scene.bob, dm, "thanks")
    await emu.wait_for(lambda: scene.observed.seen == ["thanks"])  # DMs keep their content
    emu.assert_clean()
