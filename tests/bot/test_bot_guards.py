"""Every refusal is an ephemeral message that says why, and leaves nothing behind in the database:
bad uploads (checked before downloading), blocked and NSFW prompts, cooldowns, daily caps, the engine's
per-user limit, disabled channels, server-manager and owner-only commands, /admin reload."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from bot.policy import Requester
from bot.store import ServerSettings
from discord_emulator import EmulatorUsageError, Upload
from tests.bot.bot_world import BotWorld, eventually, finished_jobs, is_result, png_bytes, write_toml

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _refused(world: BotWorld, itx, *needles: str) -> str:
    """The interaction ended in one ephemeral message containing every needle (never a failure)."""
    assert not itx.failed
    msg = await world.emu.wait_for(
        lambda: next(
            (m for m in [itx.original, *itx.followups] if m is not None and m.ephemeral and m.content), None
        )
    )
    for needle in needles:
        assert needle in msg.content, msg.content
    return msg.content


async def _nothing_stored(world: BotWorld, user) -> None:
    bot = world.bot
    assert await bot.store.list_jobs(user_id=user.id) == []
    who = Requester(user_id=user.id, guild_id=world.guild.id, channel_id=world.general.id)
    conv = await bot.store.resolve_conversation(bot.access.conversation_key(who, ServerSettings()))
    assert await bot.store.list_turns(conv.id) == []


@pytest.mark.parametrize(
    ("upload", "reason", "downloaded"),
    [
        (Upload("notes.txt", b"hello", "text/plain"), "not a supported image", False),
        (Upload("huge.png", b"\x89PNG" + bytes(300_000), "image/png"), "too large", False),
        (
            Upload("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "image/png"),
            "could not be decoded",
            True,
        ),
        (Upload("fake.jpg", b"this is not a jpeg at all", "image/jpeg"), "not an image", True),
    ],
)
async def test_bad_uploads_are_refused_with_the_reason(
    world: BotWorld, upload, reason: str, downloaded: bool
) -> None:
    emu = world.emu
    user = world.user(f"upl-{upload.filename}")
    itx = await world.run(user, world.general, "describe", image=upload)
    text = await _refused(world, itx, upload.filename, reason)
    assert "interaction failed" not in text.lower()
    attachment_id = int(itx.payload["data"]["options"][0]["value"])
    assert (attachment_id in emu.cdn_downloads) is downloaded  # type and size are checked before downloading
    # A deferred "thinking" message, if there was one, is gone: only the ephemeral explanation remains.
    public = [m for m in emu.messages(world.general) if m.interaction is itx]
    assert public == []
    await _nothing_stored(world, user)


async def test_too_many_images_in_a_mention_is_refused_before_downloading(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("upl-many")
    files = [Upload(f"p{i}.png", png_bytes(), "image/png") for i in range(5)]
    sent = await emu.send_message(
        user, world.general, "what are these?", attachments=files, mentions_bot=True
    )
    reply = await emu.wait_for_message(
        world.general, lambda m: m.reference_id == sent.id, author=emu.bot_user
    )
    assert "Too many images" in reply.content and "at most 4" in reply.content
    assert not set(a.id for a in sent.attachments) & set(emu.cdn_downloads)
    await _nothing_stored(world, user)


async def test_context_menu_on_a_message_without_images(world: BotWorld) -> None:
    user = world.user("menu-noimg")
    posted = await world.emu.send_message(user, world.general, "just text")
    itx = await world.emu.context_menu(user, posted, "Describe image")
    await itx.wait_response()
    await _refused(world, itx, "no images")


async def test_blocked_and_nsfw_prompts(world: BotWorld) -> None:
    user = world.user("pol-prompts")
    itx = await world.run(user, world.general, "imagine", prompt="a FORBIDDEN castle")
    await _refused(world, itx, "does not accept")
    itx = await world.run(user, world.general, "imagine", prompt="a nude statue")
    await _refused(world, itx, "only accepted in channels marked NSFW")
    await _nothing_stored(world, user)
    # The same prompt is accepted in a channel marked NSFW.
    nsfw = world.channel("after-dark", nsfw=True)
    itx = await world.run(user, nsfw, "imagine", prompt="a nude statue")
    assert itx.deferred and not itx.ephemeral
    await world.final(itx, is_result)


async def test_cooldown_and_daily_cap(world: BotWorld) -> None:
    user = world.user("pol-limits")
    world.set_limits(imagine_cooldown_s=120.0, images_per_user_per_day=3)
    try:
        first = await world.run(user, world.general, "imagine", prompt="a tree", count=2)
        assert first.deferred
        again = await world.run(user, world.general, "imagine", prompt="a tree")
        await _refused(world, again, "Slow down", "again in")
        await world.bot.limiter.reset_cooldown(user.id, "imagine")
        over = await world.run(user, world.general, "imagine", prompt="a tree", count=2)
        await _refused(world, over, "today's limit of 3 images", "1 left")
        await world.final(first, is_result)
        jobs = await finished_jobs(world.bot, user.id, 1)
        assert len(jobs) == 1  # refusals recorded no jobs
        quota = await world.run(user, world.general, "quota")
        assert "Images today: 2 of 3 used, 1 left" in quota.original.content and quota.ephemeral
        assert "Messages today: 0 of 500 used" in quota.original.content
    finally:
        world.set_limits(imagine_cooldown_s=0.0, images_per_user_per_day=100)


async def test_a_server_cap_and_a_trusted_role_in_quota(world: BotWorld) -> None:
    emu = world.emu
    patrons = emu.add_role(world.guild, "patrons")
    patron, plain = emu.add_user("pol-patron"), world.user("pol-plain")
    emu.add_member(world.guild, patron, roles=[patrons])
    world.set_limits(images_per_user_per_day=2, trusted_roles=(patrons.id,), images_per_server_per_day=4)
    try:
        drawn = await world.run(patron, world.general, "imagine", prompt="a hill", count=4)  # 2 x 5 for her
        await world.final(drawn, is_result)
        refused = await world.run(plain, world.general, "imagine", prompt="a hill")
        await _refused(world, refused, "This server has reached today's limit of 4 images")
        quota = await world.run(patron, world.general, "quota")
        assert "Images today: 4 of 10 used, 6 left · this server: 4 of 4" in quota.original.content
    finally:
        world.set_limits(images_per_user_per_day=100, trusted_roles=(), images_per_server_per_day=0)


async def test_two_requests_fired_at_once_cannot_both_pass_the_cooldown(world: BotWorld) -> None:
    """A double click: both interactions arrive before either is answered. Exactly one runs."""
    user = world.user("pol-double")
    world.set_limits(imagine_cooldown_s=120.0)
    try:
        both = await asyncio.gather(
            *(world.emu.slash(user, world.general, "imagine", prompt="a tree") for _ in range(2))
        )
        for itx in both:
            await itx.wait_response()
            assert not itx.failed, itx.failure
        ran = [itx for itx in both if not itx.ephemeral]
        refused = [itx for itx in both if itx.ephemeral]
        assert len(ran) == 1 and len(refused) == 1
        await _refused(world, refused[0], "Slow down")
        await world.final(ran[0], is_result)
        assert len(await finished_jobs(world.bot, user.id, 1)) == 1  # the refused one recorded nothing
    finally:
        world.set_limits(imagine_cooldown_s=0.0)


async def test_engine_user_limit_is_a_clear_message_and_the_job_record_is_closed(world: BotWorld) -> None:
    """max_queued_per_user = 2: with one job running and two queued, a fourth is refused at once."""
    user = world.user("pol-engine")
    itxs = [await world.run(user, world.general, "imagine", prompt=f"a boat {i}", count=4) for i in range(3)]
    assert all(i.deferred for i in itxs)
    refused = await world.run(user, world.general, "imagine", prompt="a boat 3", count=4)
    await _refused(world, refused, "2 jobs waiting")
    for itx in itxs:
        await world.final(itx, is_result, timeout=60)
    jobs = await finished_jobs(world.bot, user.id, 4)
    statuses = sorted(j.status.value for j in jobs)
    assert statuses == ["done", "done", "done", "failed"]  # the refused one is closed with its reason
    failed = next(j for j in jobs if j.status == "failed")
    assert failed.error and failed.prompt == "a boat 3"


async def test_settings_need_manage_server_and_disable_a_channel(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("set-user")
    quiet = world.channel("quiet")
    with pytest.raises(EmulatorUsageError):  # Discord's client hides it from members without the permission
        await emu.slash(user, quiet, "settings channel", enabled=False)
    # Even if a server admin overrode the default permissions, the bot checks for itself.
    itx = await emu.slash(user, quiet, "settings channel", enabled=False, ignore_default_permissions=True)
    await itx.wait_response()
    await _refused(world, itx, "Manage Server")

    itx = await world.run(world.manager, quiet, "settings channel", enabled=False)
    assert itx.ephemeral and "off" in itx.original.content
    chat = await world.run(user, quiet, "chat", message="hello?")
    await _refused(world, chat, "turned this bot off in this channel")
    # A thread under the switched-off channel is off too, and can be switched on by itself.
    thread = world.emu.add_thread(quiet, "bot corner")
    chat = await world.run(user, thread, "chat", message="in here?")
    await _refused(world, chat, "turned this bot off")
    itx = await world.run(world.manager, thread, "settings channel", enabled=True)
    assert "now on" in itx.original.content
    chat = await world.run(user, thread, "chat", message="in here?")
    assert chat.deferred
    itx = await world.run(world.manager, quiet, "settings channel", enabled=True)
    chat = await world.run(user, quiet, "chat", message="hello?")
    assert chat.deferred
    audit = await world.bot.store.list_audit(guild_id=world.guild.id)
    assert any(e.actor_id == world.manager.id for e in audit)


async def test_shared_scope_lets_a_channel_share_one_conversation(world: BotWorld) -> None:
    lounge = world.channel("lounge")
    a, b = world.user("share-a"), world.user("share-b")
    itx = await world.run(world.manager, lounge, "settings scope", scope="shared")
    assert "shared" in itx.original.content
    first = await world.run(a, lounge, "chat", message="the password is swordfish")
    await world.final(first, lambda m: "Queued" not in m.content and "▌" not in m.content)
    await eventually(lambda: world.bot.store.conversation_for_message(first.original.id))
    second = await world.run(b, lounge, "chat", message="what is the password?")
    await world.final(second, lambda m: "Queued" not in m.content and "▌" not in m.content)
    req = world.submitted[-1]
    assert req.turns[0].text == "the password is swordfish"


async def test_admin_is_for_owners_and_reload_keeps_the_old_config_when_invalid(world: BotWorld) -> None:
    emu, bot = world.emu, world.bot
    user = world.user("adm-user")
    itx = await world.run(user, world.general, "admin stats")
    await _refused(world, itx, "Only the bot's owners")
    itx = await world.run(world.manager, world.general, "admin reload")  # Manage Server is not enough
    await _refused(world, itx, "Only the bot's owners")

    stats = await world.run(world.owner, world.general, "admin stats")
    assert stats.ephemeral and "worker-0" in stats.original.content and "Jobs done" in stats.original.content

    path = world.tmp / "config.toml"
    doc = {k: dict(v) for k, v in world.doc.items()}
    doc["limits"] = {**doc["limits"], "chat_cooldown_s": 33.0}
    doc["engine"] = {**doc["engine"], "max_queue": 5}
    write_toml(path, doc)
    itx = await world.run(world.owner, world.general, "admin reload")
    assert "Config reloaded" in itx.original.content and "engine" in itx.original.content
    assert bot.config.limits.chat_cooldown_s == 33.0
    assert bot.config.engine.max_queue == world.config.engine.max_queue  # needs a restart: unchanged
    path.write_text("[limits]\nchat_cooldown_s = -1\n")
    itx = await world.run(world.owner, world.general, "admin reload")
    assert "Reload failed" in itx.original.content and "limits.chat_cooldown_s" in itx.original.content
    assert bot.config.limits.chat_cooldown_s == 33.0
    write_toml(path, world.doc)
    itx = await world.run(world.owner, world.general, "admin reload")
    assert bot.config.limits.chat_cooldown_s == 0.0
    assert emu.failures == []


async def test_help_queue_and_cancel_commands(world: BotWorld) -> None:
    user = world.user("jobs-user")
    help_ = await world.run(user, world.general, "help")
    assert help_.ephemeral and "/imagine" in help_.original.content
    empty = await world.run(user, world.general, "queue")
    assert "no queued or running jobs" in empty.original.content
    gens = [await world.run(user, world.general, "imagine", prompt=f"a kite {i}", count=4) for i in range(2)]
    queue = await world.run(user, world.general, "queue")
    assert queue.ephemeral and "a kite" in queue.original.content and "ETA" in queue.original.content
    cancel = await world.run(user, world.general, "cancel")
    assert cancel.ephemeral and "Cancelling" in cancel.original.content
    for itx in gens:
        await world.final(itx, lambda m: "Cancelled" in m.content or is_result(m), timeout=30)
    jobs = await finished_jobs(world.bot, user.id, 2)
    assert any(j.status == "cancelled" for j in jobs)
    none_left = await world.run(user, world.general, "cancel")
    await _refused(world, none_left, "no queued or running jobs")


async def test_full_queue_is_refused_with_a_clear_message(world: BotWorld) -> None:
    """max_queue = 8: with one job running and eight waiting, the next one is refused at once."""
    first_user = world.user("busy-first")
    accepted = [await world.run(first_user, world.general, "imagine", prompt="a crowd", count=4)]
    engine = world.bot.engine
    await eventually(lambda: _state_is(engine, first_user.id, "running"))
    users = [world.user(f"busy-{i}") for i in range(4)]
    for user in users:
        for i in range(2):
            accepted.append(await world.run(user, world.general, "imagine", prompt=f"a crowd {i}", count=4))
    assert all(itx.deferred for itx in accepted)
    assert (await engine.status()).queue_depth == 8
    late = world.user("busy-late")
    refused = await world.run(late, world.general, "imagine", prompt="one more", count=4)
    await _refused(world, refused, "queue is full")
    assert [j.status.value for j in await finished_jobs(world.bot, late.id, 1)] == ["failed"]
    for user in [first_user, *users]:
        await world.run(user, world.general, "cancel")
    for itx in accepted:
        await world.final(itx, lambda m: "Cancelled" in m.content or is_result(m), timeout=60)


async def _state_is(engine, user_id: int, state: str) -> bool:
    return any(info.state == state for info in await engine.jobs_of(str(user_id)))


async def test_sighup_reloads_the_config_file(world: BotWorld) -> None:
    path = world.tmp / "config.toml"
    doc = {k: dict(v) for k, v in world.doc.items()}
    doc["limits"] = {**doc["limits"], "chat_cooldown_s": 7.0}
    write_toml(path, doc)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: _cooldown_is(world, 7.0))
    finally:
        write_toml(path, world.doc)
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: _cooldown_is(world, 0.0))


async def _cooldown_is(world: BotWorld, value: float) -> bool:
    return world.bot.config.limits.chat_cooldown_s == value


async def test_server_defaults_and_nsfw_policy_from_settings(world: BotWorld) -> None:
    user = world.user("defaults-user")
    itx = await world.run(world.manager, world.general, "settings defaults", count=2, guidance=3.0)
    assert "default_count=2" in itx.original.content
    too_many = await world.run(world.manager, world.general, "settings defaults", count=9)
    await _refused(world, too_many, "at most 4")
    show = await world.run(world.manager, world.general, "settings show")
    assert (
        "Default image count: 2" in show.original.content and "Default guidance: 3.0" in show.original.content
    )
    gen = await world.run(user, world.general, "imagine", prompt="a default pair")
    msg = await world.final(gen, is_result)
    assert len(msg.attachments) == 2 and "guidance 3" in msg.content
    await world.run(world.manager, world.general, "settings defaults", count=1, guidance=5.0)

    nsfw = world.channel("strict-nsfw", nsfw=True)
    await world.run(world.manager, nsfw, "settings nsfw", policy="block")
    try:
        refused = await world.run(user, nsfw, "imagine", prompt="a nude statue")
        await _refused(world, refused, "not accepted here")
    finally:
        await world.run(world.manager, nsfw, "settings nsfw", policy="nsfw_channels_only")


# ---- hostile input (the soak's hostile part, benchmarks/soak/hostile_part.py, found these) -------------


def _option(name: str, value: object, kind: int):
    """A tamper writing an option value Discord's client would refuse to send (NaN, 2**70, a string)."""

    def tamper(payload: dict) -> None:
        options = payload["data"]["options"]
        options[:] = [o for o in options if o["name"] != name]
        options.append({"name": name, "type": kind, "value": value})

    return tamper


