"""A reply's ping toggle (Discord's @ON / @OFF) decides whether a bot without the message-content intent
can read it: with the ping the replied-to bot is in ``mentions`` and gets the content; without it the
reply arrives empty, like any other guild message the bot is not mentioned in."""

from __future__ import annotations

from discord_emulator import DiscordEmulator
from tests.emulator.emulated_bot import Scene


async def test_a_reply_with_its_ping_off_reaches_a_bot_without_the_intent_empty(scene: Scene) -> None:
    emu = scene.emu
    await emu.send_message(scene.alice, scene.general, "hello bot", mentions_bot=True)
    answer = await emu.wait_for_message(scene.general, author=emu.bot_user)
    pinged = await emu.send_message(scene.alice, scene.general, "with ping", reply_to=answer)
    quiet = await emu.send_message(
        scene.alice, scene.general, "without ping", reply_to=answer, ping_author=False
    )
    await emu.wait_for(lambda: len(scene.observed.seen) == 3)
    assert scene.observed.seen == [f"{emu.bot_user.mention} hello bot", "with ping", ""]
    assert emu.bot_user in pinged.mentions and emu.bot_user.id in pinged.pings.users
    assert quiet.mentions == [] and not quiet.pings
    assert quiet.reference_id == answer.id  # still a reply: the reference arrives, only the content not
    assert quiet.content == "without ping"  # what the user wrote; only the bot's copy is empty


def test_ping_off_sends_replied_user_false() -> None:
    emu = DiscordEmulator()  # not started: the world's mention rules alone
    guild = emu.add_guild()
    channel = emu.add_channel(guild)
    ann = emu.add_user("ann")
    emu.add_member(guild, ann)
    original = emu.world.create_message(channel, emu.bot_user, {"content": "an answer"}, check=False)
    allowed = {"parse": ["users", "roles", "everyone"], "replied_user": False}
    mentioned, _, pings = emu.world.compute_mentions(channel, "thanks", allowed, original)
    assert mentioned == [] and not pings
