"""The emulated Discord's world: clock, snowflakes, guilds, users, channels, messages, interactions.

Plain records the REST routes, the gateway and tests share. Nothing here does I/O, so a test can read
any of it at any time without awaiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
MIB = 1024 * 1024
DEFAULT_UPLOAD_LIMIT = 10 * MIB

# Channel types (Discord API).
GUILD_TEXT = 0
DM = 1
PUBLIC_THREAD = 11

# Permission bits that matter for computing a member's permissions.
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 53) - 1
# What Discord gives @everyone in a new server: invite, reactions, view, send, embed links, attach files,
# read history, external emojis, nickname, application commands, public threads, stickers, thread posts.
DEFAULT_EVERYONE_PERMISSIONS = sum(1 << bit for bit in (0, 6, 10, 11, 14, 15, 16, 18, 26, 31, 35, 37, 38))

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7


class EmulatorClock:
    """Wall-clock time plus an offset tests can advance: token expiry without waiting 15 minutes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self.offset += seconds


class SnowflakeFactory:
    """Real Discord snowflakes (timestamp << 22 | worker | increment) so discord.py's created_at works."""

    def __init__(self, clock: EmulatorClock) -> None:
        self._clock = clock
        self._increment = itertools.count()

    def next(self) -> int:
        ms = int(self._clock.now() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (next(self._increment) & 0xFFF)


@dataclass(eq=False)
class User:
    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(eq=False)
class Member:
    guild: Guild
    user: User
    roles: list[Role] = field(default_factory=list)
    extra_permissions: int = 0
    nick: str | None = None
    joined_at: float = 0.0

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mention(self) -> str:
        return self.user.mention

    @property
    def permissions(self) -> int:
        """Guild-level permissions as Discord computes them (owner and ADMINISTRATOR get everything)."""
        if self.guild.owner_id == self.user.id:
            return ALL_PERMISSIONS
        value = self.guild.everyone.permissions | self.extra_permissions
        for role in self.roles:
            value |= role.permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]


@dataclass(eq=False)
class Channel:
    id: int
    type: int
    name: str
    guild: Guild | None = None
    parent_id: int | None = None
    nsfw: bool = False
    topic: str | None = None
    recipient: User | None = None
    owner_id: int | None = None
    position: int = 0

    @property
    def guild_id(self) -> int | None:
        return self.guild.id if self.guild else None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass(eq=False)
class Attachment:
    id: int
    filename: str
    content_type: str | None
    data: bytes
    url: str
    ephemeral: bool = False
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Pings:
    """Who a message really notifies once allowed_mentions is applied."""

    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    everyone: bool = False

    def __bool__(self) -> bool:
        return bool(self.users or self.roles or self.everyone)


@dataclass(frozen=True)
class MessageRevision:
    """A message as it was before one edit; `at` is when it was replaced (emulator clock)."""

    at: float
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachment_ids: list[int]
    flags: int


@dataclass(eq=False)
class Message:
    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    created_at: float = 0.0
    edited_at: float | None = None
    reference_id: int | None = None
    allowed_mentions: dict[str, Any] | None = None
    pings: Pings = field(default_factory=Pings)
    mentions: list[User] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    interaction: Interaction | None = None
    webhook_id: int | None = None
    visible_to: int | None = None  # ephemeral messages are seen by one user only
    revisions: list[MessageRevision] = field(default_factory=list)
    deleted: bool = False
    reactions: dict[str, set[int]] = field(default_factory=dict)
    tts: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def guild(self) -> Guild | None:
        return self.channel.guild

    def snapshot(self, at: float) -> MessageRevision:
        return MessageRevision(
            at=at,
            content=self.content,
            embeds=list(self.embeds),
            components=list(self.components),
            attachment_ids=[a.id for a in self.attachments],
            flags=self.flags,
        )

    def walk_components(self) -> list[dict[str, Any]]:
        """Every component at any depth (rows, sections, containers, accessories)."""
        found: list[dict[str, Any]] = []
        stack = list(self.components)
        while stack:
            comp = stack.pop(0)
            found.append(comp)
            stack.extend(comp.get("components", []))
            for key in ("accessory", "component"):
                if isinstance(comp.get(key), dict):
                    stack.append(comp[key])
        return found

    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.walk_components() if c.get("type") == 2]

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.walk_components() if "custom_id" in c]

    def button(self, *, label: str | None = None, custom_id: str | None = None) -> dict[str, Any]:
        for button in self.buttons():
            if (label is None or button.get("label") == label) and (
                custom_id is None or button.get("custom_id") == custom_id
            ):
                return button
        raise LookupError(f"no button label={label!r} custom_id={custom_id!r} on message {self.id}")


@dataclass(frozen=True)
class InteractionFailure:
    """What the user saw as "This interaction failed" / "The application did not respond"."""

    interaction: Interaction
    reason: str
    at: float


@dataclass(eq=False)
class Interaction:
    id: int
    token: str
    type: int
    user: User
    channel: Channel
    guild: Guild | None
    payload: dict[str, Any]
    created_at: float
    source_message: Message | None = None  # the message whose component was used
    dispatched_at: float | None = None  # emulator-clock time the event was written to the gateway
    responses: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)
    original: Message | None = None
    followups: list[Message] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    failure: InteractionFailure | None = None
    _responded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def response_type(self) -> int | None:
        return self.responses[0][0] if self.responses else None

    @property
    def acknowledged(self) -> bool:
        return bool(self.responses)

    @property
    def deferred(self) -> bool:
        return self.response_type in (5, 6)

    @property
    def ephemeral(self) -> bool:
        if not self.responses:
            return False
        data = self.responses[0][1] or {}
        return bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)

    @property
    def failed(self) -> bool:
        return self.failure is not None

    async def wait_response(self, timeout: float = 5.0) -> Interaction:
        """Wait for the first callback, or for the failure record if none came in time."""
        await asyncio.wait_for(self._responded.wait(), timeout)
        return self

    async def wait_original(self, timeout: float = 10.0) -> Message:
        """Wait until the original response exists and is no longer "thinking"; return it."""
        async with asyncio.timeout(timeout):
            while self.original is None or self.original.loading:
                if self.failure is not None:
                    raise AssertionError(f"interaction failed: {self.failure.reason}")
                await asyncio.sleep(0.01)
        return self.original


@dataclass(frozen=True)
class CommandSync:
    guild_id: int | None
    commands: list[dict[str, Any]]
    at: float


@dataclass(frozen=True)
class Rejection:
    """A request the emulator answered with an error, as Discord would have."""

    method: str
    path: str
    status: int
    code: int
    message: str


@dataclass(frozen=True)
class Upload:
    """A file a test user attaches: to a message, or as a slash command's attachment option."""

    filename: str
    data: bytes
    content_type: str | None = None

    @classmethod
    def coerce(cls, value: Upload | tuple[Any, ...]) -> Upload:
        if isinstance(value, Upload):
            return value
        return cls(*value)


@dataclass(frozen=True)
class TranscriptLine:
    """One thing that happened, in words: for the offline demo's printout and for test failure output."""

    at: float
    where: str
    who: str
    text: str

    def format(self, start: float) -> str:
        return f"[{self.at - start:7.2f}s] {self.where} {self.who}: {self.text}"
