"""The gateway websocket: HELLO -> IDENTIFY -> READY + GUILD_CREATE, heartbeats, RESUME, dispatches.

Frames go out as plain-text JSON even when discord.py asks for zlib-stream: it accepts both, and text
frames keep the emulator simple to debug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from discord_emulator.payloads import guild_create_payload, member_payload, user_payload
from discord_emulator.world import World

log = logging.getLogger(__name__)

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME, RECONNECT, REQUEST_MEMBERS = 0, 1, 2, 3, 4, 6, 7, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11

# Intents the gateway filters on.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Close codes.
CLOSE_AUTH_FAILED = 4004
CLOSE_INVALID_SHARD = 4010
CLOSE_DISALLOWED_INTENTS = 4014


class GatewaySession:
    """One connected client. `ready` is set once READY and every GUILD_CREATE have been written."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.session_id = secrets.token_hex(16)
        self.sequence = 0
        self.intents = 0
        self.shard: tuple[int, int] = (0, 1)  # (shard id, shard count) from IDENTIFY
        self.identified = False
        self.ready = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, op: int, data: Any, event: str | None = None) -> None:
        async with self._send_lock:
            if self.ws.closed:
                return
            frame: dict[str, Any] = {"op": op, "d": data, "s": None, "t": event}
            if op == DISPATCH:
                self.sequence += 1
                frame["s"] = self.sequence
            await self.ws.send_str(json.dumps(frame))


