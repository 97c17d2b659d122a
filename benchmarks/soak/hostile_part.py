"""Hostile input: a corpus of prompts, attachments, option values and config files a stranger (or a tired
operator) could send, each delivered to the running bot and judged.

Each Discord item runs as a user of its own (so items run concurrently and their rows are found by user
id); option values Discord's client would never send (NaN, 2**70, a string for an integer) are written
into the INTERACTION_CREATE payload by ``tamper``. An item passes when:

- the user got a clear message (a sentence, no traceback or file path) or, where the input is
  acceptable, a normal result; an item that must be refused was refused (nothing drawn or answered);
- it left nothing half-written: no job of its user still queued or running once it settled, no question
  stored without its answer;
- and, for the whole part: no new "Traceback" in the bot's log or console, /healthz still 200.

Config items run ``janus-bot check --config BAD`` (exit status 1 or 2, one line naming the key, no
traceback) and write a bad file over the running bot's config.toml before ``/admin reload`` (the reply
names the key, the old config keeps working: a blocked word is still refused), then restore it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import sys
import time
import tomllib
import urllib.request
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.soak.figures import Figure
from benchmarks.soak.outcomes import interaction_messages, leaks_internals
from benchmarks.soak.world import REPO, SoakWorld
from discord_emulator import Interaction, Message, Upload, User
from tests.bot.bot_world import png_bytes, write_toml

PART = "hostile input"
SETTLE_S = 60.0
CONCURRENCY = 6  # Discord items in flight at once (the tiny model has one CPU worker)
BAD_SENTENCE = re.compile(r"went wrong on our side|interaction failed", re.I)
BLOCKED = re.compile(r"does not accept", re.I)  # bot.policy's refusal of a blocked pattern
# How an item reaches the bot, as ``user``: what it returns (interactions, the user's messages) is what
# the bot's answers are found by.
Send = Callable[[SoakWorld, User], Awaitable[list[Any]]]


# ---- what was sent, and what the user saw --------------------------------------------------------------


@dataclass
class Seen:
    """What one item produced, read once it settled."""

    shown: str  # every message the user saw in answer, joined
    result: bool  # a job of this user ended done (images posted, an answer given)
    jobs: int  # job rows of this user (a refusal must come before anything is recorded or queued)
    open_jobs: int  # jobs of this user still queued or running
    half: int  # this user's questions stored without an answer
    pings: list[str] = field(default_factory=list)  # who the bot's answers notified, beyond the user


@dataclass(frozen=True)
class Item:
    category: str
    name: str
    send: Send  # the interactions / messages it sent
    expect: str = "either"  # "refuse": must be refused; "result": must run; "either": a result or a refusal
    says: re.Pattern[str] | None = None  # what a refusal must say


@dataclass
class Verdict:
    item: Item
    ok: bool
    why: str = ""


def clear_sentence(text: str) -> bool:
    """Words a user can read: letters, at least three words, no internals, not the unexpected-error line."""
    text = text.strip()
    return (
        len(re.findall(r"[A-Za-z]{2,}", text)) >= 3
        and not leaks_internals(text)
        and not BAD_SENTENCE.search(text)
    )


def _set_option(payload: dict[str, Any], name: str, value: Any) -> None:
    options = payload["data"].setdefault("options", [])
    for option in options:
        if option["name"] == name:
            option["value"] = value
            return
    kind = {"count": 4, "seed": 4, "best_of": 4, "guidance": 10, "temperature": 10}.get(name, 3)
    options.append({"name": name, "type": kind, "value": value})


def tampered(**values: Any) -> Callable[[dict[str, Any]], None]:
    """A tamper that writes option values Discord's client would refuse to send."""

    def tamper(payload: dict[str, Any]) -> None:
        for name, value in values.items():
            _set_option(payload, name, value)

    return tamper


def _declared_size(size: int) -> Callable[[dict[str, Any]], None]:
    def tamper(payload: dict[str, Any]) -> None:
        for att in payload["data"]["resolved"]["attachments"].values():
            att["size"] = size

    return tamper


def imagine(prompt: str = "a small red cube", **tamper: Any) -> Send:
    """/imagine with valid options (the emulator checks them as Discord's client does), then ``prompt``
    and the ``tamper`` values written over them in the payload."""

    async def send(world: SoakWorld, user: User) -> list[Any]:
        kw: dict[str, Any] = {"prompt": "a small red cube", "count": 1}
        values = {"prompt": prompt, **tamper}
        return [await world.slash(user, "imagine", tamper=tampered(**values), **kw)]

    return send


