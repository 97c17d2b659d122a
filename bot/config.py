"""The bot's configuration: one TOML file read in one place, validated into frozen dataclasses.

Why frozen dataclasses and a hand-written reader: every key is known, typed and range-checked at start,
and a bad key is reported by its dotted name with the reason ("limits.imagine_cooldown_s: must be >= 0,
got -1"), so an operator never meets a stack trace or a silently ignored typo (unknown keys are errors).
The bot token itself never lives in the file: ``discord.token_env`` names the environment variable that
holds it, and :meth:`BotConfig.read_token` is the only place the bot reads the environment.

Reload (``/admin reload``, SIGHUP) calls :func:`load_config` again; if that raises, the caller keeps the
old object, so an invalid edit never takes a running bot down. Which sections apply without a restart is
listed by :func:`restart_required_changes`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Conversation memory scopes (bot.store.ConversationScope): "user" = each user has their own conversation
# per channel; "shared" = everyone in a channel shares one. Direct messages are always per user.
MEMORY_SCOPES = ("user", "shared")
NSFW_POLICIES = ("nsfw_channels_only", "allow", "block")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIB = 1024 * 1024
# Prompts matching these count as NSFW for access.nsfw_policy (Janus has no image classifier of its own).
DEFAULT_NSFW_PATTERNS = (
    r"\bnsfw\b",
    r"\bnud(e|es|ity)\b",
    r"\bnaked\b",
    r"\bporn",
    r"\bexplicit\b",
    r"\bsex(ual|y)?\b",
)
_DEFAULT_NSFW = tuple(re.compile(p, re.IGNORECASE) for p in DEFAULT_NSFW_PATTERNS)


class ConfigError(Exception):
    """The configuration file is missing, unreadable or has a bad key; the message names the key and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


@dataclass(frozen=True)
class DiscordSection:
    token_env: str = "DISCORD_TOKEN"
    guild_ids: tuple[int, ...] = ()  # guild-scoped command sync (instant); empty = global sync
    owners: tuple[int, ...] = ()  # user ids allowed to run /admin
    message_content_intent: bool = False  # privileged; needed only to read reply chains / plain messages
    respond_to_mentions: bool = True


@dataclass(frozen=True)
class ModelSection:
    model: str = "deepseek-community/Janus-Pro-7B"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    devices: tuple[str, ...] = ("cuda:0",)
    local_files_only: bool = False
    cache_dir: str | None = None
    attn_implementation: str | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class EngineSection:
    max_queue: int = 64
    max_queued_per_user: int = 4
    max_running_per_user: int = 2
    max_images_per_batch: int = 16
    max_understand_batch: int = 8
    batch_window_s: float = 0.05
    job_timeout_s: float = 600.0
    worker_start_timeout_s: float = 600.0
    preview_every: int = 96  # decoding steps between preview images; 0 = none


@dataclass(frozen=True)
class GenerationSection:
    default_count: int = 1
    max_count: int = 4
    default_guidance: float = 5.0
    min_guidance: float = 1.1
    max_guidance: float = 15.0
    default_temperature: float = 1.0
    max_temperature: float = 2.0
    max_prompt_chars: int = 1000


@dataclass(frozen=True)
class UnderstandingSection:
    temperature: float = 0.1
    top_p: float = 0.95
    max_new_tokens: int = 512
    default_question: str = "Describe this image in detail."
    max_images_per_message: int = 4
    max_upload_bytes: int = 8 * _MIB
    max_image_pixels: int = 4096 * 4096
    allowed_content_types: tuple[str, ...] = (
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
        "image/bmp",
    )
    max_message_chars: int = 2000


@dataclass(frozen=True)
class MemorySection:
    default_scope: Literal["user", "shared"] = "user"
    context_token_budget: int = 3000
    retention_days: int = 30  # 0 = keep forever
    tokenizer_path: str | None = None  # tokenizer.json for exact counts; None = look beside the model


