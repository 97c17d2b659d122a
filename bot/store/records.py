"""The plain values the store hands out and takes in.

Callers (the cogs) never see SQLAlchemy rows or sessions: every answer is a frozen dataclass of ids,
strings, numbers and bytes, so a row cannot be lazily loaded after its session closed and nothing SQL
leaks out of ``bot.store``. Discord ids are plain ``int`` snowflakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from janus_engine.protocol import Role, Turn


class ConversationScope(StrEnum):
    """Whose turns a conversation collects; the part of the privacy model that picks the conversation."""

    USER = "user"  # one user in one channel or thread (the default): nobody else's turns ever mix in
    SHARED = "shared"  # everyone in one channel or thread (a channel setting turns this on)
    DM = "dm"  # a direct-message channel with one user


SCOPE_SETTING = "conversation_scope"
"""Channel-settings key whose value ("user" or "shared") selects the scope of that channel's conversations."""
# The other keys /settings writes into the guild and channel settings (a JSON bag in the database).
ENABLED = "enabled"
NSFW_POLICY = "nsfw_policy"
DEFAULT_COUNT = "default_count"
DEFAULT_GUIDANCE = "default_guidance"
DEFAULT_TEMPERATURE = "default_temperature"
MODERATION = "moderation"
MODLOG_CHANNEL = "modlog_channel_id"
PERSONA = "persona"


@dataclass(frozen=True)
class ServerSettings:
    """A channel's effective /settings (guild, overridden by the parent channel, by the channel).

    None means "not set here": the bot's config applies. Stored as a JSON bag, so keys the bot does not
    know (yet) are ignored rather than refused."""

    enabled: bool | None = None
    conversation_scope: str | None = None
    nsfw_policy: str | None = None
    default_count: int | None = None
    default_guidance: float | None = None
    default_temperature: float | None = None
    moderation: bool | None = None  # output moderation of generated images (None: the config's default)
    persona: str | None = None  # the assistant's system prompt here (None: the config's)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ServerSettings:
        def num(key: str, kind: type[int] | type[float]) -> Any:
            value = data.get(key)
            return None if value is None else kind(value)

        enabled = data.get(ENABLED)
        moderation = data.get(MODERATION)
        scope, nsfw = data.get(SCOPE_SETTING), data.get(NSFW_POLICY)
        return cls(
            enabled=None if enabled is None else bool(enabled),
            conversation_scope=None if scope is None else str(scope),
            nsfw_policy=None if nsfw is None else str(nsfw),
            default_count=num(DEFAULT_COUNT, int),
            default_guidance=num(DEFAULT_GUIDANCE, float),
            default_temperature=num(DEFAULT_TEMPERATURE, float),
            moderation=None if moderation is None else bool(moderation),
            persona=None if data.get(PERSONA) is None else str(data.get(PERSONA)),
        )


@dataclass(frozen=True)
class ConversationKey:
    """What identifies a conversation. Build it with :meth:`for_scope`, which drops the parts a scope
    ignores (the user for a shared channel, the guild for a DM) so that equal situations give equal keys."""

    scope: ConversationScope
    guild_id: int | None
    channel_id: int  # the channel, thread or DM channel
    user_id: int | None  # None only for SHARED

    @classmethod
    def for_scope(
        cls, scope: ConversationScope, *, guild_id: int | None, channel_id: int, user_id: int
    ) -> ConversationKey:
        scope = ConversationScope(scope)
        if scope is ConversationScope.SHARED:
            return cls(scope, guild_id, channel_id, None)
        if scope is ConversationScope.DM:
            return cls(scope, None, channel_id, user_id)
        return cls(scope, guild_id, channel_id, user_id)

    def as_text(self) -> str:
        """The unique text form stored in the database (NULL-safe uniqueness on every backend)."""
        guild = "-" if self.guild_id is None else str(self.guild_id)
        user = "-" if self.user_id is None else str(self.user_id)
        return f"{self.scope.value}:{guild}:{self.channel_id}:{user}"


@dataclass(frozen=True)
class ConversationRef:
    id: int
    key: ConversationKey
    created_at: datetime


@dataclass(frozen=True)
class StoredImage:
    """Metadata of one stored image (the PNG bytes the model sees), addressed by its sha256."""

    sha256: str
    width: int
    height: int
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class TurnRecord:
    id: int
    conversation_id: int
    role: Role
    text: str
    author_id: int | None
    message_ids: tuple[int, ...]
    image_hashes: tuple[str, ...]
    token_count: int  # tokens of ``text`` as counted by the caller's counter when the turn was written
    created_at: datetime
    reply_to_turn_id: int | None = None