def chat(message: str) -> Send:
    async def send(world: SoakWorld, user: User) -> list[Any]:
        return [await world.slash(user, "chat", message="hello", tamper=tampered(message=message))]

    return send


def describe(upload: Upload, question: str | None = None, size: int | None = None) -> Send:
    async def send(world: SoakWorld, user: User) -> list[Any]:
        def tamper(payload: dict[str, Any]) -> None:
            if question is not None:
                _set_option(payload, "question", question)
            if size is not None:
                _declared_size(size)(payload)

        return [await world.slash(user, "describe", image=upload, question="what is it?", tamper=tamper)]

    return send


def mention(text: str, attachments: tuple[Upload, ...] = ()) -> Send:
    async def send(world: SoakWorld, user: User) -> list[Any]:
        return [
            await world.emu.send_message(
                user, world.channel, text, attachments=list(attachments), mentions_bot=True
            )
        ]

    return send


# ---- files ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels (a decompression bomb's shape) in a few bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def animated_gif(frames: int = 1000) -> bytes:
    images = [Image.new("P", (16, 16), i % 256) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=20, loop=0)
    return buf.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'
MENTIONS = "@everyone @here <@&123456789012345678> <@234567890123456789> "
MARKDOWN = "[click](https://evil.example) ```` ``` ```` **bold** ||spoiler|| <https://evil.example> # Heading"


