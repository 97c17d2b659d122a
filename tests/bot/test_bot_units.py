"""The bot's small pure modules: formatting, limits, policy, upload checks, token counting, file fitting,
and the rule that the bot process never imports torch or transformers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot.cogs.imagine import number_in, whole_in
from bot.config import AccessSection, UnderstandingSection, parse_config
from bot.delivery import LatestProgress, fit_to_limit
from bot.errors import BadUpload, BlockedPrompt, NotAllowed
from bot.formatting import format_eta, progress_bar, queue_line, quote_prompt, split_message
from bot.policy import (
    Requester,
    check_access,
    check_negative_prompt,
    check_prompt,
    effective_nsfw_policy,
    is_blank,
    normalize_for_matching,
)
from bot.store import ServerSettings
from bot.tokens import estimate_tokens, load_model_facts
from bot.uploads import check_attachments, read_images

REPO = Path(__file__).resolve().parents[2]


# ---- formatting ---------------------------------------------------------------------------------------


def test_progress_bar_and_eta() -> None:
    assert progress_bar(0, 576, width=10) == "`[----------]`   0%"
    assert progress_bar(288, 576, width=10) == "`[#####-----]`  50%"
    assert progress_bar(600, 576, width=10) == "`[##########]` 100%"
    assert format_eta(None) == "unknown" and format_eta(5.4) == "~5s" and format_eta(125) == "~2m 05s"
    assert format_eta(3 * 3600 + 60) == "~3h 01m"
    assert "you are next" in queue_line(1, None) and "2 jobs ahead" in queue_line(3, 40)


def test_quote_prompt_neutralises_backticks_and_shortens() -> None:
    assert quote_prompt("a `code` cat") == "`a 'code' cat`"
    long = quote_prompt("word " * 200, limit=50)
    assert len(long) == 52 and long.endswith("…`")


def test_split_message_keeps_every_character_within_the_limit() -> None:
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(100))
    chunks = split_message(text, limit=500)
    assert all(len(c) <= 500 for c in chunks) and len(chunks) > 1
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")
    assert split_message("   ") == ["(empty answer)"]


# ---- policy -------------------------------------------------------------------------------------------


def _who(**kw) -> Requester:
    base = {"user_id": 1, "guild_id": 10, "channel_id": 100}
    return Requester(**{**base, **kw})


def test_access_rules_name_the_reason() -> None:
    open_ = AccessSection()
    check_access(open_, _who(), ServerSettings())
    with pytest.raises(NotAllowed, match="not allowed"):
        check_access(AccessSection(blocked_users=(1,)), _who(), ServerSettings())
    with pytest.raises(NotAllowed, match="server"):
        check_access(AccessSection(allowed_guilds=(11,)), _who(), ServerSettings())
    with pytest.raises(NotAllowed, match="channel"):
        check_access(AccessSection(allowed_channels=(101,)), _who(), ServerSettings())
    check_access(
        AccessSection(allowed_channels=(101,)), _who(channel_id=555, parent_channel_id=101), ServerSettings()
    )
    with pytest.raises(NotAllowed, match="roles"):
        check_access(AccessSection(allowed_roles=(7,)), _who(role_ids=frozenset({8})), ServerSettings())
    check_access(AccessSection(allowed_roles=(7,)), _who(role_ids=frozenset({7, 8})), ServerSettings())
    with pytest.raises(NotAllowed, match="turned this bot off"):
        check_access(open_, _who(), ServerSettings(enabled=False))
    with pytest.raises(NotAllowed, match="direct messages"):
        check_access(AccessSection(allow_dms=False), _who(guild_id=None), ServerSettings())
    check_access(open_, _who(guild_id=None), ServerSettings())
    # A DM has no server, channel or roles: where the config limits those, a DM cannot get around them.
    for limited in ({"allowed_guilds": (10,)}, {"allowed_channels": (100,)}, {"allowed_roles": (7,)}):
        with pytest.raises(NotAllowed, match="direct messages"):
            check_access(
                AccessSection(**limited), _who(guild_id=None, role_ids=frozenset({7})), ServerSettings()
            )


def test_servers_can_tighten_the_nsfw_policy_but_never_loosen_it() -> None:
    strict = AccessSection(nsfw_policy="block")
    assert effective_nsfw_policy(strict, ServerSettings(nsfw_policy="allow")) == "block"
    assert effective_nsfw_policy(
        AccessSection(nsfw_policy="allow"), ServerSettings(nsfw_policy="nsfw_channels_only")
    ) == ("nsfw_channels_only")
    default = AccessSection()
    with pytest.raises(BlockedPrompt, match="marked NSFW"):
        check_prompt(default, _who(), ServerSettings(), "a NUDE statue")
    check_prompt(default, _who(channel_nsfw=True), ServerSettings(), "a nude statue")
    with pytest.raises(BlockedPrompt):
        check_prompt(default, _who(channel_nsfw=True), ServerSettings(nsfw_policy="block"), "a nude statue")
    # whole words only: no false positives
    check_prompt(default, _who(), ServerSettings(), "a sextant on a table")
    blocked = AccessSection(blocked_prompt_patterns=(re.compile(r"\bdragon\b", re.I),))
    with pytest.raises(BlockedPrompt):
        check_prompt(blocked, _who(), ServerSettings(), "A Dragon")


LOOK_ALIKES = [
    "a ｆｏｒｂｉｄｄｅｎ fruit",  # fullwidth
    "a 𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧 fruit",  # mathematical bold
    "a 𝔣𝔬𝔯𝔟𝔦𝔡𝔡𝔢𝔫 fruit",  # mathematical fraktur
    "a for\u200bbidden fruit",  # zero-width space
    "a for\u00adbidden fruit",  # soft hyphen
    "a f\u202dorbidden fruit",  # a bidi override
    "a for\x00bidden fruit",  # NUL
    "a FORBİDDEN fruit",  # capital I with a dot
    "a f\u043erbidd\u0435n fruit",  # Cyrillic o and e
    "a F\u041eRBIDD\u0415N fruit",  # Cyrillic capitals
    "a f\u03bfrbidden fruit",  # Greek omicron
    "a fórbíddén fruit",  # accents
    "a fo\u0308rbidden fruit",  # a combining mark
]


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_blocked_words_written_with_look_alike_letters_are_refused(text: str) -> None:
    assert "forbidden" in normalize_for_matching(text)
    blocked = AccessSection(blocked_prompt_patterns=(re.compile(r"\bforbidden\b", re.I),))
    with pytest.raises(BlockedPrompt, match="does not accept"):
        check_prompt(blocked, _who(), ServerSettings(), text)
    with pytest.raises(BlockedPrompt, match="negative prompt"):
        check_negative_prompt(blocked, text)


def test_nsfw_words_in_look_alike_letters_count_as_nsfw_and_the_text_as_typed_still_matches() -> None:
    with pytest.raises(BlockedPrompt, match="marked NSFW"):
        check_prompt(AccessSection(), _who(), ServerSettings(), "a ｎｕｄｅ statue")
    # A pattern written in Cyrillic matches the text as typed (its normalised copy reads Latin).
    cyrillic = AccessSection(blocked_prompt_patterns=(re.compile("сок", re.I),))
    with pytest.raises(BlockedPrompt):
        check_prompt(cyrillic, _who(), ServerSettings(), "яблочный СОК")
    # Normal words stay normal: no false positives from the folding.
    blocked = AccessSection(blocked_prompt_patterns=(re.compile(r"\bforbidden\b", re.I),))
    for fine in ("a forbiddingly tall tower", "ein Straßenbild", "Ηλιοβασίλεμα", "un café"):
        check_prompt(blocked, _who(), ServerSettings(), fine)


def test_blank_is_what_nobody_could_see() -> None:
    for blank in ("", " \t\n", "\u200b\u200c\u200d\u2060\ufeff", "\u00ad", "\u202e\u202c", "\u0301\u0308"):
        assert is_blank(blank), repr(blank)
    for visible in ("a", "🐱", "\u200ba", "猫"):
        assert not is_blank(visible), repr(visible)


def test_option_values_are_whole_finite_and_in_range() -> None:
    # Discord's client enforces an option's range; the payload does not, so the bot checks them itself.
    assert whole_in(3, 1, 4) and whole_in(1, 1, 4) and whole_in(4, 1, 4)
    for bad in (0, 5, -1, 2**70, "3", 3.0, True, None, float("nan")):
        assert not whole_in(bad, 1, 4), repr(bad)
    assert number_in(1.5, 1.1, 15.0) and number_in(2, 1.1, 15.0)
    for bad in (float("nan"), float("inf"), float("-inf"), -1.0, 1e9, "5", True, None):
        assert not number_in(bad, 1.1, 15.0), repr(bad)


# ---- uploads ------------------------------------------------------------------------------------------


@dataclass
class FakeAttachment:
    """Stands in for discord.Attachment's metadata and read(); read() records that it was called."""

    filename: str
    size: int
    content_type: str | None
    data: bytes = b""
    reads: int = 0

    async def read(self) -> bytes:
        self.reads += 1
        return self.data


