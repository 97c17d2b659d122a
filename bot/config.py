"""The bot's configuration: one TOML file read in one place, validated into frozen dataclasses.

Each key is declared once: a dataclass field with its default, and its bounds in the field's metadata
(:func:`setting`). One reader (:func:`_read_section`) walks the fields of a section and checks each key by
its declared type, so every key is known, typed and range-checked at start, and a bad key is reported by
its dotted name with the reason ("limits.imagine_cooldown_s: must be >= 0.0, got -1"): an operator never
meets a stack trace or a silently ignored typo (unknown keys are errors). Checks that span keys follow
the read, written out (:func:`_check_across`). The ``[engine]`` table is the engine's own declaration,
:class:`janus_engine.config.EngineSettings`.

The bot token itself never lives in the file: ``discord.token_env`` names the environment variable that
holds it, and :meth:`BotConfig.read_token` is the only place the bot reads the environment.

Reload (``/admin reload``, SIGHUP) calls :func:`load_config` again; if that raises, the caller keeps the
old object, so an invalid edit never takes a running bot down. Which sections apply without a restart is
listed by :func:`restart_required_changes`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from janus_engine.config import EngineConfig, EngineSettings, not_ray_devices, setting
from janus_engine.devices import DEVICE_FORMS, parse_device
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import DEFAULT_QUESTION, ModelSpec

# Conversation memory scopes (bot.store.ConversationScope): "user" = each user has their own conversation
# per channel; "shared" = everyone in a channel shares one. Direct messages are always per user.
MemoryScope = Literal["user", "shared"]
NsfwPolicy = Literal["nsfw_channels_only", "allow", "block"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
MEMORY_SCOPES: tuple[str, ...] = get_args(MemoryScope)
NSFW_POLICIES: tuple[str, ...] = get_args(NsfwPolicy)
DTYPES: tuple[str, ...] = get_args(Dtype)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
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


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)  # every pattern in the file is case-insensitive


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
    # Sharding, for installs split over several bot processes (docs/scaling.md): 0 = one process serves
    # everything (Discord's default of one shard). Otherwise the total number of shards, and this
    # process's shards (empty = all of them, in this one process).
    shard_count: int = setting(0, lo=0, hi=10_000)
    shard_ids: tuple[int, ...] = setting((), lo=0, hi=9_999)

    @property
    def shards(self) -> tuple[int, ...]:
        """This process's shard ids (``()`` when the bot is not sharded)."""
        return self.shard_ids or tuple(range(self.shard_count))

    @property
    def owner(self) -> str:
        """This process's name among the bot processes sharing a database (the ``owner`` of its jobs):
        "main" unsharded, else its shard set, as ranges ("shards 0-3,8 of 16")."""
        if not self.shard_count:
            from bot.store.base import UNSHARDED_OWNER  # the store's default (the store never imports us)

            return UNSHARDED_OWNER
        name = f"shards {_ranges(self.shards)} of {self.shard_count}"
        if len(name) > 64:  # the column's width; a set this scattered is named by a digest
            name = f"shards #{hashlib.sha256(name.encode()).hexdigest()[:16]} of {self.shard_count}"
        return name


