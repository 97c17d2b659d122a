"""Secrets: after every other part ran with the bot at DEBUG, the bot token must appear nowhere (its log
file, its console, every Discord message and every earlier revision of one, the database, what
`janus-bot check` prints); interaction tokens (each lets its holder edit the bot's answer for 15 minutes)
must not be logged either; and no message the bot showed a user carries a file path or a stack frame.

It runs last, so it reads what the load, faults, crash, isolation and hostile-input parts caused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.soak.figures import Figure
from benchmarks.soak.outcomes import leaks_internals
from benchmarks.soak.world import REPO, TOKEN_ENV, SoakWorld


def _bot_texts(world: SoakWorld) -> list[str]:
    """Every text the bot posted, with every revision an edit replaced."""
    texts = []
    bot_id = world.emu.bot_user.id
    for message in world.emu.world.messages.values():
        if message.author.id != bot_id:
            continue
        texts.append(str(message.content or ""))
        texts += [str(r.content or "") for r in message.revisions]
    return texts


def _files(world: SoakWorld) -> dict[str, bytes]:
    found = {}
    for path in (world.log_path, world.console_path, world.db_path, Path(f"{world.db_path}-wal")):
        if path.exists():
            found[path.name] = path.read_bytes()
    return found


async def _wrong_token_run(world: SoakWorld) -> tuple[bool, bool]:
    """`janus-bot run` with a token the emulator refuses: (the token echoed, a clear exit)."""
    import asyncio

    from benchmarks.soak.world import RUN_SCRIPT, STEP_DELAY_S

    wrong = "soak.wrong-" + "x" * 40
    args = [RUN_SCRIPT, world.emu.api_base, world.emu.gateway_url, str(STEP_DELAY_S)]
    args += ["run", "--config", str(world.config_path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", *args, cwd=REPO, env={**os.environ, TOKEN_ENV: wrong},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    clear = proc.returncode not in (0, None) and "token" in text.lower() and "Traceback" not in text
    return wrong in text, clear


async def secrets_part(world: SoakWorld) -> list[Figure]:
    token = world.emu.bot_token
    env = {**os.environ, TOKEN_ENV: token}
    check = subprocess.run(
        [sys.executable, "-m", "bot.cli", "check", "--config", str(world.config_path)],
        cwd=REPO, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    files = _files(world)
    files["janus-bot check"] = check.stdout + check.stderr
    texts = _bot_texts(world)
    where = [name for name, data in files.items() if token.encode() in data]
    where += ["a Discord message"] * sum(token in t for t in texts)
    logs = files.get(world.log_path.name, b"") + files.get(world.console_path.name, b"")
    itx_tokens = [i.token for i in world.emu.interactions if i.token.encode() in logs]
    internals = [t for t in texts if leaks_internals(t)]
    wrong_token, refused = await _wrong_token_run(world)
    log_lines = logs.count(b"\n")
    return [
        Figure("secrets", "log lines read (bot at DEBUG)", log_lines),
        Figure("secrets", "messages read (with every revision)", len(texts)),
        Figure("secrets", "bot token found", len(where), must=0, detail=", ".join(where)),
        Figure("secrets", "interaction tokens in the logs", len(itx_tokens), must=0),
        Figure("secrets", "a token Discord refuses: echoed in the output", wrong_token, must=False),
        Figure("secrets", "a token Discord refuses: the bot exits saying so", refused, must=True),
        Figure(
            "secrets",
            "messages with a file path or stack frame",
            len(internals),
            must=0,
            detail="; ".join(repr(t[:100]) for t in internals[:3]),
        ),
    ]
