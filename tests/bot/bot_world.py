"""Helpers for the bot tests: the real bot (JanusBot, real engine workers on the tiny model, a real
SQLite file) against the emulator.

One world per test module: the emulator, a guild with channels and users, and a started bot given an
engine and a store opened exactly as ``janus-bot run``'s launcher opens them. Starting the engine costs
a few seconds (worker processes import torch), so tests in a module share it; each test uses its own
users or channel so their memories and limits do not mix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.app import JanusBot
from bot.config import BotConfig
from bot.store import Store
from bot.tokens import load_model_facts
from discord_emulator import Channel, DiscordEmulator, Guild, User
from janus_engine.client import LocalEngine
from janus_engine.engine import JanusEngine

STEP_DELAY_S = 0.12  # tiny-model jobs last ~2 s, so progress, queueing and cancelling are observable


def is_result(msg: Any) -> bool:
    """An /imagine result: images with their Re-roll button (progress messages carry previews too)."""
    return bool(msg.attachments) and any(cid.startswith("janus:reroll:") for cid in msg.custom_ids())


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return "'" + v + "'"  # a TOML literal string: backslashes in regexes stay as they are
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def write_toml(path: Path, doc: dict[str, dict[str, Any]]) -> None:
    """A config file for the bot to load and /admin reload (tomllib only reads TOML)."""
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def config_doc(
    tiny_model_dir: Path, db_path: Path, guild_id: int, owner_id: int, **overrides: Any
) -> dict[str, dict[str, Any]]:
    doc: dict[str, Any] = {
        "discord": {"guild_ids": [guild_id], "owners": [owner_id]},
        "model": {
            "model": str(tiny_model_dir),
            "devices": ["cpu"],
            "torch_threads": 1,
            "local_files_only": True,
        },
        "engine": {
            "max_queue": 8,
            "max_queued_per_user": 2,
            "max_running_per_user": 2,
            "max_images_per_batch": 4,
            "job_timeout_s": 60,
            "worker_start_timeout_s": 120,
            "preview_every": 4,
        },
        "generation": {"max_count": 4},
        "understanding": {"max_new_tokens": 12, "temperature": 0.0, "max_upload_bytes": 200_000},
        "memory": {"context_token_budget": 600},
        "limits": {"imagine_cooldown_s": 0, "chat_cooldown_s": 0},
        "access": {"blocked_prompt_patterns": [r"\bforbidden\b"]},
        "database": {"url": f"sqlite+aiosqlite:///{db_path}"},
    }
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    return doc


@dataclass
class BotWorld:
    emu: DiscordEmulator
    guild: Guild
    general: Channel
    users: dict[str, User]
    owner: User
    manager: User
    config: BotConfig
    tmp: Path
    doc: dict[str, dict[str, Any]] = field(default_factory=dict)  # what config.toml holds
    bot: JanusBot | None = None
    task: asyncio.Task[None] | None = None
    store: Store | None = None
    engine: LocalEngine | None = None
    submitted: list[Any] = field(default_factory=list)  # requests the engine accepted, in order

    def user(self, name: str) -> User:
        """A fresh member of the guild (isolated memories, cooldowns and limits per test)."""
        if name not in self.users:
            self.users[name] = self.emu.add_user(name)
            self.emu.add_member(self.guild, self.users[name])
        return self.users[name]

    def channel(self, name: str, **kwargs: Any) -> Channel:
        return self.emu.add_channel(self.guild, name, **kwargs)

    def set_limits(self, **changes: Any) -> None:
        """Change limits at runtime the way /admin reload would."""
        assert self.bot is not None
        limits = dataclasses.replace(self.bot.config.limits, **changes)
        self.bot.config = dataclasses.replace(self.bot.config, limits=limits)
        self.bot.limiter.update(limits)

    async def start_bot(self) -> JanusBot:
        # What `janus-bot run`'s launcher does: open the store, start the engine, pass both in.
        facts = load_model_facts(self.config)
        self.store = await Store.open(self.config.database.url, count_tokens=facts.count_tokens)
        self.engine = LocalEngine(
            JanusEngine(dataclasses.replace(self.config.engine_config(), step_delay_s=STEP_DELAY_S))
        )
        await self.engine.start()
        bot = JanusBot(
            self.config,
            store=self.store,
            engine=self.engine,
            facts=facts,
            install_signal_handlers=True,  # SIGHUP -> reload, as under `janus-bot run`
            guild_ready_timeout=0.05,
        )
        task = asyncio.create_task(bot.start(self.emu.bot_token))
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
            raise RuntimeError("the bot stopped while starting")
        assert done, "the bot did not become ready"
        self.bot, self.task = bot, task
        real_submit = bot.engine.submit

        async def recording_submit(request: Any, *, user_id: str) -> Any:
            """A spy, not a mock: the real engine runs every request; tests read what the model was sent."""
            handle = await real_submit(request, user_id=user_id)
            self.submitted.append(request)
            return handle

        bot.engine.submit = recording_submit  # type: ignore[method-assign]
        return bot

    async def stop_bot(self) -> None:
        if self.bot is not None:
            await self.bot.close()
            assert self.task is not None
            await asyncio.wait_for(self.task, 60)
        if self.engine is not None:
            await self.engine.stop()
        if self.store is not None:
            await self.store.close()
        self.bot = self.task = None
        self.store, self.engine = None, None

    async def run(self, user: User, channel: Channel, name: str, **options: Any):
        itx = await self.emu.slash(user, channel, name, **options)
        await itx.wait_response()
        assert not itx.failed, itx.failure
        return itx

    async def final(self, itx: Any, predicate: Callable[[Any], bool], timeout: float = 30.0):
        """The interaction's original response once ``predicate`` holds for it."""

        def check():
            msg = itx.original
            return msg if msg is not None and not msg.loading and predicate(msg) else None

        return await self.emu.wait_for(
            check, timeout=timeout, message=f"final message of {itx.payload.get('data')}"
        )


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll an async check until it returns something truthy (the bot writes the store after posting)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.05)


async def finished_job(bot: JanusBot, job_id: str) -> Any:
    """The job's record once it reached a terminal status (the bot records it right after posting)."""

    async def check() -> Any:
        job = await bot.store.get_job(job_id)
        return job if job is not None and job.status.is_terminal else None

    return await eventually(check)


async def finished_jobs(bot: JanusBot, user_id: int, count: int) -> list[Any]:
    async def check() -> Any:
        jobs = await bot.store.list_jobs(user_id=user_id)
        return jobs if len(jobs) >= count and all(j.status.is_terminal for j in jobs) else None

    return await eventually(check)