def _ranges(ids: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 8) -> "0-3,8"."""
    out: list[str] = []
    ordered = sorted(set(ids))
    start = prev = ordered[0]
    for x in [*ordered[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


@dataclass(frozen=True)
class ModelSection:
    """The engine's :class:`~janus_engine.protocol.ModelSpec` (whose defaults it takes), with ``devices``
    (one worker each) in place of its single ``device``."""

    model: str = ModelSpec.model
    dtype: Dtype = ModelSpec.dtype
    devices: tuple[str, ...] = ("cuda:0",)
    local_files_only: bool = ModelSpec.local_files_only
    cache_dir: str | None = ModelSpec.cache_dir
    attn_implementation: str | None = ModelSpec.attn_implementation
    torch_threads: int | None = setting(ModelSpec.torch_threads, lo=1, hi=256)


@dataclass(frozen=True)
class GenerationSection:
    default_count: int = setting(1, lo=1, hi=10)
    max_count: int = setting(4, lo=1, hi=10)  # Discord: at most 10 files a message
    default_guidance: float = setting(5.0, lo=1.0001, hi=100.0)
    min_guidance: float = setting(1.1, lo=1.0001, hi=100.0)
    max_guidance: float = setting(15.0, lo=1.0001, hi=100.0)
    default_temperature: float = setting(1.0, lo=0.0, hi=10.0)
    max_temperature: float = setting(2.0, lo=0.0, hi=10.0)
    max_prompt_chars: int = setting(1000, lo=1, hi=4000)
    # /imagine best_of: at most this many candidates, ranked by Janus itself (and at most
    # engine.max_images_per_batch: the candidates are drawn in one batch)
    max_best_of: int = setting(8, lo=2, hi=16)


@dataclass(frozen=True)
class UnderstandingSection:
    temperature: float = setting(0.1, lo=0.0, hi=10.0)
    top_p: float = setting(0.95, lo=0.01, hi=1.0)
    max_new_tokens: int = setting(512, lo=1, hi=4096)
    default_question: str = DEFAULT_QUESTION
    max_images_per_message: int = setting(4, lo=1, hi=10)
    max_upload_bytes: int = setting(8 * _MIB, lo=1024, hi=500 * _MIB)
    max_image_pixels: int = setting(4096 * 4096, lo=64 * 64, hi=20000 * 20000)
    allowed_content_types: tuple[str, ...] = (
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
        "image/bmp",
    )
    max_message_chars: int = setting(2000, lo=1, hi=4000)
    # The assistant's system prompt for /chat, /describe and mentions ("" = Janus-Pro's own default);
    # a server replaces it with /settings persona.
    system_prompt: str = ""


@dataclass(frozen=True)
class MemorySection:
    default_scope: MemoryScope = "user"
    context_token_budget: int = setting(3000, lo=256, hi=1_000_000)
    retention_days: int = setting(30, lo=0, hi=36_500)  # 0 = keep forever
    tokenizer_path: str | None = None  # tokenizer.json for exact counts; None = look beside the model


@dataclass(frozen=True)
class LimitsSection:
    imagine_cooldown_s: float = setting(10.0, lo=0.0, hi=86_400.0)
    chat_cooldown_s: float = setting(2.0, lo=0.0, hi=86_400.0)
    images_per_user_per_day: int = setting(100, lo=0)  # 0 = unlimited
    messages_per_user_per_day: int = setting(500, lo=0)  # 0 = unlimited
    # Members with any of these roles get their daily caps multiplied (patrons, moderators).
    trusted_roles: tuple[int, ...] = ()
    trusted_cap_multiplier: float = setting(5.0, lo=1.0, hi=1000.0)
    # A whole server's uses per UTC day, on top of each member's own cap (0 = unlimited).
    images_per_server_per_day: int = setting(0, lo=0)
    messages_per_server_per_day: int = setting(0, lo=0)


@dataclass(frozen=True)
class AccessSection:
    allowed_guilds: tuple[int, ...] = ()  # empty = any guild
    allowed_channels: tuple[int, ...] = ()  # empty = any channel (servers can still disable channels)
    allowed_roles: tuple[int, ...] = ()  # empty = anyone; else the user needs one of these roles
    blocked_users: tuple[int, ...] = ()
    blocked_prompt_patterns: tuple[re.Pattern[str], ...] = ()
    nsfw_prompt_patterns: tuple[re.Pattern[str], ...] = tuple(_compile(p) for p in DEFAULT_NSFW_PATTERNS)
    allow_dms: bool = True
    nsfw_policy: NsfwPolicy = "nsfw_channels_only"


@dataclass(frozen=True)
class DatabaseSection:
    url: str = "sqlite+aiosqlite:///janus-bot.db"


@dataclass(frozen=True)
class LoggingSection:
    level: str = "INFO"  # one of LOG_LEVELS, in any case in the file
    file: str | None = None


@dataclass(frozen=True)
class UISection:
    # At most one progress edit per this many seconds (Discord rate limits).
    progress_interval_s: float = setting(1.0, lo=1.0, hi=60.0)
    progress_bar_width: int = setting(20, lo=5, hi=60)


@dataclass(frozen=True)
class ModerationSection:
    """Output moderation: Janus answers ``question`` about each generated image before it is posted in a
    channel that is not marked NSFW; an image whose P("Yes") is above ``threshold`` is withheld."""

    enabled: bool = False  # the default of every server (/settings moderation changes it per server)
    question: str = "Is this image sexually explicit, gory or hateful? Answer yes or no."
    threshold: float = setting(0.5, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class HttpSection:
    """The operator's HTTP endpoint (/healthz, /metrics): off (port 0) unless a port is given."""

    port: int = setting(0, lo=0, hi=65_535)
    host: str = "127.0.0.1"  # loopback by default: put a reverse proxy in front to expose it


