"""``janus-bot demo``: the whole product offline, in about half a minute, with no token and no network.

It starts the loopback Discord emulator, builds the tiny random Janus checkpoint (in a child process, so
this process - which runs the real bot - never imports torch), starts the real bot with real engine
workers and an SQLite file in the output folder, and plays a scripted session as two users: /imagine
with its progress, a button press, /describe, a follow-up question that needs memory, and a bad upload.
It prints what a Discord user would see and writes the transcript and every image to the output folder.

The tiny model is random, so its pictures are noise and its answers gibberish; everything around them
(queueing, progress, buttons, memory, refusals) is the real thing. Point ``janus-bot run`` at Janus-Pro
for real output.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import parse_config

DEMO_STEP_DELAY_S = 0.1  # the tiny model finishes in milliseconds; slow its steps so progress is visible


class Transcript:
    """Prints each line as it happens and keeps them for transcript.txt; mentions shown as @name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.t0 = time.monotonic()
        self.names: dict[int, str] = {}

    def say(self, text: str = "") -> None:
        for uid, name in self.names.items():
            text = text.replace(f"<@{uid}>", f"@{name}")
        for i, line in enumerate(text.splitlines() or [""]):
            if not line:
                stamped = ""
            elif i == 0:
                stamped = f"[{time.monotonic() - self.t0:5.1f}s] {line}"
            else:
                stamped = f"{'':8}   {line}"  # continuation of a multi-line message
            self.lines.append(stamped)
            print(stamped, flush=True)