@dataclass(frozen=True)
class LimitsSection:
    imagine_cooldown_s: float = 10.0
    chat_cooldown_s: float = 2.0
    images_per_user_per_day: int = 100  # 0 = unlimited
    messages_per_user_per_day: int = 500  # 0 = unlimited


@dataclass(frozen=True)
class AccessSection:
    allowed_guilds: tuple[int, ...] = ()  # empty = any guild
    allowed_channels: tuple[int, ...] = ()  # empty = any channel (servers can still disable channels)
    allowed_roles: tuple[int, ...] = ()  # empty = anyone; else the user needs one of these roles
    blocked_users: tuple[int, ...] = ()
    blocked_prompt_patterns: tuple[re.Pattern[str], ...] = ()
    nsfw_prompt_patterns: tuple[re.Pattern[str], ...] = _DEFAULT_NSFW
    allow_dms: bool = True
    nsfw_policy: Literal["nsfw_channels_only", "allow", "block"] = "nsfw_channels_only"


@dataclass(frozen=True)
class DatabaseSection:
    url: str = "sqlite+aiosqlite:///janus-bot.db"


@dataclass(frozen=True)
class LoggingSection:
    level: str = "INFO"
    file: str | None = None


@dataclass(frozen=True)
class UISection:
    progress_interval_s: float = 1.0  # at most one progress edit per this many seconds (rate limits)
    progress_bar_width: int = 20