@dataclass(frozen=True)
class BotConfig:
    """The whole configuration: one field per TOML table. ``source`` is the file it came from (for reload)."""

    discord: DiscordSection = field(default_factory=DiscordSection)
    model: ModelSection = field(default_factory=ModelSection)
    engine: EngineSettings = field(default_factory=EngineSettings)
    generation: GenerationSection = field(default_factory=GenerationSection)
    understanding: UnderstandingSection = field(default_factory=UnderstandingSection)
    memory: MemorySection = field(default_factory=MemorySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    access: AccessSection = field(default_factory=AccessSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    ui: UISection = field(default_factory=UISection)
    moderation: ModerationSection = field(default_factory=ModerationSection)
    http: HttpSection = field(default_factory=HttpSection)
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

    def engine_config(self) -> EngineConfig:
        """The engine's config: the [engine] settings run on the [model] model, one worker per device."""
        same_names = {
            f.name: getattr(self.model, f.name) for f in dataclasses.fields(ModelSpec) if f.name != "device"
        }
        spec = ModelSpec(device=self.model.devices[0], **same_names)
        return EngineConfig.from_settings(self.engine, model=spec, devices=self.model.devices)


# ---- reading ---------------------------------------------------------------------------------------------

S = TypeVar("S")


def _read_section(cls: type[S], name: str, table: Any) -> S:
    """One TOML table read into its section: each key checked by its declared type and bounds, so each
    error names ``section.key``; a key the section does not declare is an error."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table ([{name}]), got {type(table).__name__}")
    declared = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(declared))
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}: unknown key (check the spelling against config.example.toml)"
        )
    hints = get_type_hints(cls)
    values = {key: _value(f"{name}.{key}", v, hints[key], declared[key].metadata) for key, v in table.items()}
    try:
        return cls(**values)
    except InvalidRequest as exc:  # a section's own check across keys (the engine's): "Engine setting K ..."
        key = next((k for k in values if f" {k} " in f" {exc.user_message} "), None)
        raise ConfigError(
            f"{name}.{key}: {exc.user_message}" if key else f"{name}: {exc.user_message}"
        ) from None


def _value(where: str, v: Any, declared: Any, bounds: Any) -> Any:
    """``v`` from the file, checked against the declared type (and bounds); raises ConfigError."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{where}: {why}")

    origin, args = get_origin(declared), get_args(declared)
    if origin is types.UnionType and type(None) in args:  # X | None; in the file, "" means None
        (inner,) = (a for a in args if a is not type(None))
        checked = _value(where, v, inner, bounds)
        return None if isinstance(checked, str) and not checked.strip() else checked
    if declared is bool:
        if not isinstance(v, bool):
            raise bad(f"must be true or false, got {v!r}")
        return v
    if declared is int or declared is float:
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or (declared is int and isinstance(v, float))
        ):
            raise bad(f"must be {'an integer' if declared is int else 'a number'}, got {v!r}")
        if not math.isfinite(v):  # TOML has nan and inf; NaN would pass every bound below
            raise bad(f"must be a finite number, got {v}")
        lo, hi = bounds.get("lo"), bounds.get("hi")
        if lo is not None and v < lo:
            raise bad(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise bad(f"must be <= {hi}, got {v}")
        return declared(v)
    if declared is str or origin is Literal:
        if not isinstance(v, str):
            raise bad(f"must be a string, got {v!r}")
        if origin is Literal and v not in args:
            raise bad(f"must be one of {', '.join(args)}; got {v!r}")
        return v
    if origin is tuple and args[0] is int and bounds:  # small numbers with bounds (shard ids)
        return tuple(_value(f"{where}[{i}]", x, int, bounds) for i, x in enumerate(_list(where, v)))
    if origin is tuple and args[0] is int:  # Discord snowflakes
        return _discord_ids(where, v)
    if origin is tuple and args[0] is str:
        return _strings(where, v)
    if origin is tuple and get_origin(args[0]) is re.Pattern:
        out = []
        for i, pattern in enumerate(_strings(where, v)):
            try:
                out.append(_compile(pattern))
            except re.error as exc:
                raise ConfigError(f"{where}[{i}]: invalid regular expression {pattern!r}: {exc}") from None
        return tuple(out)
    raise TypeError(f"{where}: the reader has no rule for the declared type {declared!r}")


def _list(where: str, v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError(f"{where}: must be a list, got {v!r}")
    return v


def _strings(where: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: must be a list of strings, got {v!r}")
    return tuple(v)


def _discord_ids(where: str, v: Any) -> tuple[int, ...]:
    """Integers or strings of digits (strings survive tools that mangle big ints)."""
    if not isinstance(v, list):
        raise ConfigError(f"{where}: must be a list of Discord ids, got {v!r}")
    out = []
    for x in v:
        if isinstance(x, str) and x.strip().isdigit():
            x = int(x.strip())
        if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
            raise ConfigError(f"{where}: must be a list of Discord ids (positive integers), got {x!r}")
        out.append(x)
    return tuple(out)


def parse_config(data: dict[str, Any], *, source: Path | None = None) -> BotConfig:
    """Validate a parsed TOML document; raises ConfigError naming the first bad key."""
    section_types = get_type_hints(BotConfig)
    known = [f.name for f in dataclasses.fields(BotConfig) if f.name != "source"]
    for top in data:
        if top not in known:
            raise ConfigError(f"{top}: unknown section (known: {', '.join(sorted(known))})")
    sections = {name: _read_section(section_types[name], name, data.get(name)) for name in known}
    return _check_across(BotConfig(**sections, source=source))


_HOST_RE = re.compile(r"[A-Za-z0-9.:-]{1,253}")


def _check_across(cfg: BotConfig) -> BotConfig:
    """The checks a single key's type and bounds cannot express; returns the config with the file-relative
    SQLite path resolved and the log level upper-cased."""
    if not _ENV_NAME_RE.match(cfg.discord.token_env):
        raise ConfigError(
            "discord.token_env: must be the NAME of an environment variable (like DISCORD_TOKEN), "
            "not the token itself"
        )

    if not _HOST_RE.fullmatch(cfg.http.host):
        raise ConfigError(
            f"http.host: must be an IP address or a host name to listen on (127.0.0.1, ::1, 0.0.0.0), "
            f"got {cfg.http.host!r}"
        )

    shards = cfg.discord
    if shards.shard_ids and not shards.shard_count:
        raise ConfigError("discord.shard_ids: needs discord.shard_count (the total number of shards)")
    if any(i >= shards.shard_count for i in shards.shard_ids):
        raise ConfigError(
            f"discord.shard_ids: each id must be below shard_count ({shards.shard_count}), "
            f"got {list(shards.shard_ids)}"
        )
    if len(set(shards.shard_ids)) != len(shards.shard_ids):
        raise ConfigError(f"discord.shard_ids: an id is listed twice: {list(shards.shard_ids)}")

    if not cfg.model.devices:
        raise ConfigError('model.devices: needs at least one device ("cuda:0", "cpu")')
    try:
        devices = tuple(parse_device(d) for d in cfg.model.devices)
    except InvalidRequest:
        bad = next(d for d in cfg.model.devices if not _is_device(d))
        raise ConfigError(f"model.devices: {bad!r} is not a device (use {DEVICE_FORMS})") from None
    if cfg.engine.backend == "ray":
        wrong = not_ray_devices(devices)
        if wrong:
            raise ConfigError(
                'model.devices: with engine.backend = "ray" each entry is one worker actor, "cuda" (on a GPU '
                f'that Ray picks, on any node) or "cpu"; got {", ".join(map(repr, wrong))}'
            )
    elif len(set(devices)) != len(devices) and "cpu" not in devices:
        raise ConfigError("model.devices: a GPU is listed twice (one worker per GPU)")
    if not cfg.model.model.strip():
        raise ConfigError("model.model: must be a hub id or a local directory, got an empty string")

    gen = cfg.generation
    if gen.default_count > gen.max_count:
        raise ConfigError(
            f"generation.default_count: must be <= max_count ({gen.max_count}), got {gen.default_count}"
        )
    if gen.max_count > cfg.engine.max_images_per_batch:
        raise ConfigError(
            "generation.max_count: must be <= engine.max_images_per_batch "
            f"({cfg.engine.max_images_per_batch})"
        )
    if len(cfg.understanding.system_prompt) > 2000:
        raise ConfigError("understanding.system_prompt: at most 2000 characters")
    if not cfg.moderation.question.strip() or len(cfg.moderation.question) > 500:
        raise ConfigError("moderation.question: must be a yes/no question of 1 to 500 characters")
    if not gen.min_guidance <= gen.default_guidance <= gen.max_guidance:
        raise ConfigError("generation.default_guidance: must lie between min_guidance and max_guidance")
    if gen.default_temperature > gen.max_temperature:
        raise ConfigError("generation.default_temperature: must be <= max_temperature")

    for t in cfg.understanding.allowed_content_types:
        if not t.startswith("image/"):
            raise ConfigError(f"understanding.allowed_content_types: {t!r} is not an image/* type")
    if cfg.memory.context_token_budget + cfg.understanding.max_new_tokens > 1_000_000:
        raise ConfigError("memory.context_token_budget: too large")

    url = cfg.database.url
    if "://" not in url:
        raise ConfigError(
            f"database.url: must be an SQLAlchemy URL like sqlite+aiosqlite:///janus-bot.db, got {url!r}"
        )
    if cfg.source is not None and url.startswith("sqlite") and ":///" in url:
        # A relative SQLite path is relative to the config file, not to wherever the bot was started.
        scheme, path = url.split(":///", 1)
        if path and not path.startswith("/") and path != ":memory:":
            url = f"{scheme}:///{(cfg.source.parent / path).resolve()}"

    level = cfg.logging.level.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"logging.level: must be one of {', '.join(LOG_LEVELS)}; got {level!r}")

    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, devices=devices),
        database=dataclasses.replace(cfg.database, url=url),
        logging=dataclasses.replace(cfg.logging, level=level),
    )


