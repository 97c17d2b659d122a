"""The soak's world: the emulator in this process, the real bot (`janus-bot run`) in a child process.

The bot runs exactly as an operator starts it (its own engine workers on the tiny model, a SQLite file
migrated by Alembic, a log file at DEBUG), pointed at the emulator over loopback, so the soak can SIGKILL
it, kill its workers and read everything it wrote: the Discord messages (the emulator's state), the
database (read-only, beside the bot) and the log.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from discord_emulator import Channel, DiscordEmulator, Guild, Interaction, User
from tests.bot.bot_world import config_doc, write_toml

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "JANUS_SOAK_TOKEN"
STEP_DELAY_S = 0.08  # per decoding step: a tiny-model image job lasts ~1.5 s, like a small real one

# python -c RUN_SCRIPT API_BASE GATEWAY_URL STEP_DELAY janus-bot-args...: tests/bot/cli_process.py's
# runner (the CLI's main() pointed at the emulator), plus the engine's test aid ``step_delay_s`` so that a
# tiny-model job lasts long enough to be queued behind, killed mid-way and cancelled, as a real one is.
RUN_SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    from bot.config import BotConfig
    from discord_emulator import configure_client
    from bot.cli import main
    delay = float(sys.argv[3])
    real = BotConfig.engine_config
    BotConfig.engine_config = lambda self: dataclasses.replace(real(self), step_delay_s=delay)
    with configure_client(sys.argv[1], sys.argv[2]):
        sys.exit(main(sys.argv[4:]))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def soak_config(tiny_model_dir: Path, tmp: Path, guild: Guild, owner: User, port: int) -> dict[str, Any]:
    """The bot's config.toml: the tests' config (bot_world.config_doc) at DEBUG with a log file, status
    HTTP on, a queue small enough that a burst of 200 meets it, and the caps the load part exercises."""
    return config_doc(
        tiny_model_dir,
        tmp / "soak.db",
        guild.id,
        owner.id,
        discord={"token_env": TOKEN_ENV},
        engine={
            "max_queue": 24,
            "max_queued_per_user": 2,
            "max_running_per_user": 2,
            "max_images_per_batch": 4,
            "job_timeout_s": 90,
            "preview_every": 8,
        },
        understanding={"max_new_tokens": 8, "temperature": 0.0, "max_upload_bytes": 200_000},
        logging={"level": "DEBUG", "file": str(tmp / "bot.log")},
        http={"port": port},
    )


@dataclass
class SoakWorld:
    """One emulator, one guild, the bot process (started, killed, restarted) and what it wrote."""

    emu: DiscordEmulator
    guild: Guild
    channel: Channel
    tmp: Path
    tiny_model_dir: Path
    http_port: int
    config_path: Path
    users: dict[str, User] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    interactions: list[Interaction] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.tmp / "soak.db"

    @property
    def log_path(self) -> Path:
        return self.tmp / "bot.log"

    @property
    def console_path(self) -> Path:
        return self.tmp / "console.log"

    def user(self, name: str) -> User:
        if name not in self.users:
            self.users[name] = self.emu.add_user(name)
            self.emu.add_member(self.guild, self.users[name])
        return self.users[name]

    # ---- the bot process -----------------------------------------------------------------------------

    async def start_bot(self, timeout: float = 180.0) -> None:
        """Start `janus-bot run` and wait until its gateway session is ready (engine started, jobs of a
        previous run closed, commands synced: all of that happens before it connects)."""
        ready_before = sum(1 for s in self.emu.sessions if s.ready.is_set())
        env = {**os.environ, TOKEN_ENV: self.emu.bot_token}
        args = [RUN_SCRIPT, self.emu.api_base, self.emu.gateway_url, str(STEP_DELAY_S)]
        args += ["run", "--config", str(self.config_path)]
        with self.console_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", *args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1
        proc = self.proc

        def ready() -> bool | None:
            if proc.returncode is not None:
                raise RuntimeError(f"the bot exited ({proc.returncode}):\n{self.console_tail()}")
            return sum(1 for s in self.emu.sessions if s.ready.is_set()) > ready_before or None

        await self.emu.wait_for(ready, timeout=timeout, message="the bot's gateway session")
        await self.emu.wait_for(lambda: self.emu.synced_commands(self.guild), timeout=timeout)
        await asyncio.sleep(0.3)  # discord.py handles GUILD_CREATE after READY

    async def kill_bot(self) -> None:
        """SIGKILL: no shutdown code runs (its worker processes notice the closed pipe and exit)."""
        assert self.proc is not None
        workers = self.worker_pids()
        self.proc.kill()
        await self.proc.wait()
        await self._wait_gone(workers)
        self.proc = None

    async def stop_bot(self) -> int:
        """SIGINT, the bot's clean stop; returns its exit status."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode

    def worker_pids(self) -> list[int]:
        """The bot's engine workers: its child processes that run multiprocessing's spawn_main (not the
        resource tracker)."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    async def _wait_gone(self, pids: list[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for pid in pids:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                status = Path(f"/proc/{pid}/stat").read_text(errors="replace")
                if status.rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited; reaped by init later
                await asyncio.sleep(0.05)

    def console_tail(self, chars: int = 3000) -> str:
        return self.console_path.read_text(errors="replace")[-chars:] if self.console_path.exists() else ""

    # ---- Discord -------------------------------------------------------------------------------------

    async def slash(self, user: User, command: str, channel: Channel | None = None, **kw: Any) -> Interaction:
        itx = await self.emu.slash(user, channel or self.channel, command, **kw)
        self.interactions.append(itx)
        return itx

    async def press(self, user: User, message: Any, custom_id: str) -> Interaction:
        itx = await self.emu.press_button(user, message, custom_id)
        self.interactions.append(itx)
        return itx

    # ---- what the bot wrote --------------------------------------------------------------------------

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the bot's SQLite file (WAL: it reads beside the bot's writes)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        conn = self.db()
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


async def open_world(tiny_model_dir: Path, tmp: Path) -> tuple[DiscordEmulator, SoakWorld]:
    """The emulator (started; the caller stops it) and a world whose bot is not started yet."""
    emu = await DiscordEmulator(bot_token=f"soak.{secrets.token_urlsafe(32)}").start()
    guild = emu.add_guild("Soak", upload_limit=10 * 1024 * 1024)
    channel = emu.add_channel(guild, "general")
    port = free_port()
    config_path = tmp / "config.toml"
    write_toml(config_path, soak_config(tiny_model_dir, tmp, guild, emu.owner, port))
    mods = emu.add_role(guild, "mods", permissions=discord.Permissions(manage_guild=True))
    world = SoakWorld(emu, guild, channel, tmp, tiny_model_dir, port, config_path)
    manager = emu.add_user("manager")  # manages the server: may use /settings
    emu.add_member(guild, manager, roles=[mods])
    world.users["manager"] = manager
    return emu, world
