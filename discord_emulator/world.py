"""The emulator's single source of truth and the operations both REST routes and test users perform.

Creating, editing and deleting messages lives here (not in the HTTP handlers) because bots do it over
REST, interactions do it through callbacks and webhooks, and test users do it directly; all three must
apply the same rules, record the same history and dispatch the same gateway events.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
from collections.abc import Callable
from typing import Any

from discord_emulator import rules
from discord_emulator.payloads import EmulatorUsageError, message_payload
from discord_emulator.state import (
    ADMINISTRATOR,
    DEFAULT_UPLOAD_LIMIT,
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    Attachment,
    Channel,
    CommandSync,
    EmulatorClock,
    Guild,
    Interaction,
    InteractionFailure,
    Message,
    Pings,
    Rejection,
    SnowflakeFactory,
    TranscriptLine,
    Upload,
    User,
)

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
# Flags a bot may set on a message it sends; the rest are Discord's own.
SETTABLE_FLAGS = (1 << 2) | (1 << 12) | (1 << 15) | FLAG_EPHEMERAL

Dispatch = Callable[[str, dict[str, Any], int | None], None]


def guess_content_type(filename: str) -> str | None:
    """Discord sniffs the type from the name; discord.py always uploads as application/octet-stream."""
    return mimetypes.guess_type(filename)[0]


class World:
    def __init__(self, *, response_deadline: float, token_lifetime: float, bot_name: str) -> None:
        self.clock = EmulatorClock()
        self.snowflakes = SnowflakeFactory(self.clock)
        self.response_deadline = response_deadline
        self.token_lifetime = token_lifetime
        self.base_url = ""  # set once the server listens; attachment URLs need it
        self.bot_user = User(self.snowflakes.next(), bot_name, bot=True)
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.dm_channels: dict[int, Channel] = {}  # user id -> DM channel with the bot
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.interactions: list[Interaction] = []
        self.interactions_by_token: dict[str, Interaction] = {}
        self.failures: list[InteractionFailure] = []
        self.rejections: list[Rejection] = []
        self.unknown_routes: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str, int]] = []
        self.cdn_downloads: list[int] = []
        self.typing: list[tuple[int, float]] = []
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.command_syncs: list[CommandSync] = []
        self.dispatch: Dispatch = lambda event, data, intent: None
        self.started_at = self.clock.now()
        self.transcript: list[TranscriptLine] = []

    def note(self, channel: Channel | None, who: str, text: str) -> None:
        where = "-" if channel is None else (f"@{channel.name}" if channel.type == DM else f"#{channel.name}")
        self.transcript.append(TranscriptLine(self.clock.now(), where, who, text))

    @staticmethod
    def describe_message(message: Message) -> str:
        parts = [repr(message.content)] if message.content else []
        parts += [f"[embed {e.get('title') or e.get('description', '')[:40]!r}]" for e in message.embeds]
        parts += [f"[file {a.filename} {a.size} B]" for a in message.attachments]
        parts += [f"[button {b.get('label') or b.get('custom_id')}]" for b in message.buttons()]
        if message.loading:
            parts.append("(thinking...)")
        if message.ephemeral:
            parts.append("(only you can see this)")
        return " ".join(parts) or "(empty)"

    @property
    def application_id(self) -> int:
        return self.bot_user.id

    # -- attachments ------------------------------------------------------------------------------

    def make_attachment(
        self, channel: Channel, upload: Upload, *, ephemeral: bool = False, description: str | None = None
    ) -> Attachment:
        att_id = self.snowflakes.next()
        att = Attachment(
            id=att_id,
            filename=upload.filename,
            content_type=upload.content_type or guess_content_type(upload.filename),
            data=upload.data,
            url=f"{self.base_url}/cdn/attachments/{channel.id}/{att_id}/{upload.filename}",
            ephemeral=ephemeral,
            description=description,
        )
        self.attachments[att_id] = att
        return att

    # -- mentions ---------------------------------------------------------------------------------

    def compute_mentions(
        self, channel: Channel, content: str, allowed: dict[str, Any] | None, reference: Message | None
    ) -> tuple[list[User], list[int], Pings]:
        """Mentions in the text and who they would notify. Permission-free on purpose: conservative."""
        user_ids = [int(u) for u in USER_MENTION.findall(content)]
        role_ids = [int(r) for r in ROLE_MENTION.findall(content)]
        everyone = "@everyone" in content or "@here" in content
        mentioned = [self.users[u] for u in dict.fromkeys(user_ids) if u in self.users]
        if allowed is None:
            ping_users = {u.id for u in mentioned}
            ping_roles = set(role_ids)
            ping_everyone = everyone
            replied = True
        else:
            parse = set(allowed.get("parse") or [])
            listed_users = {int(u) for u in allowed.get("users") or []}
            listed_roles = {int(r) for r in allowed.get("roles") or []}
            ping_users = {u.id for u in mentioned if "users" in parse or u.id in listed_users}
            ping_roles = {r for r in role_ids if "roles" in parse or r in listed_roles}
            ping_everyone = everyone and "everyone" in parse
            replied = bool(allowed.get("replied_user"))
        if reference is not None and replied:
            ping_users.add(reference.author.id)
            if reference.author not in mentioned:
                mentioned.append(reference.author)
        pings = Pings(frozenset(ping_users), frozenset(ping_roles), ping_everyone)
        return mentioned, list(dict.fromkeys(role_ids)), pings

    # -- messages ---------------------------------------------------------------------------------

    def dm_channel(self, user: User) -> Channel:
        """The user's DM channel with the bot, created on first use like POST /users/@me/channels."""
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = Channel(self.snowflakes.next(), DM, f"dm-{user.name}", recipient=user)
            self.dm_channels[user.id] = channel
            self.channels[channel.id] = channel
        return channel

    def upload_limit(self, channel: Channel) -> int:
        return channel.guild.upload_limit if channel.guild else DEFAULT_UPLOAD_LIMIT

    def _new_attachments(
        self, channel: Channel, payload: dict[str, Any], files: dict[int, Upload], ephemeral: bool
    ) -> tuple[list[Attachment], list[int]]:
        """Uploads become attachments; `attachments` entries with an existing id are kept ones."""
        descriptors = {}
        kept: list[int] = []
        for entry in payload.get("attachments") or []:
            ident = int(entry["id"])
            if ident in files:
                descriptors[ident] = entry
            else:
                kept.append(ident)
        created = []
        for index, upload in sorted(files.items()):
            entry = descriptors.get(index, {})
            named = Upload(entry.get("filename") or upload.filename, upload.data, upload.content_type)
            created.append(
                self.make_attachment(
                    channel, named, ephemeral=ephemeral, description=entry.get("description")
                )
            )
        return created, kept

    def create_message(
        self,
        channel: Channel,
        author: User,
        payload: dict[str, Any],
        files: dict[int, Upload] | None = None,
        *,
        interaction: Interaction | None = None,
        extra_flags: int = 0,
        check: bool = True,
    ) -> Message:
        files = files or {}
        if check:
            rules.check_message(
                payload,
                [(u.filename, u.data) for u in files.values()],
                upload_limit=self.upload_limit(channel),
            )
        flags = (int(payload.get("flags") or 0) & SETTABLE_FLAGS) | extra_flags
        if interaction is None:
            flags &= ~FLAG_EPHEMERAL  # only interaction responses can be ephemeral
        ephemeral = bool(flags & FLAG_EPHEMERAL)
        reference = None
        ref = payload.get("message_reference")
        if ref and ref.get("message_id"):
            reference = self.messages.get(int(ref["message_id"]))
            if reference is None and ref.get("fail_if_not_exists", True):
                raise rules.invalid_form("message_reference", "Unknown message")
        content = str(payload.get("content") or "")
        allowed = payload.get("allowed_mentions")
        mentioned, role_ids, pings = self.compute_mentions(channel, content, allowed, reference)
        attachments, _ = self._new_attachments(channel, payload, files, ephemeral)
        message = Message(
            id=self.snowflakes.next(),
            channel=channel,
            author=author,
            content=content,
            embeds=list(payload.get("embeds") or []),
            components=list(payload.get("components") or []),
            attachments=attachments,
            flags=flags,
            created_at=self.clock.now(),
            reference_id=reference.id if reference else None,
            allowed_mentions=allowed,
            pings=pings,
            mentions=mentioned,
            mention_roles=role_ids,
            mention_everyone=pings.everyone,
            interaction=interaction,
            webhook_id=self.application_id if interaction is not None else None,
            visible_to=interaction.user.id if interaction is not None and ephemeral else None,
            tts=bool(payload.get("tts")),
        )
        self.messages[message.id] = message
        self.note(channel, author.name, self.describe_message(message))
        if not ephemeral:
            self.dispatch("MESSAGE_CREATE", self.message_event(message), None)
        return message

    def edit_message(
        self, message: Message, payload: dict[str, Any], files: dict[int, Upload] | None = None
    ) -> Message:
        files = files or {}
        kept_ids = [int(e["id"]) for e in payload.get("attachments") or [] if int(e["id"]) not in files]
        keeps = len(kept_ids) if "attachments" in payload else len(message.attachments)
        rules.check_message(
            payload,
            [(u.filename, u.data) for u in files.values()],
            upload_limit=self.upload_limit(message.channel),
            editing=True,
            kept_attachments=keeps,
        )
        now = self.clock.now()
        message.revisions.append(message.snapshot(now))
        if "content" in payload:
            message.content = str(payload["content"] or "")
        if "embeds" in payload:
            message.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            message.components = list(payload["components"] or [])
        if payload.get("flags") is not None:
            settable = SETTABLE_FLAGS & ~FLAG_EPHEMERAL  # ephemerality is fixed at creation
            message.flags = (message.flags & ~settable) | (int(payload["flags"]) & settable)
        message.flags &= ~FLAG_LOADING  # any edit of a "thinking" message replaces it
        created, _ = self._new_attachments(message.channel, payload, files, message.ephemeral)
        if "attachments" in payload:
            by_id = {a.id: a for a in message.attachments}
            message.attachments = [by_id[i] for i in kept_ids if i in by_id] + created
        else:
            message.attachments = message.attachments + created
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        reference = self.messages.get(message.reference_id) if message.reference_id else None
        mentioned, role_ids, pings = self.compute_mentions(
            message.channel, message.content, message.allowed_mentions, reference
        )
        message.mentions, message.mention_roles = mentioned, role_ids
        # Conservative: anyone notified by any version counts, so "prompts cannot ping" checks see all.
        message.pings = Pings(
            message.pings.users | pings.users,
            message.pings.roles | pings.roles,
            message.pings.everyone or pings.everyone,
        )
        message.edited_at = now
        verb = "answers" if message.revisions[-1].flags & FLAG_LOADING else "edited ->"
        self.note(message.channel, message.author.name, f"{verb} {self.describe_message(message)}")
        if not message.ephemeral:
            self.dispatch("MESSAGE_UPDATE", self.message_event(message), None)
        return message

    def delete_message(self, message: Message) -> None:
        message.deleted = True
        self.note(message.channel, message.author.name, f"deleted message {message.id}")
        if not message.ephemeral:
            data = {"id": str(message.id), "channel_id": str(message.channel.id)}
            if message.channel.guild:
                data["guild_id"] = str(message.channel.guild.id)
            self.dispatch("MESSAGE_DELETE", data, None)

    def message_event(self, message: Message) -> dict[str, Any]:
        payload = message_payload(message)
        if message.reference_id and message.reference_id in self.messages:
            payload["referenced_message"] = message_payload(self.messages[message.reference_id])
        return payload

    def visible_messages(
        self, channel: Channel, *, include_ephemeral: bool, include_deleted: bool
    ) -> list[Message]:
        return [
            m
            for m in self.messages.values()
            if m.channel is channel
            and (include_ephemeral or not m.ephemeral)
            and (include_deleted or not m.deleted)
        ]

    # -- interactions -----------------------------------------------------------------------------

    def new_interaction_identity(self) -> tuple[int, str]:
        ident = self.snowflakes.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        return ident, token

    def register_interaction(self, interaction: Interaction) -> None:
        self.interactions.append(interaction)
        self.interactions_by_token[interaction.token] = interaction

    def elapsed_since_dispatch(self, interaction: Interaction) -> float:
        if interaction.dispatched_at is None:
            return 0.0
        return self.clock.now() - interaction.dispatched_at

    def fail(self, interaction: Interaction, reason: str) -> None:
        if interaction.failure is None:
            interaction.failure = InteractionFailure(interaction, reason, self.clock.now())
            self.failures.append(interaction.failure)
            self.note(
                interaction.channel, interaction.user.name, f"sees 'This interaction failed' ({reason})"
            )
            interaction._responded.set()

    def check_deadline(self, interaction: Interaction) -> None:
        """Past the deadline with no answer: what the user sees is "The application did not respond"."""
        if (
            not interaction.acknowledged
            and interaction.dispatched_at is not None
            and self.elapsed_since_dispatch(interaction) >= self.response_deadline
        ):
            self.fail(interaction, f"no response within {self.response_deadline:g} s")

    def token_expired(self, interaction: Interaction) -> bool:
        return self.clock.now() - interaction.created_at >= self.token_lifetime

    # -- commands ---------------------------------------------------------------------------------

    def commands_for(self, guild_id: int | None) -> list[dict[str, Any]]:
        return self.global_commands if guild_id is None else self.guild_commands.setdefault(guild_id, [])

    def find_command(self, name: str, kind: int, channel: Channel) -> dict[str, Any]:
        """The command as the user's client sees it: guild commands first, then global ones."""
        scopes = []
        if channel.guild is not None:
            scopes.append(self.guild_commands.get(channel.guild.id, []))
        scopes.append(self.global_commands)
        for commands in scopes:
            for command in commands:
                if command["name"] == name and command["type"] == kind:
                    return command
        raise EmulatorUsageError(f"no synced command {name!r} (type {kind}) is visible in {channel.name}")

    def check_command_access(
        self, command: dict[str, Any], user: User, channel: Channel, ignore_perms: bool
    ) -> None:
        if channel.guild is None:
            contexts = command.get("contexts")
            if (contexts is not None and 1 not in contexts) or command.get("dm_permission") is False:
                raise EmulatorUsageError(f"/{command['name']} is not available in DMs")
            return
        needed = command.get("default_member_permissions")
        member = channel.guild.members[user.id]
        if needed is not None and not ignore_perms:
            needed = int(needed)
            if member.permissions & needed != needed and not member.permissions & ADMINISTRATOR:
                raise EmulatorUsageError(
                    f"{user.name} cannot see /{command['name']} (default_member_permissions)"
                )

    def record_rejection(self, method: str, path: str, error: rules.DiscordAPIError) -> None:
        self.rejections.append(Rejection(method, path, error.status, error.code, error.message))
        self.note(None, "discord", f"rejected {method} {path}: {error.status} {error.message}")