@dataclass(frozen=True)
class BotConfig:
    """The whole configuration. ``source`` is the file it came from (for reload)."""

    discord: DiscordSection = field(default_factory=DiscordSection)
    model: ModelSection = field(default_factory=ModelSection)
    engine: EngineSection = field(default_factory=EngineSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    understanding: UnderstandingSection = field(default_factory=UnderstandingSection)
    memory: MemorySection = field(default_factory=MemorySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    access: AccessSection = field(default_factory=AccessSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    ui: UISection = field(default_factory=UISection)
    source: Path | None = None

    def read_token(self, environ: dict[str, str] | None = None) -> str:
        """The token from the environment variable the config names (never from the file, never logged)."""
        env = os.environ if environ is None else environ
        token = env.get(self.discord.token_env, "").strip()
        if not token:
            raise ConfigError(
                f"discord.token_env: the environment variable {self.discord.token_env} is empty or unset; "
                f"export your bot token there (it is never read from the config file)"
            )
        return token

    def engine_config(self):  # -> janus_engine.config.EngineConfig (imported lazily: no torch either way)
        """Map the model and engine sections onto the engine's own config object."""
        from janus_engine.config import EngineConfig
        from janus_engine.protocol import ModelSpec

        spec = ModelSpec(
            model=self.model.model,
            device=self.model.devices[0],
            dtype=self.model.dtype,
            attn_implementation=self.model.attn_implementation,
            local_files_only=self.model.local_files_only,
            cache_dir=self.model.cache_dir,
            torch_threads=self.model.torch_threads,
        )
        e = self.engine
        return EngineConfig(
            model=spec,
            devices=self.model.devices,
            max_queue=e.max_queue,
            max_queued_per_user=e.max_queued_per_user,
            max_running_per_user=e.max_running_per_user,
            max_images_per_batch=e.max_images_per_batch,
            max_understand_batch=e.max_understand_batch,
            batch_window_s=e.batch_window_s,
            job_timeout_s=e.job_timeout_s,
            worker_start_timeout_s=e.worker_start_timeout_s,
            preview_every=e.preview_every,
        )


# ---- reading ---------------------------------------------------------------------------------------------


class _Section:
    """Reads one TOML table key by key, so each error names ``section.key``; unknown keys are errors."""

    def __init__(self, name: str, data: Any) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: must be a table ([{name}]), got {type(data).__name__}")
        self.name = name
        self.data = data
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def _err(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.name}.{key}: {why}")

    def int(self, key: str, default: int | None, *, lo: int | None = None, hi: int | None = None) -> Any:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._err(key, f"must be an integer, got {v!r}")
        return self._range(key, v, lo, hi)

    def float(self, key: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._err(key, f"must be a number, got {v!r}")
        return float(self._range(key, v, lo, hi))

    def _range(self, key: str, v: Any, lo: Any, hi: Any) -> Any:
        if lo is not None and v < lo:
            raise self._err(key, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise self._err(key, f"must be <= {hi}, got {v}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._err(key, f"must be true or false, got {v!r}")
        return v

    def str(
        self, key: str, default: Any, *, choices: Iterable[str] | None = None, empty_is_none: bool = False
    ) -> Any:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._err(key, f"must be a string, got {v!r}")
        if empty_is_none and not v.strip():
            return None
        if choices is not None and v not in tuple(choices):
            raise self._err(key, f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def strs(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._err(key, f"must be a list of strings, got {v!r}")
        return tuple(v)

    def ids(self, key: str) -> tuple[int, ...]:
        """Discord snowflakes: integers or strings of digits (strings survive tools that mangle big ints)."""
        v = self._get(key)
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self._err(key, f"must be a list of Discord ids, got {v!r}")
        out = []
        for x in v:
            if isinstance(x, str) and x.strip().isdigit():
                x = int(x.strip())
            if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
                raise self._err(key, f"must be a list of Discord ids (positive integers), got {x!r}")
            out.append(x)
        return tuple(out)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._err(unknown[0], "unknown key (check the spelling against config.example.toml)")


def _patterns(sec: _Section, key: str, default: tuple[str, ...] = ()) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, pat in enumerate(sec.strs(key, default)):
        try:
            out.append(re.compile(pat, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(f"{sec.name}.{key}[{i}]: invalid regular expression {pat!r}: {exc}") from None
    return tuple(out)


def parse_config(data: dict[str, Any], *, source: Path | None = None) -> BotConfig:
    """Validate a parsed TOML document; raises ConfigError naming the first bad key."""
    known = {
        "discord",
        "model",
        "engine",
        "generation",
        "understanding",
        "memory",
        "limits",
        "access",
        "database",
        "logging",
        "ui",
    }
    for top in data:
        if top not in known:
            raise ConfigError(f"{top}: unknown section (known: {', '.join(sorted(known))})")

    s = _Section("discord", data.get("discord"))
    token_env = s.str("token_env", "DISCORD_TOKEN")
    if not _ENV_NAME_RE.match(token_env):
        raise ConfigError(
            "discord.token_env: must be the NAME of an environment variable (like DISCORD_TOKEN), "
            "not the token itself"
        )
    discord_ = DiscordSection(
        token_env=token_env,
        guild_ids=s.ids("guild_ids"),
        owners=s.ids("owners"),
        message_content_intent=s.bool("message_content_intent", False),
        respond_to_mentions=s.bool("respond_to_mentions", True),
    )
    s.finish()

    s = _Section("model", data.get("model"))
    devices = s.strs("devices", ModelSection.devices)
    if not devices:
        raise ConfigError('model.devices: needs at least one device ("cuda:0", "cpu")')
    for d in devices:
        if not _DEVICE_RE.match(d):
            raise ConfigError(f"model.devices: {d!r} is not a device (use cpu, cuda or cuda:N)")
    if len(set(devices)) != len(devices) and "cpu" not in devices:
        raise ConfigError("model.devices: a GPU is listed twice (one worker per GPU)")
    model_name = s.str("model", ModelSection.model)
    if not model_name.strip():
        raise ConfigError("model.model: must be a hub id or a local directory, got an empty string")
    model = ModelSection(
        model=model_name,
        dtype=s.str("dtype", "auto", choices=DTYPES),
        devices=devices,
        local_files_only=s.bool("local_files_only", False),
        cache_dir=s.str("cache_dir", None, empty_is_none=True),
        attn_implementation=s.str("attn_implementation", None, empty_is_none=True),
        torch_threads=s.int("torch_threads", None, lo=1, hi=256),
    )
    s.finish()

    s = _Section("engine", data.get("engine"))
    engine = EngineSection(
        max_queue=s.int("max_queue", 64, lo=1, hi=100_000),
        max_queued_per_user=s.int("max_queued_per_user", 4, lo=1, hi=1000),
        max_running_per_user=s.int("max_running_per_user", 2, lo=1, hi=1000),
        max_images_per_batch=s.int("max_images_per_batch", 16, lo=1, hi=64),
        max_understand_batch=s.int("max_understand_batch", 8, lo=1, hi=64),
        batch_window_s=s.float("batch_window_s", 0.05, lo=0.0, hi=10.0),
        job_timeout_s=s.float("job_timeout_s", 600.0, lo=1.0, hi=86_400.0),
        worker_start_timeout_s=s.float("worker_start_timeout_s", 600.0, lo=1.0, hi=86_400.0),
        preview_every=s.int("preview_every", 96, lo=0, hi=10_000),
    )
    s.finish()

    s = _Section("generation", data.get("generation"))
    max_count = s.int("max_count", 4, lo=1, hi=10)  # Discord: at most 10 files a message
    gen = GenerationSection(
        default_count=s.int("default_count", 1, lo=1, hi=10),
        max_count=max_count,
        default_guidance=s.float("default_guidance", 5.0, lo=1.0001, hi=100.0),
        min_guidance=s.float("min_guidance", 1.1, lo=1.0001, hi=100.0),
        max_guidance=s.float("max_guidance", 15.0, lo=1.0001, hi=100.0),
        default_temperature=s.float("default_temperature", 1.0, lo=0.0, hi=10.0),
        max_temperature=s.float("max_temperature", 2.0, lo=0.0, hi=10.0),
        max_prompt_chars=s.int("max_prompt_chars", 1000, lo=1, hi=4000),
    )
    s.finish()
    if gen.default_count > gen.max_count:
        raise ConfigError(
            f"generation.default_count: must be <= max_count ({gen.max_count}), got {gen.default_count}"
        )
    if gen.max_count > engine.max_images_per_batch:
        raise ConfigError(
            f"generation.max_count: must be <= engine.max_images_per_batch ({engine.max_images_per_batch})"
        )
    if not gen.min_guidance <= gen.default_guidance <= gen.max_guidance:
        raise ConfigError("generation.default_guidance: must lie between min_guidance and max_guidance")
    if gen.default_temperature > gen.max_temperature:
        raise ConfigError("generation.default_temperature: must be <= max_temperature")

    s = _Section("understanding", data.get("understanding"))
    types = s.strs("allowed_content_types", UnderstandingSection.allowed_content_types)
    for t in types:
        if not t.startswith("image/"):
            raise ConfigError(f"understanding.allowed_content_types: {t!r} is not an image/* type")
    und = UnderstandingSection(
        temperature=s.float("temperature", 0.1, lo=0.0, hi=10.0),
        top_p=s.float("top_p", 0.95, lo=0.01, hi=1.0),
        max_new_tokens=s.int("max_new_tokens", 512, lo=1, hi=4096),
        default_question=s.str("default_question", UnderstandingSection.default_question),
        max_images_per_message=s.int("max_images_per_message", 4, lo=1, hi=10),
        max_upload_bytes=s.int("max_upload_bytes", 8 * _MIB, lo=1024, hi=500 * _MIB),
        max_image_pixels=s.int("max_image_pixels", 4096 * 4096, lo=64 * 64, hi=20000 * 20000),
        allowed_content_types=types,
        max_message_chars=s.int("max_message_chars", 2000, lo=1, hi=4000),
    )
    s.finish()

    s = _Section("memory", data.get("memory"))
    mem = MemorySection(
        default_scope=s.str("default_scope", "user", choices=MEMORY_SCOPES),
        context_token_budget=s.int("context_token_budget", 3000, lo=256, hi=1_000_000),
        retention_days=s.int("retention_days", 30, lo=0, hi=36_500),
        tokenizer_path=s.str("tokenizer_path", None, empty_is_none=True),
    )
    s.finish()
    if mem.context_token_budget + und.max_new_tokens > 1_000_000:
        raise ConfigError("memory.context_token_budget: too large")

    s = _Section("limits", data.get("limits"))
    limits = LimitsSection(
        imagine_cooldown_s=s.float("imagine_cooldown_s", 10.0, lo=0.0, hi=86_400.0),
        chat_cooldown_s=s.float("chat_cooldown_s", 2.0, lo=0.0, hi=86_400.0),
        images_per_user_per_day=s.int("images_per_user_per_day", 100, lo=0),
        messages_per_user_per_day=s.int("messages_per_user_per_day", 500, lo=0),
    )
    s.finish()

    s = _Section("access", data.get("access"))
    access = AccessSection(
        allowed_guilds=s.ids("allowed_guilds"),
        allowed_channels=s.ids("allowed_channels"),
        allowed_roles=s.ids("allowed_roles"),
        blocked_users=s.ids("blocked_users"),
        blocked_prompt_patterns=_patterns(s, "blocked_prompt_patterns"),
        nsfw_prompt_patterns=_patterns(s, "nsfw_prompt_patterns", DEFAULT_NSFW_PATTERNS),
        allow_dms=s.bool("allow_dms", True),
        nsfw_policy=s.str("nsfw_policy", "nsfw_channels_only", choices=NSFW_POLICIES),
    )
    s.finish()

    s = _Section("database", data.get("database"))
    url = s.str("url", DatabaseSection.url)
    if "://" not in url:
        raise ConfigError(
            f"database.url: must be an SQLAlchemy URL like sqlite+aiosqlite:///janus-bot.db, got {url!r}"
        )
    s.finish()
    if source is not None and url.startswith("sqlite") and ":///" in url:
        # A relative SQLite path is relative to the config file, not to wherever the bot was started.
        scheme, path = url.split(":///", 1)
        if path and not path.startswith("/") and path != ":memory:":
            url = f"{scheme}:///{(source.parent / path).resolve()}"
    database = DatabaseSection(url=url)

    s = _Section("logging", data.get("logging"))
    level = s.str("level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"logging.level: must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
    logging_ = LoggingSection(level=level, file=s.str("file", None, empty_is_none=True))
    s.finish()

    s = _Section("ui", data.get("ui"))
    ui = UISection(
        progress_interval_s=s.float("progress_interval_s", 1.0, lo=1.0, hi=60.0),
        progress_bar_width=s.int("progress_bar_width", 20, lo=5, hi=60),
    )
    s.finish()

    return BotConfig(
        discord=discord_,
        model=model,
        engine=engine,
        generation=gen,
        understanding=und,
        memory=mem,
        limits=limits,
        access=access,
        database=database,
        logging=logging_,
        ui=ui,
        source=source,
    )


def load_config(path: str | Path) -> BotConfig:
    """Read and validate a TOML config file. Raises ConfigError (never anything else) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} not found; copy config.example.toml to {p.name} and edit it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {p}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
    return parse_config(data, source=p.resolve())


# Sections whose changes only take effect after a restart (they shape processes and connections).
_RESTART_SECTIONS = ("model", "engine", "database")


def restart_required_changes(old: BotConfig, new: BotConfig) -> list[str]:
    """Names of changed sections/keys that a reload cannot apply to the running bot."""
    changed = [name for name in _RESTART_SECTIONS if getattr(old, name) != getattr(new, name)]
    if old.discord.token_env != new.discord.token_env:
        changed.append("discord.token_env")
    if old.discord.guild_ids != new.discord.guild_ids:
        changed.append("discord.guild_ids")
    if old.discord.message_content_intent != new.discord.message_content_intent:
        changed.append("discord.message_content_intent")
    if old.logging.file != new.logging.file:
        changed.append("logging.file")
    if old.memory.tokenizer_path != new.memory.tokenizer_path:
        changed.append("memory.tokenizer_path")
    return changed