def _png(size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_metadata_checks_happen_before_any_download() -> None:
    limits = UnderstandingSection(max_images_per_message=2, max_upload_bytes=1000)
    files = [FakeAttachment("a.png", 10, "image/png"), FakeAttachment("b.png", 10, "image/png")] * 2
    with pytest.raises(BadUpload, match="Too many images"):
        asyncio.run(read_images(files, limits))
    big = FakeAttachment("big.jpg", 5000, "image/jpeg")
    with pytest.raises(BadUpload, match="too large"):
        asyncio.run(read_images([big], limits))
    pdf = FakeAttachment("doc.pdf", 10, None)
    with pytest.raises(BadUpload, match=r"application/pdf\); send PNG, JPEG, WebP, GIF or BMP\."):
        check_attachments([pdf], limits)
    assert all(f.reads == 0 for f in [*files, big, pdf])


def test_uploads_are_decoded_and_lying_metadata_is_caught() -> None:
    limits = UnderstandingSection(max_upload_bytes=10_000)
    good = FakeAttachment("ok.png", 100, "image/png", _png())
    (png,) = asyncio.run(read_images([good], limits))
    assert Image.open(io.BytesIO(png)).size == (20, 20)
    liar = FakeAttachment("liar.png", 100, "image/png", b"\x89PNG" + bytes(20_000))
    with pytest.raises(BadUpload, match="larger than"):
        asyncio.run(read_images([liar], limits))
    corrupt = FakeAttachment("bad.png", 30, "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(BadUpload, match=r"bad\.png"):
        asyncio.run(read_images([corrupt], limits))


# ---- delivery -----------------------------------------------------------------------------------------


def test_oversized_png_is_sent_as_jpeg_or_dropped_with_a_note() -> None:
    noisy = Image.effect_noise((256, 256), 80).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    png = buf.getvalue()
    files, notes = fit_to_limit([("a.png", png)], limit=len(png) - 1)
    assert files[0][0] == "a.jpg" and len(files[0][1]) < len(png) and "JPEG" in notes[0]
    files, notes = fit_to_limit([("a.png", png)], limit=100)
    assert files == [] and "not sent" in notes[0]
    assert fit_to_limit([("a.png", png)], limit=len(png)) == ([("a.png", png)], [])


# ---- tokens -------------------------------------------------------------------------------------------


def test_token_counts_use_the_models_tokenizer_when_present(tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    facts = load_model_facts(parse_config({"model": {"model": str(tiny_model_dir)}}))
    assert facts.exact and facts.image_tokens == 16 and facts.context_tokens == 1024
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = "a small red house by the sea"
    assert facts.count_tokens(text) == len(tok.encode(text, add_special_tokens=False).ids)
    assert facts.history_budget(5000, 100) == 1024 - 100 - 80


def test_without_local_files_the_estimate_is_used(tmp_path: Path) -> None:
    facts = load_model_facts(parse_config({"model": {"model": str(tmp_path / "missing")}}))
    assert not facts.exact and facts.image_tokens == 576 and facts.context_tokens == 4096
    assert facts.count_tokens("abcdef") == estimate_tokens("abcdef") == 2


def test_the_bot_process_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys, bot.app, bot.demo, bot.cogs.imagine, bot.cogs.chat, bot.cogs.describe, bot.cogs.jobs,"
        " bot.cogs.settings, bot.cogs.admin, bot.cogs.help, bot.uploads, janus_engine.images;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_janus_bot_check_validates_config_token_database_and_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"[model]\nmodel = '{tiny_model_dir}'\ndevices = ['cpu']\n"
        "[database]\nurl = 'sqlite+aiosqlite:///janus.db'\n"
        "[discord]\ntoken_env = 'JANUS_TEST_TOKEN'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JANUS_TEST_TOKEN"}

    def check(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "check", "--config", str(cfg)],
            cwd=REPO,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = check({"JANUS_TEST_TOKEN": "secret-token-value"})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "is valid" in ok.stdout and "JANUS_TEST_TOKEN is set" in ok.stdout
    assert "looks complete" in ok.stdout
    # The database is relative to the config file, not the working directory, and check is read-only:
    # it says that `run` will create the file instead of creating it.
    assert f"{tmp_path / 'janus.db'} does not exist; `janus-bot run`" in ok.stdout
    assert not (tmp_path / "janus.db").exists()
    assert "secret-token-value" not in ok.stdout + ok.stderr
    missing = check({})
    assert missing.returncode == 1 and "PROBLEM" in missing.stdout and "JANUS_TEST_TOKEN" in missing.stdout
    cfg.write_text("[engine]\nmax_queue = 0\n")
    bad = check({})
    assert bad.returncode == 2 and "engine.max_queue: must be >= 1" in bad.stderr


def test_janus_bot_run_reports_a_refused_token_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`janus-bot run` through the real CLI against the emulator (in its own thread and loop): a wrong
    token ends with exit status 2 and a readable line, not a traceback, and the token is never printed."""
    import threading

    from bot.cli import main
    from discord_emulator import DiscordEmulator, configure_client

    ready, stop = threading.Event(), threading.Event()
    urls: dict[str, str] = {}

    async def serve() -> None:
        async with DiscordEmulator(bot_token="the-real-token") as emu:
            urls.update(api=emu.api_base, gateway=emu.gateway_url)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(30)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"[discord]\ntoken_env = 'JANUS_RUN_TOKEN'\n[model]\nmodel = '{tiny_model_dir}'\ndevices = ['cpu']\n"
    )
    os.environ["JANUS_RUN_TOKEN"] = "a-wrong-token"
    try:
        with configure_client(urls["api"], urls["gateway"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["run", "--config", str(cfg)])
    finally:
        os.environ.pop("JANUS_RUN_TOKEN", None)
        stop.set()
        thread.join(30)
    assert code == 2
    assert "Discord refused the token in JANUS_RUN_TOKEN" in err.getvalue()
    assert "a-wrong-token" not in err.getvalue()


# ---- progress messages --------------------------------------------------------------------------------


class _RecordingOutlet:
    def __init__(self) -> None:
        self.shown: list[tuple[float, str, object]] = []

    async def show(self, content: str, *, file=None, view=None) -> None:
        self.shown.append((time.monotonic(), content, file))


async def test_progress_shows_the_newest_state_at_most_once_per_interval() -> None:
    outlet = _RecordingOutlet()
    progress = LatestProgress(outlet, interval=0.2)
    await progress.update("queued 3")  # shown at once
    await progress.update("queued 2", file=("preview.png", b"png"))
    await progress.update("queued 1")  # replaces "queued 2", keeps its preview
    assert [c for _, c, _ in outlet.shown] == ["queued 3"]
    await asyncio.sleep(0.5)  # nothing else happens: the newest state still shows when the interval ends
    assert [c for _, c, _ in outlet.shown] == ["queued 3", "queued 1"]
    assert outlet.shown[1][2] == ("preview.png", b"png")
    assert outlet.shown[1][0] - outlet.shown[0][0] >= 0.19
    await progress.update("running 50%")
    await progress.update("running 60%")  # pending when the result arrives
    await progress.close()
    await asyncio.sleep(0.3)
    assert [c for _, c, _ in outlet.shown] == ["queued 3", "queued 1", "running 50%"]


def test_a_rewritten_prompt_is_cleaned_to_one_line_within_the_limit() -> None:
    from bot.prompt_craft import clean_rewrite

    raw = 'New prompt:  "A tall\x1b[31m red\x00 lighthouse\non a cliff at dusk, oil painting"  '
    assert clean_rewrite(raw, 200) == "A tall red lighthouse on a cliff at dusk, oil painting"
    assert clean_rewrite("one two three four", 12) == "one two"  # cut at a word boundary
    assert clean_rewrite("\x07\x1b[0m  ", 50) == ""