def _build_tiny_model(path: Path) -> None:
    """In a child process: building it imports torch, which the bot's process must not."""
    code = (
        "import sys; from janus_engine.tiny import build_tiny_checkpoint; build_tiny_checkpoint(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)


def _demo_image() -> bytes:
    """A small picture for /describe, drawn with PIL (a sky over a green hill)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 96), (120, 170, 230))
    ImageDraw.Draw(img).ellipse((-30, 50, 126, 160), fill=(40, 140, 60))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def _watch(
    emu: Any,
    get_message: Callable[[], Any],
    done: Callable[[Any], bool],
    out: Transcript,
    who: str = "Janus",
    timeout: float = 60.0,
) -> Any:
    """Print every new state of a message until ``done`` holds (what a user watching Discord sees)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        msg = get_message()
        if msg is not None and not getattr(msg, "loading", False):
            state = (msg.content, tuple(a.filename for a in msg.attachments))
            if state != last:
                last = state
                files = f"  [attached: {', '.join(state[1])}]" if state[1] else ""
                out.say(f"  {who}: {msg.content}{files}")
            if done(msg):
                return msg
        await asyncio.sleep(0.05)
    raise TimeoutError("the demo waited too long for the bot")


def _buttons(msg: Any) -> str:
    return ", ".join(b.get("label", "?") for b in msg.buttons())


async def _run_demo(output: Path) -> Path:
    from bot.app import JanusBot
    from bot.store import Store
    from bot.tokens import load_model_facts
    from discord_emulator import DiscordEmulator, Upload
    from janus_engine.client import LocalEngine
    from janus_engine.engine import JanusEngine

    out = Transcript()
    output.mkdir(parents=True, exist_ok=True)
    out.say("Janus-Pro Discord bot - offline demo (Discord emulator + real bot + tiny random model)")
    with tempfile.TemporaryDirectory(prefix="janus-tiny-") as tmp:
        model_dir = Path(tmp) / "tiny-janus"
        out.say("building the tiny random Janus checkpoint ...")
        _build_tiny_model(model_dir)
        db_path = output / "janus-demo.db"
        if db_path.exists():
            db_path.unlink()
        async with DiscordEmulator() as emu:
            guild = emu.add_guild("Demo Server")
            general = emu.add_channel(guild, "general")
            alice, bob = emu.add_user("alice"), emu.add_user("bob")
            out.names = {alice.id: "alice", bob.id: "bob"}
            emu.add_member(guild, alice)
            emu.add_member(guild, bob)
            config = parse_config(
                {
                    "discord": {"guild_ids": [guild.id]},
                    "model": {
                        "model": str(model_dir),
                        "devices": ["cpu"],
                        "torch_threads": 1,
                        "local_files_only": True,
                    },
                    "engine": {"preview_every": 4, "worker_start_timeout_s": 300},
                    "understanding": {"max_new_tokens": 16, "max_upload_bytes": 2_000_000},
                    "limits": {"imagine_cooldown_s": 0, "chat_cooldown_s": 0},
                    "database": {"url": f"sqlite+aiosqlite:///{db_path.resolve()}"},
                }
            )
            engine_config = dataclasses.replace(config.engine_config(), step_delay_s=DEMO_STEP_DELAY_S)
            with emu.configure_client():
                out.say(
                    "starting the bot: store (SQLite, migrations), engine worker (tiny model), commands ..."
                )
                facts = load_model_facts(config)
                async with (
                    await Store.open(config.database.url, count_tokens=facts.count_tokens) as store,
                    LocalEngine(JanusEngine(engine_config)) as engine,
                ):
                    bot = JanusBot(config, store=store, engine=engine, facts=facts, guild_ready_timeout=0.05)
                    task = asyncio.create_task(bot.start(emu.bot_token))
                    try:
                        await emu.wait_for(lambda: emu.synced_commands(guild) or task.done(), timeout=300)
                        if task.done():
                            task.result()
                        names = sorted(c["name"] for c in emu.synced_commands(guild))
                        out.say(f"bot online in #{general.name}; commands: {', '.join(names)}")
                        await _script(emu, bot, general, alice, bob, out, output, Upload)
                    finally:
                        await bot.close()
                        await asyncio.wait_for(task, 60)
    transcript = output / "transcript.txt"
    transcript.write_text("\n".join(out.lines) + "\n", encoding="utf-8")
    out.say(f"transcript and images written to {output}/")
    return transcript


async def _script(
    emu: Any, bot: Any, channel: Any, alice: Any, bob: Any, out: Transcript, output: Path, Upload: Any
) -> None:
    def is_result(m: Any) -> bool:
        return bool(m.attachments) and any(c.startswith("janus:reroll:") for c in m.custom_ids())

    def answered(m: Any) -> bool:
        return bool(m.content) and "Queued" not in m.content and "▌" not in m.content

    out.say()
    out.say("alice: /imagine prompt:a lighthouse at dusk count:2 seed:42")
    itx = await emu.slash(alice, channel, "imagine", prompt="a lighthouse at dusk", count=2, seed=42)
    result = await _watch(emu, lambda: itx.original, is_result, out)
    out.say(f"  (buttons: {_buttons(result)})")
    for att in result.attachments:
        (output / att.filename).write_bytes(att.data)

    out.say()
    out.say("bob presses [Re-roll] under alice's images")
    reroll_id = next(c for c in result.custom_ids() if c.startswith("janus:reroll:"))
    press = await emu.press_button(bob, result, reroll_id)
    rerolled = await _watch(emu, lambda: press.original, is_result, out)
    for att in rerolled.attachments:
        (output / att.filename).write_bytes(att.data)

    out.say()
    out.say("alice: /describe image:hill.png question:What is in this picture?")
    itx = await emu.slash(
        alice,
        channel,
        "describe",
        image=Upload("hill.png", _demo_image(), "image/png"),
        question="What is in this picture?",
    )
    await _watch(emu, lambda: itx.original, answered, out)

    out.say()
    out.say("alice: /chat message:And what colour is the hill? (a follow-up: needs the image from memory)")
    itx = await emu.slash(alice, channel, "chat", message="And what colour is the hill?")
    await _watch(emu, lambda: itx.original, answered, out)
    from bot.policy import Requester
    from bot.store import ServerSettings

    who = Requester(user_id=alice.id, guild_id=channel.guild.id, channel_id=channel.id)
    conv = await bot.store.resolve_conversation(bot.access.conversation_key(who, ServerSettings()))
    turns = await bot.store.list_turns(conv.id)
    images = sum(len(t.image_hashes) for t in turns)
    out.say(
        f"  (memory: alice's conversation in #{channel.name} holds {len(turns)} turns with {images} image;"
        " the follow-up went to the model with the earlier turns, image included)"
    )

    out.say()
    out.say("bob: /describe image:notes.txt  (not an image)")
    itx = await emu.slash(bob, channel, "describe", image=Upload("notes.txt", b"shopping list", "text/plain"))
    await itx.wait_response()
    refusal = await emu.wait_for(lambda: itx.original if itx.original and itx.original.content else None)
    out.say(f"  Janus (only bob sees this): {refusal.content}")

    out.say()
    out.say("bob: /describe image:broken.png  (a corrupt file)")
    itx = await emu.slash(
        bob, channel, "describe", image=Upload("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")
    )
    await itx.wait_response()
    refusal = await emu.wait_for(lambda: itx.original if itx.original and itx.original.content else None)
    out.say(f"  Janus (only bob sees this): {refusal.content}")
    out.say()
    out.say(
        "(the tiny model is random: its images are noise and its answers gibberish;"
        " run `janus-bot run --config config.toml` with Janus-Pro for real output)"
    )


def demo_command(args: argparse.Namespace) -> int:
    """``janus-bot demo [-o DIR]``. An output path that is a file or cannot be created or written ends
    with one line and exit status 2 before anything starts."""
    from janus_engine.cli_jobs import writable_output_dir

    output = writable_output_dir(Path(args.output))
    # The transcript is the output: keep library logs (discord.py's voice warnings, ...) quiet.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("discord").setLevel(logging.ERROR)
    asyncio.run(_run_demo(output))
    return 0