def _is_device(name: str) -> bool:
    try:
        parse_device(name)
    except InvalidRequest:
        return False
    return True


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
    except UnicodeDecodeError as exc:  # a binary file, or one saved in another encoding
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
    return parse_config(data, source=p.resolve())


# Sections whose changes only take effect after a restart (they shape processes and connections).
_RESTART_SECTIONS = ("model", "engine", "database", "http")


def restart_required_changes(old: BotConfig, new: BotConfig) -> list[str]:
    """Names of changed sections/keys that a reload cannot apply to the running bot."""
    changed = [name for name in _RESTART_SECTIONS if getattr(old, name) != getattr(new, name)]
    if old.discord.token_env != new.discord.token_env:
        changed.append("discord.token_env")
    if old.discord.guild_ids != new.discord.guild_ids:
        changed.append("discord.guild_ids")
    for key in ("shard_count", "shard_ids"):
        if getattr(old.discord, key) != getattr(new.discord, key):
            changed.append(f"discord.{key}")
    if old.discord.message_content_intent != new.discord.message_content_intent:
        changed.append("discord.message_content_intent")
    if old.logging.file != new.logging.file:
        changed.append("logging.file")
    if old.memory.tokenizer_path != new.memory.tokenizer_path:
        changed.append("memory.tokenizer_path")
    return changed
