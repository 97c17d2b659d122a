"""/imagine end to end: queue position, progress edits, images with buttons, and every button."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.bot.bot_world import BotWorld, finished_job, is_result

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_imagine_shows_progress_then_images_with_buttons(world: BotWorld) -> None:
    bot = world.bot
    alice = world.user("alice")
    itx = await world.run(alice, world.general, "imagine", prompt="a red fox @everyone", count=2, seed=7)
    assert itx.deferred and not itx.ephemeral
    msg = await world.final(itx, is_result)
    # Two PNGs of the tiny model's size, sent as files.
    assert [a.filename[-6:] for a in msg.attachments] == ["-1.png", "-2.png"]
    assert all(a.data.startswith(b"\x89PNG") for a in msg.attachments)
    job_id = msg.custom_ids()[0].split(":")[2]
    assert set(msg.custom_ids()) == {
        f"janus:reroll:{job_id}",
        f"janus:edit:{job_id}",
        f"janus:delete:{job_id}",
        f"janus:info:{job_id}",
        f"janus:describe:{job_id}:0",
        f"janus:describe:{job_id}:1",
        f"janus:vary:{job_id}:0",
        f"janus:vary:{job_id}:1",
        f"janus:upscale:{job_id}:0",
        f"janus:upscale:{job_id}:1",
    }
    assert "seed 7" in msg.content and "a red fox" in msg.content
    # The echoed prompt cannot ping anyone.
    assert not msg.pings.everyone and not msg.pings.roles
    # Progress was shown in between: a progress bar edit with a Cancel button, at most once a second.
    revisions = msg.revisions
    bars = [r for r in revisions if "%" in (r.content or "")]
    assert bars, [r.content for r in revisions]
    assert any(r.attachment_ids for r in bars)  # the engine's preview image rode along
    assert any(c.startswith("janus:cancel:") for r in bars for c in _custom_ids(r))
    # revision.at is when that version was replaced: the edits were at these times, the last one being
    # the final result (which is not held back); queue and progress edits are at least a second apart.
    progress_edits = [r.at for r in revisions[:-1]]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(progress_edits)), progress_edits
    # The job record is finished with the message id and the seed.
    job = await finished_job(bot, job_id)
    assert job.status == "done" and job.seed == 7 and msg.id in job.message_ids
    assert job.params["count"] == 2


def _custom_ids(revision) -> list[str]:
    out = []
    for row in revision.components or []:
        for comp in row.get("components", []):
            if "custom_id" in comp:
                out.append(comp["custom_id"])
    return out


async def test_reroll_uses_a_new_seed_and_edit_prompt_opens_a_prefilled_modal(world: BotWorld) -> None:
    emu = world.emu
    bob = world.user("bob")
    itx = await world.run(bob, world.general, "imagine", prompt="a blue whale", seed=11)
    msg = await world.final(itx, is_result)
    job_id = msg.custom_ids()[0].split(":")[2]

    press = await emu.press_button(world.user("carol"), msg, f"janus:reroll:{job_id}")
    await press.wait_response()
    rerolled = await world.final(press, is_result)
    new_job = await world.bot.store.get_job(rerolled.custom_ids()[0].split(":")[2])
    assert new_job.prompt == "a blue whale" and new_job.seed != 11
    assert new_job.user_id == world.user("carol").id and new_job.params["parent_job"] == job_id

    press = await emu.press_button(bob, msg, f"janus:edit:{job_id}")
    await press.wait_response()
    assert press.modal is not None
    field = press.modal["components"][0]["components"][0]
    assert field["value"] == "a blue whale"
    submit = await emu.submit_modal(bob, press, values={"prompt": "a green whale"})
    await submit.wait_response()
    edited = await world.final(submit, is_result)
    edited_job = await world.bot.store.get_job(edited.custom_ids()[0].split(":")[2])
    assert edited_job.prompt == "a green whale" and edited_job.params["guidance"] == 5.0


async def test_only_the_requester_can_delete(world: BotWorld) -> None:
    emu = world.emu
    dave, erin = world.user("dave"), world.user("erin")
    itx = await world.run(dave, world.general, "imagine", prompt="a lighthouse")
    msg = await world.final(itx, is_result)
    job_id = msg.custom_ids()[0].split(":")[2]
    press = await emu.press_button(erin, msg, f"janus:delete:{job_id}")
    await press.wait_response()
    assert press.ephemeral and "Only the person" in press.original.content
    assert not msg.deleted
    press = await emu.press_button(dave, msg, f"janus:delete:{job_id}")
    await press.wait_response()
    await emu.wait_for(lambda: msg.deleted)


async def test_cancel_button_while_running(world: BotWorld) -> None:
    emu, bot = world.emu, world.bot
    frank = world.user("frank")
    itx = await world.run(frank, world.general, "imagine", prompt="a slow mountain", count=4)
    progress = await emu.wait_for(
        lambda: (
            itx.original
            if itx.original and any(c.startswith("janus:cancel:") for c in itx.original.custom_ids())
            else None
        )
    )
    job_id = next(c for c in progress.custom_ids() if c.startswith("janus:cancel:")).split(":")[2]
    # Someone else cannot cancel it.
    other = await emu.press_button(world.user("grace"), progress, f"janus:cancel:{job_id}")
    await other.wait_response()
    assert other.ephemeral and "Only the person" in other.original.content
    press = await emu.press_button(frank, progress, f"janus:cancel:{job_id}")
    await press.wait_response()
    assert press.ephemeral
    final = await world.final(itx, lambda m: "Cancelled" in m.content)
    assert not final.attachments and final.custom_ids() == []
    job = await finished_job(bot, job_id)
    assert job.status == "cancelled"
    await asyncio.sleep(0)


async def test_several_users_at_once_each_get_their_own_images(world: BotWorld) -> None:
    users = [world.user(f"crowd-{i}") for i in range(3)]
    itxs = await asyncio.gather(
        *(
            world.run(u, world.general, "imagine", prompt=f"portrait number {i}", seed=100 + i)
            for i, u in enumerate(users)
        )
    )
    results = await asyncio.gather(*(world.final(itx, is_result, timeout=60) for itx in itxs))
    for i, (user, msg) in enumerate(zip(users, results, strict=True)):
        assert f"<@{user.id}>" in msg.content and f"portrait number {i}" in msg.content
        assert f"seed {100 + i}" in msg.content
        job = await finished_job(world.bot, msg.custom_ids()[0].split(":")[2])
        assert job.user_id == user.id and job.prompt == f"portrait number {i}"
    # The same seed and prompt give the same image whether it ran alone or in a batch with others.
    again = await world.run(users[0], world.general, "imagine", prompt="portrait number 0", seed=100)
    alone = await world.final(again, is_result, timeout=60)
    assert alone.attachments[0].data == results[0].attachments[0].data


async def test_images_are_fitted_to_the_servers_upload_limit(world: BotWorld) -> None:
    user = world.user("small-uploads")
    saved = world.guild.upload_limit
    world.guild.upload_limit = 2000  # smaller than the tiny model's PNGs (about 2.5 kB)
    try:
        itx = await world.run(user, world.general, "imagine", prompt="a detailed city", count=2)
        msg = await world.final(itx, is_result)
    finally:
        world.guild.upload_limit = saved
    assert [a.filename[-4:] for a in msg.attachments] == [".jpg", ".jpg"]
    assert all(a.size <= 2000 for a in msg.attachments)
    assert "sent as JPEG" in msg.content
    assert not any(r.status == 413 for r in world.emu.rejections)


async def test_forgetting_everything_while_a_job_runs_still_delivers_its_images(world: BotWorld) -> None:
    """/forget everywhere deletes the job record mid-run; the images must still arrive and stay."""
    emu = world.emu
    hana = world.user("hana")
    itx = await world.run(hana, world.general, "imagine", prompt="a paper lantern", count=2)
    await emu.wait_for(lambda: itx.original if itx.original and "%" in itx.original.content else None)
    forget = await world.run(hana, world.general, "forget", where="everywhere")
    assert forget.ephemeral
    msg = await world.final(itx, is_result)
    await asyncio.sleep(0.5)  # any late bookkeeping error would have replaced the result by now
    assert len(msg.attachments) == 2 and "went wrong" not in msg.content
    assert emu.failures == []


async def test_a_negative_prompt_reaches_the_engine_changes_the_images_and_survives_reroll(
    world: BotWorld,
) -> None:
    emu = world.emu
    nia = world.user("nia")
    plain = await world.final(
        await world.run(nia, world.general, "imagine", prompt="a small boat", seed=5), is_result
    )
    itx = await world.run(nia, world.general, "imagine", prompt="a small boat", seed=5, negative="fog, rain")
    msg = await world.final(itx, is_result)
    sent = world.submitted[-1]
    assert sent.negative_prompt == "fog, rain" and sent.seed == 5
    assert "negative: " in msg.content and "fog, rain" in msg.content
    # Same prompt, same seed: only the guidance row differs, and so do the pictures.
    assert msg.attachments[0].data != plain.attachments[0].data
    job_id = msg.custom_ids()[0].split(":")[2]
    assert (await world.bot.store.get_job(job_id)).params["negative_prompt"] == "fog, rain"

    press = await emu.press_button(nia, msg, f"janus:reroll:{job_id}")
    await press.wait_response()
    await world.final(press, is_result)
    assert world.submitted[-1].negative_prompt == "fog, rain" and world.submitted[-1].seed != 5

    # A negative prompt is screened for the blocked patterns (not for NSFW words: it keeps them out).
    refused = await world.run(nia, world.general, "imagine", prompt="a boat", negative="forbidden things")
    assert "negative prompt contains something" in refused.original.content
    nsfw_words = await world.run(nia, world.general, "imagine", prompt="a boat", negative="nudity, explicit")
    await world.final(nsfw_words, is_result)


async def test_vary_draws_one_image_a_seed_away_and_info_shows_its_lineage(world: BotWorld) -> None:
    emu = world.emu
    ula = world.user("ula")
    itx = await world.run(
        ula, world.general, "imagine", prompt="a paper crane", count=2, seed=40, negative="ink"
    )
    msg = await world.final(itx, is_result)
    job_id = msg.custom_ids()[0].split(":")[2]
    press = await emu.press_button(ula, msg, f"janus:vary:{job_id}:1")
    await press.wait_response()
    varied = await world.final(press, is_result)
    assert len(varied.attachments) == 1
    sent = world.submitted[-1]
    assert (sent.n_images, sent.seed, sent.negative_prompt) == (1, 42, "ink")  # seed 40, image 2: 40 + 2
    assert varied.attachments[0].data not in [a.data for a in msg.attachments]
    varied_id = varied.custom_ids()[0].split(":")[2]

    upscale = await emu.press_button(world.user("ula-friend"), msg, f"janus:upscale:{job_id}:1")
    await upscale.wait_response()
    alone = upscale.original
    assert not upscale.ephemeral and [a.data for a in alone.attachments] == [msg.attachments[1].data]
    assert set(alone.custom_ids()) == {
        f"janus:vary:{job_id}:1",
        f"janus:describe:{job_id}:0",
        f"janus:info:{job_id}",
    }

    info = await emu.press_button(ula, varied, f"janus:info:{varied_id}")
    await info.wait_response()
    text = info.original.content
    assert info.ephemeral and "Prompt: " in text and "a paper crane" in text and "Negative: " in text
    assert "Seed 42 · guidance 5 · temperature 1 · 1 image" in text
    assert f"From: `{job_id}`" in text and "(seed 40)" in text
    assert not info.original.pings.users  # names the requester without pinging


async def test_enhance_has_janus_rewrite_the_prompt_shown_stored_and_reused_by_reroll(
    world: BotWorld,
) -> None:
    from janus_engine.protocol import GenerateRequest, UnderstandRequest

    emu = world.emu
    eli = world.user("eli")
    before = len(world.submitted)
    itx = await world.run(eli, world.general, "imagine", prompt="a lighthouse", enhance=True, seed=3)
    assert itx.deferred  # the rewrite takes longer than Discord's 3 seconds
    msg = await world.final(itx, is_result, timeout=90)
    asked = world.submitted[before:]
    rewrite_request, drawn = asked[0], asked[-1]
    assert isinstance(rewrite_request, UnderstandRequest) and "a lighthouse" in rewrite_request.turns[-1].text
    assert isinstance(drawn, GenerateRequest) and drawn.prompt != "a lighthouse" and len(drawn.prompt) >= 3
    job_id = msg.custom_ids()[0].split(":")[2]
    job = await world.bot.store.get_job(job_id)
    assert job.prompt == drawn.prompt and job.params["enhanced_from"] == "a lighthouse"
    assert "enhanced by Janus from: " in msg.content and "a lighthouse" in msg.content
    assert any("Janus is writing a detailed prompt" in (r.content or "") for r in msg.revisions)

    mark = len(world.submitted)
    press = await emu.press_button(eli, msg, f"janus:reroll:{job_id}")
    await press.wait_response()
    await world.final(press, is_result, timeout=60)
    again = world.submitted[mark:]
    assert [type(r).__name__ for r in again] == ["GenerateRequest"]  # no second rewrite
    assert again[0].prompt == drawn.prompt
