"""Two bot processes (`janus-bot run`, shards 0 and 1 of 2) sharing one database against the emulator:
each answers only its own shard's guilds, a cooldown earned on one shard holds on the other, and each
job row names the process that made it (so a restart closes only its own: tests/store).

The processes are real (the CLI in a child process each, with its own engine worker on the tiny model);
the database is PostgreSQL when the test server runs (what several processes should use), else a SQLite
file (which several processes on one host may share too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from bot.store import Store
from discord_emulator import DiscordEmulator
from tests.bot.bot_world import config_doc, write_toml
from tests.bot.cli_process import RUN_SCRIPT
from tests.postgres_support import POSTGRES_URL_VAR, fresh_database

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "JANUS_SHARD_TEST_TOKEN"


@contextlib.contextmanager
def shared_database(tmp_path: Path) -> Iterator[str]:
    if not os.environ.get(POSTGRES_URL_VAR):
        yield f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        return
    with fresh_database() as url:
        yield url


@contextlib.asynccontextmanager
async def bot_process(
    config: Path, emu: DiscordEmulator, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, TOKEN_ENV: emu.bot_token}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RUN_SCRIPT, emu.api_base, emu.gateway_url, "run", "--config", str(config),
            cwd=REPO, env=env, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # the bot's own clean shutdown
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _ephemeral_text(emu: DiscordEmulator, itx) -> str:
    msg = await emu.wait_for(
        lambda: next((m for m in [itx.original, *itx.followups] if m and m.ephemeral and m.content), None)
    )
    return str(msg.content)


async def test_two_shard_processes_share_the_database_and_split_the_guilds(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    async with DiscordEmulator(bot_token="shard-token") as emu:
        guild_a = emu.add_guild("A", on_shard=(0, 2))
        guild_b = emu.add_guild("B", on_shard=(1, 2))
        chan_a, chan_b = emu.add_channel(guild_a), emu.add_channel(guild_b)
        fay, gus = emu.add_user("fay"), emu.add_user("gus")
        for guild in (guild_a, guild_b):
            emu.add_member(guild, fay)
            emu.add_member(guild, gus)
        with shared_database(tmp_path) as url:
            configs = []
            for shard in (0, 1):
                doc = config_doc(
                    tiny_model_dir,
                    tmp_path / "unused.db",
                    guild_a.id,
                    emu.owner.id,
                    discord={"token_env": TOKEN_ENV, "guild_ids": [], "shard_count": 2, "shard_ids": [shard]},
                    limits={"imagine_cooldown_s": 600.0},
                    database={"url": url},
                )
                configs.append(tmp_path / f"shard{shard}.toml")
                write_toml(configs[-1], doc)
            async with (
                bot_process(configs[0], emu, tmp_path / "shard0.log") as first,
                bot_process(configs[1], emu, tmp_path / "shard1.log") as second,
            ):

                def both_ready():
                    ready = [s for s in emu.sessions if s.ready.is_set()]
                    if first.returncode is not None or second.returncode is not None:
                        raise AssertionError("a bot process exited: " + _logs(tmp_path))
                    return len(ready) == 2 and emu.synced_commands() and ready

                sessions = await emu.wait_for(both_ready, timeout=120, message="two shard sessions")
                assert sorted(s.shard for s in sessions) == [(0, 2), (1, 2)]
                assert len(emu.command_syncs) == 1  # shard 0's process synced; shard 1's did not repeat it

                # fay draws in guild A (shard 0's process) ...
                drawn = await emu.slash(fay, chan_a, "imagine", prompt="a red cube")
                await drawn.wait_response()
                assert not drawn.failed, drawn.failure
                # ... and the cooldown she earned there holds in guild B, which the other process serves.
                again = await emu.slash(fay, chan_b, "imagine", prompt="a red cube")
                await again.wait_response()
                assert "Slow down" in await _ephemeral_text(emu, again)
                # gus, in guild B, is served by shard 1's process.
                other = await emu.slash(gus, chan_b, "imagine", prompt="a blue sphere")
                await other.wait_response()
                assert not other.failed, other.failure

                async with await Store.open(url, upgrade=False) as store:

                    async def owners() -> dict[int, list[str | None]]:
                        jobs = await store.list_jobs()
                        return {u: [j.owner for j in jobs if j.user_id == u] for u in (fay.id, gus.id)}

                    async with asyncio.timeout(30):
                        while not all((seen := await owners()).values()):
                            await asyncio.sleep(0.1)
                    assert seen == {fay.id: ["shards 0 of 2"], gus.id: ["shards 1 of 2"]}
            # Both ran to the end of the test (SIGINT is their clean stop: 130, as for Ctrl-C).
            assert first.returncode in (0, 130) and second.returncode in (0, 130), _logs(tmp_path)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in tmp_path.glob("*.log"))