@pytest.mark.parametrize(
    ("name", "value", "kind", "reason"),
    [
        ("count", 0, 4, "number of images must be a whole number from 1 to 4"),
        ("count", -5, 4, "number of images must be a whole number from 1 to 4"),
        ("count", "3", 4, "number of images must be a whole number from 1 to 4"),
        ("guidance", float("nan"), 10, "Guidance must be between"),
        ("temperature", float("nan"), 10, "Temperature must be between 0 and"),
        ("temperature", -1.0, 10, "Temperature must be between 0 and"),
        ("seed", 2**70, 4, "seed must be a whole number from 0 to 2147483647"),
        ("seed", -1, 4, "seed must be a whole number from 0 to 2147483647"),
        ("best_of", "8", 4, "best_of must be more than count"),
    ],
)
async def test_option_values_discord_would_not_send_are_refused_before_anything_is_recorded(
    world: BotWorld, name: str, value: object, kind: int, reason: str
) -> None:
    user = world.user(f"opt-{name}-{value!r}")
    prompt = f"a cube with {name} {value!r}"
    itx = await world.run(
        user, world.general, "imagine", prompt=prompt, count=1, tamper=_option(name, value, kind)
    )
    await _refused(world, itx, reason)
    await _nothing_stored(world, user)  # no job recorded (and none failed by the engine)
    assert not [r for r in world.submitted if getattr(r, "prompt", None) == prompt]