@dataclass(frozen=True)
class ContextBudget:
    """How many tokens the model input may use and what things cost.

    ``total_tokens`` is what is left for the conversation: the caller subtracts the reply's
    ``max_new_tokens`` and any fixed system text from the model's context (4096 for Janus-Pro).
    ``tokens_per_image`` is 576 + 2 markers for Janus-Pro and 16 + 2 for the tiny test model.
    ``tokens_per_turn`` covers the role header and separators the chat template adds to every turn.
    """

    total_tokens: int
    tokens_per_image: int = 578
    tokens_per_turn: int = 0


IMAGE_DROPPED_MARKER = "[image no longer in memory]"


@dataclass(frozen=True)
class ModelContext:
    """The model input built from a conversation: oldest turn first, the current turn last."""

    turns: tuple[Turn, ...]
    token_count: int  # the cost of ``turns`` under the budget's rules; never above its total
    turn_ids: tuple[int, ...]
    omitted_turns: int  # older turns left out entirely
    omitted_images: int  # images of kept turns replaced by IMAGE_DROPPED_MARKER


class JobKind(StrEnum):
    IMAGINE = "imagine"
    DESCRIBE = "describe"
    CHAT = "chat"  # /chat and @mentions: recorded so a restart can tell a user their answer was cut off


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: JobKind
    user_id: int
    guild_id: int | None
    channel_id: int | None
    prompt: str
    params: dict[str, Any]
    seed: int | None
    status: JobStatus
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = field(default_factory=dict)
    message_ids: tuple[int, ...] = ()
    owner: str | None = None  # the bot process that created it (Store.owner); None before migration 0003


# Keys of a job's ``params`` that say where its answer appears, written when the job is created (before
# anything is shown): after a restart, a job whose message ids were not recorded yet (the process died
# between showing the message and writing its id) is found again in the channel by them.
INTERACTION_ID = "interaction_id"  # the slash command, button or form that started it
REPLY_TO = "reply_to"  # the user's message an @mention answer replies to


@dataclass(frozen=True)
class ImagineParams:
    """The parameters of an /imagine job, typed; its record's ``params`` keeps them as a JSON bag."""

    count: int
    guidance: float
    temperature: float
    parent_job: str | None = None  # the job a Re-roll or an edited prompt started from
    negative_prompt: str = ""  # what the images should not show ("" = none); Re-roll and Edit keep it
    best_of: int = 0  # > count: this many candidates drawn, the best ``count`` posted (0 = no ranking)
    moderate: bool = False  # the images are checked by the moderation question before they are posted
    enhanced_from: str = ""  # the user's own prompt when Janus rewrote it (enhance); the job's is the rewrite

    @classmethod
    def of(cls, job: JobRecord) -> ImagineParams:
        p = job.params
        return cls(
            count=int(p["count"]),
            guidance=float(p["guidance"]),
            temperature=float(p["temperature"]),
            parent_job=p.get("parent_job"),
            negative_prompt=str(p.get("negative_prompt") or ""),
            best_of=int(p.get("best_of") or 0),
            moderate=bool(p.get("moderate", False)),
            enhanced_from=str(p.get("enhanced_from") or ""),
        )

    def as_params(self) -> dict[str, Any]:
        """What ``Store.create_job`` stores (``parent_job`` only when there is one)."""
        params: dict[str, Any] = {
            "count": self.count,
            "guidance": self.guidance,
            "temperature": self.temperature,
        }
        if self.parent_job:
            params["parent_job"] = self.parent_job
        if self.negative_prompt:
            params["negative_prompt"] = self.negative_prompt
        if self.best_of:
            params["best_of"] = self.best_of
        if self.moderate:
            params["moderate"] = True
        if self.enhanced_from:
            params["enhanced_from"] = self.enhanced_from
        return params

    @property
    def drawn(self) -> int:
        """How many images the engine draws for this job (the candidates, with best_of)."""
        return max(self.count, self.best_of)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int | None
    actor_id: int
    action: str
    target: str | None
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ForgetResult:
    conversations: int
    turns: int
    images: int
    jobs: int = 0
    # Every conversation that lost turns (deleted ones and shared ones the user spoke in): the engine's
    # workers drop the image features they cached for them.
    touched: tuple[int, ...] = ()


@dataclass(frozen=True)
class RetentionResult:
    turns: int
    conversations: int
    images: int