def corpus() -> list[Item]:
    png = png_bytes((30, 140, 200))
    png_upload = Upload("ok.png", png, "image/png")
    refuse, result = "refuse", "result"
    items = [
        # prompts
        Item("prompts", "100k characters", imagine("a" * 100_000), refuse),
        Item("prompts", "only whitespace", imagine(" \t\n\u3000\u00a0 "), refuse),
        Item("prompts", "only zero-width characters", imagine("\u200b\u200c\u200d\u2060\ufeff"), refuse),
        Item("prompts", "RTL override", imagine("a cat \u202egnp.exe\u202c on a mat")),
        Item("prompts", "NUL bytes", imagine("a cat\x00 on a\x00 mat")),
        Item("prompts", "control characters and escapes", imagine("a \x1b[31mred\x1b[0m cube\x07\x08")),
        Item("prompts", "mention spam x50", imagine(MENTIONS * 50), refuse),
        Item("prompts", "mention spam x10", imagine(MENTIONS * 10)),
        Item("prompts", "markdown and link injection", imagine(MARKDOWN)),
        Item("prompts", "zalgo text", imagine("Z\u0338\u0322\u031b\u0316a\u0337l\u0336g\u0334o\u0336 " * 20)),
        Item("prompts", "negative prompt of 100k characters", imagine(negative="b" * 100_000), refuse),
        Item("prompts", "a benign word near the blocked one", imagine("a forbiddingly tall tower"), result),
        # blocked words written around the blocklist (the test config blocks \bforbidden\b)
        Item("blocked words", "plain", imagine("a forbidden fruit"), refuse, BLOCKED),
        Item("blocked words", "fullwidth", imagine("a ｆｏｒｂｉｄｄｅｎ fruit"), refuse, BLOCKED),
        Item("blocked words", "mathematical bold", imagine("a 𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧 fruit"), refuse, BLOCKED),
        Item("blocked words", "zero-width space inside", imagine("a for\u200bbidden fruit"), refuse, BLOCKED),
        Item("blocked words", "soft hyphen inside", imagine("a for\u00adbidden fruit"), refuse, BLOCKED),
        Item("blocked words", "dotted capital I", imagine("a FORBİDDEN fruit"), refuse, BLOCKED),
        Item(
            "blocked words", "Cyrillic look-alikes", imagine("a f\u043erbidd\u0435n fruit"), refuse, BLOCKED
        ),
        Item("blocked words", "Greek look-alikes", imagine("a f\u03bfrbidden fruit"), refuse, BLOCKED),
        Item("blocked words", "combining accents", imagine("a fórbíddén fruit"), refuse, BLOCKED),
        Item(
            "blocked words", "in a negative prompt", imagine(negative="ｆｏｒｂｉｄｄｅｎ"), refuse, BLOCKED
        ),
        Item("blocked words", "in /chat", chat("tell me about ｆｏｒｂｉｄｄｅｎ things"), refuse, BLOCKED),
        Item("blocked words", "in an @mention", mention("what is 𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧?"), refuse, BLOCKED),
        Item(
            "blocked words",
            "in a /describe question",
            describe(png_upload, question="is it for\u200bbidden?"),
            refuse,
            BLOCKED,
        ),
        # /chat and @mentions
        Item("chat and mentions", "/chat of 100k characters", chat("c" * 100_000), refuse),
        Item("chat and mentions", "/chat of only whitespace", chat(" \t\n "), refuse),
        Item("chat and mentions", "/chat of only zero-width characters", chat("\u200b\u200d\ufeff"), refuse),
        Item("chat and mentions", "/chat with NUL bytes", chat("hello\x00 there\x00")),
        Item("chat and mentions", "/chat mention spam", chat(MENTIONS * 30)),
        Item("chat and mentions", "/chat markdown injection", chat(MARKDOWN)),
        Item("chat and mentions", "@mention of 100k characters", mention("m" * 100_000), refuse),
        Item("chat and mentions", "@mention of only zero-width characters", mention("\u200b\u200b"), refuse),
        Item("chat and mentions", "@mention with an RTL override", mention("hi \u202edlrow\u202c")),
        Item("chat and mentions", "@mention mention spam", mention(MENTIONS * 20)),
        Item(
            "chat and mentions",
            "@mention with 11 attachments",
            mention("what are these?", tuple(Upload(f"a{i}.png", png, "image/png") for i in range(11))),
            refuse,
        ),
        Item(
            "chat and mentions",
            "@mention with an SVG",
            mention("what is this?", (Upload("x.svg", SVG, "image/svg+xml"),)),
            refuse,
        ),
        Item(
            "chat and mentions",
            "@mention with an empty file",
            mention("what is this?", (Upload("e.png", b"", "image/png"),)),
            refuse,
        ),
        # attachments for /describe
        Item(
            "attachments",
            "text that says it is a PNG",
            describe(Upload("a.png", b"hello " * 50, "image/png")),
            refuse,
        ),
        Item("attachments", "0 bytes", describe(Upload("empty.png", b"", "image/png")), refuse),
        Item("attachments", "SVG with a script", describe(Upload("x.svg", SVG, "image/svg+xml")), refuse),
        Item("attachments", "SVG without a type", describe(Upload("x.svg", SVG, None)), refuse),
        Item(
            "attachments",
            "animated GIF of 1000 frames",
            describe(Upload("anim.gif", animated_gif(), "image/gif")),
        ),
        Item("attachments", "declared size of 1 TB", describe(png_upload, size=10**12), refuse),
        Item(
            "attachments",
            "PNG header of 100000x100000",
            describe(Upload("bomb.png", bomb_png(), "image/png")),
            refuse,
        ),
        Item(
            "attachments",
            "truncated PNG",
            describe(Upload("cut.png", png[: len(png) // 2], "image/png")),
            refuse,
        ),
        Item(
            "attachments",
            "random bytes, no type",
            describe(Upload("blob", bytes(range(256)) * 8, None)),
            refuse,
        ),
        Item("attachments", "a PNG with no type or extension", describe(Upload("photo", png, None)), result),
        Item(
            "attachments", "a PNG declared as text/html", describe(Upload("p.html", png, "text/html")), refuse
        ),
        Item(
            "attachments",
            "1x1 pixel",
            describe(Upload("dot.png", png_bytes(size=(1, 1)), "image/png")),
            result,
        ),
        Item(
            "attachments",
            "filename with mentions and backticks",
            describe(Upload("`@everyone`<@&1>.txt", b"x" * 10, "text/plain")),
            refuse,
        ),
        # option values Discord's client would not send
        Item("options", "count 0", imagine(count=0), refuse),
        Item("options", "count 99", imagine(count=99), refuse),
        Item("options", "count -5", imagine(count=-5), refuse),
        Item("options", "count as a string", imagine(count="3"), refuse),
        Item("options", "guidance NaN", imagine(guidance=float("nan")), refuse),
        Item("options", "guidance 1e9", imagine(guidance=1e9), refuse),
        Item("options", "guidance -1", imagine(guidance=-1.0), refuse),
        Item("options", "guidance inf", imagine(guidance=float("inf")), refuse),
        Item("options", "temperature NaN", imagine(temperature=float("nan")), refuse),
        Item("options", "temperature inf", imagine(temperature=float("inf")), refuse),
        Item("options", "temperature -1", imagine(temperature=-1.0), refuse),
        Item("options", "seed 2**70", imagine(seed=2**70), refuse),
        Item("options", "seed -1", imagine(seed=-1), refuse),
        Item("options", "best_of 1000", imagine(best_of=1000), refuse),
        Item("options", "best_of -3", imagine(best_of=-3), refuse),
    ]
    return items


# ---- judging Discord items -----------------------------------------------------------------------------


def _user_rows(world: SoakWorld, user: User) -> tuple[int, int, int, int]:
    """(done, open, half, jobs) for this user: jobs done, jobs queued or running, questions without
    answers, job rows in all."""
    jobs = world.query("SELECT status FROM jobs WHERE user_id = ?", user.id)
    half = world.query(
        "SELECT count(*) FROM turns q WHERE q.role = 'user' AND q.author_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM turns a WHERE a.reply_to_turn_id = q.id AND a.role = 'assistant')",
        user.id,
    )[0][0]
    done = sum(1 for r in jobs if r["status"] == "done")
    open_ = sum(1 for r in jobs if r["status"] in ("queued", "running"))
    return done, open_, int(half), len(jobs)


def _answers(world: SoakWorld, sent: Any) -> list[Message]:
    if isinstance(sent, Interaction):
        return interaction_messages(sent)
    bot_id = world.emu.bot_user.id
    return [
        m
        for m in world.emu.messages(sent.channel)
        if m.author.id == bot_id and m.reference_id == sent.id and not m.deleted
    ]


def _pending(world: SoakWorld, sent: Any) -> bool:
    if isinstance(sent, Interaction):
        if sent.failed:
            return False
        if not sent.responses:
            return True
    messages = _answers(world, sent)
    if not isinstance(sent, Interaction) and not messages:
        return True
    return any(
        m.loading or "▌" in (m.content or "") or "thinking" in (m.content or "").lower() for m in messages
    )


async def settle(world: SoakWorld, user: User, sent: list[Any]) -> Seen:
    """Wait until the user has an answer and none of their jobs is open (or SETTLE_S passed)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        _, open_, _, _ = _user_rows(world, user)
        if not open_ and not any(_pending(world, s) for s in sent):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)  # the follower's last edit after the job's row closes
    done, open_, half, jobs = _user_rows(world, user)
    messages = [m for s in sent for m in _answers(world, s)]
    pings = []
    for m in messages:
        p = m.pings
        if p.everyone or p.roles or (p.users - {user.id}):
            pings.append(f"message {m.id} pings {p}")
    shown = "\n".join(str(m.content or "") for m in messages)
    return Seen(shown, done > 0, jobs, open_, half, pings)


def judge(item: Item, seen: Seen) -> Verdict:
    if seen.open_jobs:
        return Verdict(item, False, f"{seen.open_jobs} job(s) left open")
    if seen.half:
        return Verdict(item, False, f"{seen.half} question(s) stored without an answer")
    if seen.pings:
        return Verdict(item, False, "; ".join(seen.pings))
    if leaks_internals(seen.shown):
        return Verdict(item, False, f"internals shown: {seen.shown[:120]!r}")
    if seen.result:
        if item.expect == "refuse":
            return Verdict(item, False, f"ran although it must be refused: {seen.shown[:120]!r}")
        return Verdict(item, True, "result: " + seen.shown[:100])
    if item.expect == "result":
        return Verdict(item, False, f"refused although acceptable: {seen.shown[:120]!r}")
    if not clear_sentence(seen.shown):
        return Verdict(item, False, f"no clear sentence: {seen.shown[:120]!r}")
    if item.expect == "refuse" and seen.jobs:
        return Verdict(
            item, False, f"refused only after {seen.jobs} job(s) were recorded: {seen.shown[:120]!r}"
        )
    if item.says is not None and not item.says.search(seen.shown):
        return Verdict(item, False, f"refused for another reason: {seen.shown[:120]!r}")
    return Verdict(item, True, "refused: " + seen.shown[:100])


async def run_item(world: SoakWorld, item: Item, user: User, gate: asyncio.Semaphore) -> Verdict:
    async with gate:
        try:
            sent = await item.send(world, user)
            seen = await settle(world, user, sent)
        except Exception as exc:  # the emulator refused to send it: a corpus bug, shown as a failure
            return Verdict(item, False, f"could not send: {type(exc).__name__}: {exc}")
    return judge(item, seen)


# ---- config files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadConfig:
    name: str
    key: str  # what the one line must name
    text: str | None = None  # raw file content (malformed TOML)
    data: bytes | None = None  # raw bytes (not UTF-8)
    change: dict[str, dict[str, Any]] | None = None  # edits of the good document


BAD_CONFIGS = (
    BadConfig("malformed TOML", "TOML", text="[engine\nmax_queue = 3\n"),
    BadConfig("not UTF-8", "not UTF-8", data=b"[engine]\nmax_queue = \xff\xfe\x00\x81\n"),
    BadConfig("negative timeout", "engine.job_timeout_s", change={"engine": {"job_timeout_s": -5}}),
    BadConfig("NaN timeout", "engine.job_timeout_s", change={"engine": {"job_timeout_s": float("nan")}}),
    BadConfig(
        "NaN temperature",
        "understanding.temperature",
        change={"understanding": {"temperature": float("nan")}},
    ),
    BadConfig(
        "inf cooldown", "limits.imagine_cooldown_s", change={"limits": {"imagine_cooldown_s": float("inf")}}
    ),
    BadConfig("huge queue", "engine.max_queue", change={"engine": {"max_queue": 10**12}}),
    BadConfig(
        "huge upload limit",
        "understanding.max_upload_bytes",
        change={"understanding": {"max_upload_bytes": 10**15}},
    ),
    BadConfig("string for a number", "generation.max_count", change={"generation": {"max_count": "four"}}),
    BadConfig(
        "float for an integer",
        "understanding.max_upload_bytes",
        change={"understanding": {"max_upload_bytes": 1e300}},
    ),
    BadConfig(
        "invalid regex",
        "access.blocked_prompt_patterns",
        change={"access": {"blocked_prompt_patterns": ["("]}},
    ),
    BadConfig("negative owner id", "discord.owners", change={"discord": {"owners": [-1]}}),
    BadConfig("unknown key", "engine.max_queu", change={"engine": {"max_queu": 3}}),
)


def _bad_file(path: Path, good: dict[str, Any], bad: BadConfig) -> None:
    if bad.data is not None:
        path.write_bytes(bad.data)
    elif bad.text is not None:
        path.write_text(bad.text)
    else:
        doc = json.loads(json.dumps(good))  # a deep copy
        doc.setdefault("access", {})["blocked_prompt_patterns"] = []  # applied by mistake, it would show
        for section, values in (bad.change or {}).items():
            doc.setdefault(section, {}).update(values)
        write_toml(path, doc)


def _one_clear_line(output: str, key: str) -> str:
    """'' when ``output`` is one line naming ``key`` without internals; else what is wrong."""
    lines = [line for line in output.splitlines() if line.strip()]
    if "Traceback" in output:
        return "a traceback: " + output[-200:]
    if leaks_internals(output) or re.search(r"unexpected error|went wrong", output, re.I):
        return f"internals or an unexpected error shown: {output[:200]!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines: {output[:200]!r}"
    if key.lower() not in lines[0].lower():
        return f"does not name {key}: {lines[0][:200]!r}"
    return ""


async def check_config(world: SoakWorld, bad: BadConfig, good: dict[str, Any]) -> Verdict:
    item = Item("config check", bad.name, imagine())
    path = world.tmp / f"bad-{re.sub(r'[^a-z0-9]+', '-', bad.name)}.toml"
    _bad_file(path, good, bad)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "check", "--config", str(path),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace").replace(str(path), path.name)  # its own path is no leak
    if proc.returncode not in (1, 2):
        return Verdict(item, False, f"exit status {proc.returncode}: {text[:200]!r}")
    why = _one_clear_line(text, bad.key)
    return Verdict(item, not why, why or text.strip()[:100])


async def reload_config(world: SoakWorld, bad: BadConfig, good: dict[str, Any]) -> Verdict:
    item = Item("config reload", bad.name, imagine())
    _bad_file(world.config_path, good, bad)
    itx = await world.slash(world.emu.owner, "admin reload")
    await itx.wait_response()
    shown = "\n".join(str(m.content or "") for m in interaction_messages(itx))
    if "unchanged" not in shown.lower():
        return Verdict(item, False, f"not refused: {shown[:200]!r}")
    why = _one_clear_line(shown, bad.key)
    return Verdict(item, not why, why or shown[:100])


async def config_items(world: SoakWorld, user: User) -> list[Verdict]:
    original = world.config_path.read_bytes()
    good = tomllib.loads(original.decode())
    gate = asyncio.Semaphore(2)

    async def checked(bad: BadConfig) -> Verdict:
        async with gate:
            return await check_config(world, bad, good)

    verdicts = list(await asyncio.gather(*(checked(b) for b in BAD_CONFIGS)))
    try:
        for bad in BAD_CONFIGS:
            verdicts.append(await reload_config(world, bad, good))
        # The old config still holds (its blocked pattern among it), though the file on disk lost it.
        kept = await run_item(
            world,
            Item("config reload", "old config kept", imagine("a forbidden fruit"), "refuse", BLOCKED),
            user,
            asyncio.Semaphore(1),
        )
        verdicts.append(kept)
    finally:
        world.config_path.write_bytes(original)
    itx = await world.slash(world.emu.owner, "admin reload")
    await itx.wait_response()
    shown = "\n".join(str(m.content or "") for m in interaction_messages(itx))
    item = Item("config reload", "good file reloaded after", imagine())
    verdicts.append(Verdict(item, shown.startswith("Config reloaded"), shown[:200]))
    return verdicts


# ---- the part ------------------------------------------------------------------------------------------


def _tracebacks(world: SoakWorld) -> list[str]:
    """One entry per traceback in the log or the console: the line before it (it names what failed);
    one the console repeats from the log is counted once."""
    found: dict[str, None] = {}
    for path in (world.log_path, world.console_path):
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):  # the same line, time stamp included, in both files
                found.setdefault(lines[i - 1][:200] if i else f"{path.name}:{i}", None)
    return list(found)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return int(response.status) == 200
    except Exception:
        return False


def _half_exchanges(world: SoakWorld) -> int:
    sql = (
        "SELECT count(*) FROM turns q WHERE q.role = 'user' AND NOT EXISTS "
        "(SELECT 1 FROM turns a WHERE a.reply_to_turn_id = q.id AND a.role = 'assistant')"
    )
    return int(world.query(sql)[0][0])


async def hostile_part(world: SoakWorld) -> list[Figure]:
    started = time.monotonic()
    tracebacks_before = set(_tracebacks(world))
    half_before = _half_exchanges(world)
    items = corpus()
    gate = asyncio.Semaphore(CONCURRENCY)
    verdicts = list(
        await asyncio.gather(
            *(run_item(world, item, world.user(f"hostile{n}"), gate) for n, item in enumerate(items))
        )
    )
    verdicts += await config_items(world, world.user("hostile-config"))
    await asyncio.sleep(0.5)
    new_tracebacks = [t for t in _tracebacks(world) if t not in tracebacks_before]
    open_jobs = world.query(
        "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND user_id IN "
        f"({','.join(str(u.id) for n, u in world.users.items() if n.startswith('hostile'))})"
    )[0][0]
    half = _half_exchanges(world) - half_before
    healthy = _healthy(world.http_port)
    failed = [v for v in verdicts if not v.ok]
    # Every verdict, for whoever reads the kept folder (--keep) after a failure.
    (world.tmp / "hostile-verdicts.txt").write_text(
        "".join(f"{'ok ' if v.ok else 'BAD'} {v.item.category} / {v.item.name}: {v.why}\n" for v in verdicts)
    )
    per_category = Counter(v.item.category for v in verdicts)
    passed = Counter(v.item.category for v in verdicts if v.ok)
    figures = [
        Figure(PART, "items", len(verdicts)),
        Figure(
            PART,
            "answered with a clear message or a result",
            len(verdicts) - len(failed),
            must=len(verdicts),
            detail="; ".join(f"{v.item.category} / {v.item.name}: {v.why}" for v in failed[:6]),
        ),
    ]
    figures += [Figure(PART, f"  {cat}", f"{passed[cat]} / {n}") for cat, n in per_category.items()]
    figures += [
        Figure(
            PART,
            "tracebacks in the logs",
            len(new_tracebacks),
            must=0,
            detail="; ".join(new_tracebacks[:3]),
        ),
        Figure(PART, "half-written rows", int(open_jobs) + half, must=0),
        Figure(PART, "bot healthy after", healthy, must=True),
        Figure(PART, "seconds", round(time.monotonic() - started, 1)),
    ]
    return figures