async def test_blocked_words_in_look_alike_letters_are_refused_in_every_command(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("look-alikes")
    for prompt in ("a ｆｏｒｂｉｄｄｅｎ castle", "a for\u200bbidden castle", "a f\u043erbidd\u0435n castle"):
        itx = await world.run(user, world.general, "imagine", prompt=prompt)
        await _refused(world, itx, "does not accept")
    itx = await world.run(user, world.general, "imagine", prompt="a castle", negative="𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧")
    await _refused(world, itx, "negative prompt", "does not accept")
    itx = await world.run(user, world.general, "chat", message="tell me 𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧 things")
    await _refused(world, itx, "does not accept")
    sent = await emu.send_message(user, world.general, "what is FORBİDDEN?", mentions_bot=True)
    reply = await emu.wait_for_message(
        world.general, lambda m: m.reference_id == sent.id, author=emu.bot_user
    )
    assert "does not accept" in reply.content
    await _nothing_stored(world, user)


async def test_text_of_only_invisible_characters_is_empty(world: BotWorld) -> None:
    emu = world.emu
    user = world.user("invisible")
    zero_width = "\u200b\u200c\u200d\u2060\ufeff"
    itx = await world.run(user, world.general, "imagine", prompt=zero_width)
    await _refused(world, itx, "The prompt is empty")
    itx = await world.run(user, world.general, "chat", message=zero_width)
    await _refused(world, itx, "Ask me something")
    sent = await emu.send_message(user, world.general, zero_width, mentions_bot=True)
    reply = await emu.wait_for_message(
        world.general, lambda m: m.reference_id == sent.id, author=emu.bot_user
    )
    assert "Ask me something" in reply.content
    await _nothing_stored(world, user)


async def test_reload_of_a_binary_or_nan_file_keeps_the_config_and_names_no_path(world: BotWorld) -> None:
    path = world.tmp / "config.toml"
    bot = world.bot
    running = bot.config
    try:
        cases = [
            (b"[limits]\nchat_cooldown_s = \xff\xfe\n", "not UTF-8 text"),
            (b"[limits]\nchat_cooldown_s = nan\n", "limits.chat_cooldown_s: must be a finite number"),
            (b"[limits\n", "not valid TOML"),
        ]
        for content, reason in cases:
            path.write_bytes(content)
            itx = await world.run(world.owner, world.general, "admin reload")
            text = itx.original.content
            assert "Reload failed" in text and reason in text, text
            assert str(world.tmp) not in text  # the file by its name (the modlog channel sees this too)
            assert bot.config is running
    finally:
        write_toml(path, world.doc)
        await world.run(world.owner, world.general, "admin reload")
    assert world.emu.failures == []