@dataclass
class DroppedSession:
    """A session whose socket dropped without a clean close: Discord keeps it for a RESUME."""

    intents: int
    sequence: int
    shard: tuple[int, int] = (0, 1)
    backlog: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """Discord's rule: a guild's events go to shard (guild_id >> 22) % shard_count; DMs to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def event_guild(event: str, data: dict[str, Any]) -> int | None:
    """The guild an event belongs to (None: a DM or a user-level event, which shard 0 receives)."""
    if event.startswith("GUILD_") and "guild_id" not in data and "id" in data:
        return int(data["id"])  # GUILD_CREATE / UPDATE / DELETE carry the guild itself
    guild_id = data.get("guild_id")
    return int(guild_id) if guild_id else None


def for_shard(shard: tuple[int, int], event: str, data: dict[str, Any]) -> bool:
    shard_id, count = shard
    return count <= 1 or shard_of(event_guild(event, data), count) == shard_id


class Gateway:
    def __init__(self, world: World, *, bot_token: str, privileged_intents: bool, heartbeat_interval_ms: int):
        self.world = world
        self.bot_token = bot_token
        self.privileged_intents = privileged_intents
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.resume_url = ""  # the server's ws:// URL, set once it listens
        self.sessions: list[GatewaySession] = []
        self.session_ready = asyncio.Event()
        self.dropped: dict[str, DroppedSession] = {}
        self._pending: set[asyncio.Task[None]] = set()

    # -- outgoing events --------------------------------------------------------------------------

    def wants(self, session: GatewaySession, event: str, data: dict[str, Any]) -> bool:
        return for_shard(session.shard, event, data) and self.wants_intents(session.intents, event, data)

    def redact_content(self, session: GatewaySession, event: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.redact_intents(session.intents, event, data)

    @staticmethod
    def wants_intents(intents: int, event: str, data: dict[str, Any]) -> bool:
        """Intent filtering as Discord does it: no guild-message events without GUILD_MESSAGES, etc."""
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
            needed = INTENT_GUILD_MESSAGES if data.get("guild_id") else INTENT_DIRECT_MESSAGES
            return bool(intents & needed)
        if event.startswith("MESSAGE_REACTION"):
            return bool(intents & INTENT_GUILD_MESSAGE_REACTIONS) if data.get("guild_id") else True
        if event.startswith("GUILD_MEMBER"):
            return bool(intents & INTENT_GUILD_MEMBERS)
        return True

    def redact_intents(self, intents: int, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Without MESSAGE_CONTENT, guild messages that do not mention the bot arrive without content."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or intents & INTENT_MESSAGE_CONTENT:
            return data
        bot_id = str(self.world.bot_user.id)
        if not data.get("guild_id") or data.get("author", {}).get("id") == bot_id:
            return data
        if any(u.get("id") == bot_id for u in data.get("mentions", [])):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    def _backlog(self, event: str, data: dict[str, Any]) -> None:
        """Events for dropped sessions wait for their RESUME, as Discord replays them."""
        for dropped in self.dropped.values():
            if for_shard(dropped.shard, event, data) and self.wants_intents(dropped.intents, event, data):
                dropped.backlog.append((event, self.redact_intents(dropped.intents, event, data)))

    def dispatch(self, event: str, data: dict[str, Any], intent: int | None = None) -> None:
        """Queue `event` to every identified session (fire-and-forget, but kept in order per session)."""
        self._backlog(event, data)
        for session in list(self.sessions):
            if not session.identified or not self.wants(session, event, data):
                continue
            self._spawn(session.send(DISPATCH, self.redact_content(session, event, data), event))

    async def dispatch_now(self, event: str, data: dict[str, Any]) -> int:
        """Write `event` and wait until it is on the wire; returns how many sessions got it."""
        self._backlog(event, data)
        sent = 0
        for session in list(self.sessions):
            if session.identified and self.wants(session, event, data):
                await session.send(DISPATCH, self.redact_content(session, event, data), event)
                sent += 1
        return sent

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait until queued dispatches are written (tests act after the bot could have seen them)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # -- connection handling ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws)
        self.sessions.append(session)
        try:
            await session.send(HELLO, {"heartbeat_interval": self.heartbeat_interval_ms})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._on_frame(session, json.loads(msg.data))
        finally:
            self.sessions.remove(session)
            if session.identified and ws.close_code not in (1000, 1001):
                self.dropped.setdefault(
                    session.session_id, DroppedSession(session.intents, session.sequence, session.shard)
                )
        return ws

    async def _on_frame(self, session: GatewaySession, frame: dict[str, Any]) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == HEARTBEAT:
            await session.send(HEARTBEAT_ACK, None)
        elif op == IDENTIFY:
            await self._identify(session, data or {})
        elif op == RESUME:
            await self._resume(session, data or {})
        elif op == REQUEST_MEMBERS:
            await self._members_chunk(session, data or {})
        elif op in (PRESENCE, VOICE):
            pass
        else:
            log.warning("gateway: unhandled opcode %s", op)

    def _token_ok(self, token: str | None) -> bool:
        return (token or "").removeprefix("Bot ") == self.bot_token

    async def _identify(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if not self._token_ok(data.get("token")):
            await session.ws.close(code=CLOSE_AUTH_FAILED, message=b"Authentication failed.")
            return
        session.intents = int(data.get("intents") or 0)
        if session.intents & PRIVILEGED_INTENTS and not self.privileged_intents:
            await session.ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return
        shard = data.get("shard") or [0, 1]
        try:
            shard_id, shard_count = int(shard[0]), int(shard[1])
            if not 0 <= shard_id < shard_count:
                raise ValueError
        except (TypeError, ValueError, IndexError):
            await session.ws.close(code=CLOSE_INVALID_SHARD, message=b"Invalid shard.")
            return
        session.shard = (shard_id, shard_count)
        world = self.world
        guilds = [g for g in world.guilds.values() if shard_of(g.id, shard_count) == shard_id]
        ready = {
            "v": 10,
            "user": {**user_payload(world.bot_user), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.resume_url,
            "session_type": "normal",
            "shard": [shard_id, shard_count],
            "application": {"id": str(world.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["discord-emulator"],
        }
        session.identified = True
        await session.send(DISPATCH, ready, "READY")
        for guild in guilds:
            await session.send(DISPATCH, guild_create_payload(guild), "GUILD_CREATE")
        session.ready.set()
        self.session_ready.set()

    async def _resume(self, session: GatewaySession, data: dict[str, Any]) -> None:
        if not self._token_ok(data.get("token")):
            await session.ws.close(code=CLOSE_AUTH_FAILED, message=b"Authentication failed.")
            return
        dropped = self.dropped.pop(str(data.get("session_id")), None)
        if dropped is None:
            await session.send(INVALID_SESSION, False)  # unknown or cleanly closed: identify again
            return
        session.session_id = str(data["session_id"])
        session.intents = dropped.intents
        session.shard = dropped.shard
        session.sequence = dropped.sequence
        session.identified = True
        for event, payload in dropped.backlog:
            await session.send(DISPATCH, payload, event)
        await session.send(DISPATCH, {}, "RESUMED")
        session.ready.set()

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        chunk = {
            "guild_id": str(guild.id),
            "members": [member_payload(m) for m in guild.members.values()],
            "chunk_index": 0,
            "chunk_count": 1,
            "nonce": data.get("nonce"),
        }
        await session.send(DISPATCH, chunk, "GUILD_MEMBERS_CHUNK")

    async def close_all(self, code: int = 1000) -> None:
        for session in list(self.sessions):
            if session.identified and code not in (1000, 1001):
                # Recorded before the close so a client's immediate RESUME finds it.
                self.dropped[session.session_id] = DroppedSession(session.intents, session.sequence)
            session.identified = False
            await session.ws.close(code=code)
