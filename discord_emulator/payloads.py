"""JSON payloads in Discord's shapes: users, guilds, channels, messages, and the interactions users cause.

discord.py parses these with the same code it uses in production, so each shape follows the API docs
(ids as strings, ISO timestamps, members without the user key inside `resolved`, and so on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from discord_emulator.state import (
    DM,
    PUBLIC_THREAD,
    Attachment,
    Channel,
    Guild,
    Member,
    Message,
    Role,
    Upload,
    User,
)

# Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5


class EmulatorUsageError(Exception):
    """A test asked for something a real Discord user could not do (unknown command, bad option, ...)."""


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


def user_payload(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "username": user.name,
        "discriminator": "0",
        "global_name": user.name,
        "avatar": None,
        "bot": user.bot,
        "public_flags": 0,
        "flags": 0,
    }


def role_payload(role: Role) -> dict[str, Any]:
    return {
        "id": str(role.id),
        "name": role.name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": role.position,
        "permissions": str(role.permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def member_payload(
    member: Member, *, with_user: bool = True, with_permissions: bool = False
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "nick": member.nick,
        "avatar": None,
        "roles": [str(r.id) for r in member.roles],
        "joined_at": iso(member.joined_at),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if with_user:
        payload["user"] = user_payload(member.user)
    if with_permissions:
        payload["permissions"] = str(member.permissions)
    return payload


def channel_payload(channel: Channel) -> dict[str, Any]:
    if channel.type == DM:
        return {
            "id": str(channel.id),
            "type": DM,
            "last_message_id": None,
            "recipients": [user_payload(u) for u in [channel.recipient] if u is not None],
        }
    payload: dict[str, Any] = {
        "id": str(channel.id),
        "type": channel.type,
        "guild_id": str(channel.guild_id),
        "name": channel.name,
        "position": channel.position,
        "permission_overwrites": [],
        "nsfw": channel.nsfw,
        "topic": channel.topic,
        "parent_id": str(channel.parent_id) if channel.parent_id else None,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
    }
    if channel.type == PUBLIC_THREAD:
        payload.update(
            owner_id=str(channel.owner_id) if channel.owner_id else None,
            member_count=1,
            message_count=0,
            thread_metadata={
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso(0),
                "locked": False,
            },
        )
    return payload


def guild_create_payload(guild: Guild) -> dict[str, Any]:
    """GUILD_CREATE with every member, so discord.py considers the guild chunked and asks for nothing."""
    text = [c for c in guild.channels.values() if c.type != PUBLIC_THREAD]
    threads = [c for c in guild.channels.values() if c.type == PUBLIC_THREAD]
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "vanity_url_code": None,
        "description": None,
        "banner": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": None,
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
        "joined_at": iso(0),
        "large": False,
        "unavailable": False,
        "member_count": len(guild.members),
        "voice_states": [],
        "members": [member_payload(m) for m in guild.members.values()],
        "channels": [channel_payload(c) for c in text],
        "threads": [channel_payload(c) for c in threads],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def attachment_payload(att: Attachment) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(att.id),
        "filename": att.filename,
        "size": att.size,
        "url": att.url,
        "proxy_url": att.url,
        "ephemeral": att.ephemeral,
    }
    if att.content_type:  # Discord omits the key for a type it does not know (an unknown extension)
        payload["content_type"] = att.content_type
    if att.description:
        payload["description"] = att.description
    return payload


def message_payload(message: Message, *, include_reference: bool = True) -> dict[str, Any]:
    channel = message.channel
    payload: dict[str, Any] = {
        "id": str(message.id),
        "channel_id": str(channel.id),
        "author": user_payload(message.author),
        "content": message.content,
        "timestamp": iso(message.created_at),
        "edited_timestamp": iso(message.edited_at) if message.edited_at else None,
        "tts": message.tts,
        "mention_everyone": message.mention_everyone,
        "mentions": [user_payload(u) for u in message.mentions],
        "mention_roles": [str(r) for r in message.mention_roles],
        "attachments": [attachment_payload(a) for a in message.attachments],
        "embeds": message.embeds,
        "reactions": [
            {"emoji": {"id": None, "name": emoji}, "count": len(users), "me": False}
            for emoji, users in message.reactions.items()
            if users
        ],
        "pinned": False,
        "type": 0,
        "flags": message.flags,
        "components": message.components,
    }
    if channel.guild is not None:
        payload["guild_id"] = str(channel.guild.id)
        member = channel.guild.members.get(message.author.id)
        if member is not None:
            payload["member"] = member_payload(member, with_user=False)
    if message.webhook_id:
        payload["webhook_id"] = str(message.webhook_id)
    if message.interaction is not None:
        itx = message.interaction
        payload["application_id"] = str(message.webhook_id or 0)
        payload["interaction_metadata"] = {
            "id": str(itx.id),
            "type": itx.type,
            "user": user_payload(itx.user),
            "authorizing_integration_owners": {},
        }
        if itx.type == APPLICATION_COMMAND:
            payload["type"] = 20
    if message.reference_id is not None:
        payload["type"] = 19
        payload["message_reference"] = {
            "type": 0,
            "message_id": str(message.reference_id),
            "channel_id": str(channel.id),
            **({"guild_id": str(channel.guild.id)} if channel.guild else {}),
        }
    return payload


def interaction_payload(
    *,
    ident: int,
    token: str,
    application_id: int,
    kind: int,
    user: User,
    member: Member | None,
    channel: Channel,
    data: dict[str, Any],
    locale: str,
    upload_limit: int,
    app_permissions: int,
    source: Message | None,
) -> dict[str, Any]:
    """INTERACTION_CREATE's body: member + guild in a server, user in a DM; `message` for components."""
    guild = channel.guild
    payload: dict[str, Any] = {
        "id": str(ident),
        "application_id": str(application_id),
        "type": kind,
        "data": data,
        "token": token,
        "version": 1,
        "channel_id": str(channel.id),
        "channel": channel_payload(channel),
        "locale": locale,
        "entitlements": [],
        "attachment_size_limit": upload_limit,
        "app_permissions": str(app_permissions),
    }
    if guild is not None and member is not None:
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": "en-US", "features": []},
            guild_locale="en-US",
            member=member_payload(member, with_permissions=True),
            authorizing_integration_owners={"0": str(guild.id)},
            context=0,
        )
    else:
        payload.update(user=user_payload(user), authorizing_integration_owners={"1": str(user.id)}, context=1)
    if source is not None:
        payload["message"] = message_payload(source)
    return payload


class ResolvedBuilder:
    """Collects one payload's `resolved` entries: users, members, roles, channels, attachments, messages."""

    def __init__(self, guild: Guild | None, make_attachment: Callable[[Upload], Attachment]) -> None:
        self.guild = guild
        self.make_attachment = make_attachment
        self.data: dict[str, dict[str, Any]] = {}

    def _put(self, kind: str, key: int, value: dict[str, Any]) -> str:
        self.data.setdefault(kind, {})[str(key)] = value
        return str(key)

    def user(self, user: User) -> str:
        self._put("users", user.id, user_payload(user))
        if self.guild is not None and user.id in self.guild.members:
            member = self.guild.members[user.id]
            self._put("members", user.id, member_payload(member, with_user=False, with_permissions=True))
        return str(user.id)

    def role(self, role: Role) -> str:
        return self._put("roles", role.id, role_payload(role))

    def channel(self, channel: Channel) -> str:
        payload = {"id": str(channel.id), "name": channel.name, "type": channel.type, "permissions": "0"}
        if channel.parent_id:
            payload["parent_id"] = str(channel.parent_id)
        if channel.type == PUBLIC_THREAD:
            payload["thread_metadata"] = channel_payload(channel)["thread_metadata"]
        return self._put("channels", channel.id, payload)

    def attachment(self, upload: Upload) -> str:
        att = self.make_attachment(upload)
        return self._put("attachments", att.id, attachment_payload(att))

    def message(self, message: Message) -> str:
        return self._put("messages", message.id, message_payload(message))


def _coerce_option(option: dict[str, Any], value: Any, resolved: ResolvedBuilder) -> Any:
    """Check one value as Discord's client would before it lets the user send, return the wire value."""
    name, kind = option["name"], option["type"]
    if kind == STRING:
        if not isinstance(value, str):
            raise EmulatorUsageError(f"option {name!r} takes a string, got {value!r}")
        low, high = option.get("min_length", 0), option.get("max_length", 6000)
        if not low <= len(value) <= high:
            raise EmulatorUsageError(f"option {name!r} must be {low}-{high} characters long")
    elif kind in (INTEGER, NUMBER):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind == INTEGER and value != int(value))
        ):
            raise EmulatorUsageError(
                f"option {name!r} takes {'an integer' if kind == INTEGER else 'a number'}"
            )
        value = int(value) if kind == INTEGER else value
        if "min_value" in option and value < option["min_value"]:
            raise EmulatorUsageError(f"option {name!r} must be >= {option['min_value']}")
        if "max_value" in option and value > option["max_value"]:
            raise EmulatorUsageError(f"option {name!r} must be <= {option['max_value']}")
    elif kind == BOOLEAN:
        if not isinstance(value, bool):
            raise EmulatorUsageError(f"option {name!r} takes a boolean")
    elif kind == USER or (kind == MENTIONABLE and isinstance(value, User | Member)):
        user = value.user if isinstance(value, Member) else value
        if not isinstance(user, User):
            raise EmulatorUsageError(f"option {name!r} takes a user")
        return resolved.user(user)
    elif kind == ROLE or (kind == MENTIONABLE and isinstance(value, Role)):
        if not isinstance(value, Role):
            raise EmulatorUsageError(f"option {name!r} takes a role")
        return resolved.role(value)
    elif kind == CHANNEL:
        if not isinstance(value, Channel):
            raise EmulatorUsageError(f"option {name!r} takes a channel")
        types = option.get("channel_types")
        if types and value.type not in types:
            raise EmulatorUsageError(f"option {name!r} does not accept channel type {value.type}")
        return resolved.channel(value)
    elif kind == ATTACHMENT:
        try:
            upload = Upload.coerce(value)
        except TypeError as exc:
            raise EmulatorUsageError(f"option {name!r} takes an Upload or (filename, bytes, type)") from exc
        return resolved.attachment(upload)
    else:
        raise EmulatorUsageError(f"option {name!r} has unsupported type {kind}")
    choices = option.get("choices")
    if choices and value not in [c["value"] for c in choices]:
        raise EmulatorUsageError(f"option {name!r} must be one of {[c['value'] for c in choices]}")
    return value


def build_command_data(
    command: dict[str, Any], path: list[str], values: dict[str, Any], resolved: ResolvedBuilder
) -> dict[str, Any]:
    """`data` for a chat-input interaction: walks subcommand groups, fills and checks the options."""
    data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1}
    if command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    schema = command.get("options") or []
    container = data
    for part in path:
        sub = next(
            (o for o in schema if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None
        )
        if sub is None:
            raise EmulatorUsageError(f"/{command['name']} has no subcommand {part!r}")
        entry: dict[str, Any] = {"name": part, "type": sub["type"], "options": []}
        container.setdefault("options", []).append(entry)
        container, schema = entry, sub.get("options") or []
    if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in schema):
        names = [o["name"] for o in schema]
        raise EmulatorUsageError(f"/{' '.join([command['name'], *path])} needs a subcommand: {names}")
    known = {o["name"]: o for o in schema}
    unknown = set(values) - set(known)
    if unknown:
        raise EmulatorUsageError(f"unknown options {sorted(unknown)}; the command has {sorted(known)}")
    options = container.setdefault("options", [])
    for option in schema:
        if option["name"] not in values:
            if option.get("required"):
                raise EmulatorUsageError(f"option {option['name']!r} is required")
            continue
        wire = _coerce_option(option, values[option["name"]], resolved)
        options.append({"name": option["name"], "type": option["type"], "value": wire})
    if resolved.data:
        data["resolved"] = resolved.data
    return data


def modal_submit_components(modal: dict[str, Any], values: dict[str, Any]) -> list[dict[str, Any]]:
    """Mirror the modal's layout with the user's answers, as Discord's client submits it."""
    unused = set(values)

    def answer(component: dict[str, Any]) -> dict[str, Any]:
        custom_id = str(component.get("custom_id", ""))
        kind = component.get("type")
        out: dict[str, Any] = {"type": kind, "custom_id": custom_id}
        if "id" in component:
            out["id"] = component["id"]
        given = custom_id in values
        unused.discard(custom_id)
        if kind == 4:  # text input
            value = values[custom_id] if given else component.get("value") or ""
            if not isinstance(value, str):
                raise EmulatorUsageError(f"text input {custom_id!r} takes a string")
            if component.get("required", True) and not value:
                raise EmulatorUsageError(f"text input {custom_id!r} is required")
            low, high = component.get("min_length", 0), component.get("max_length", 4000)
            if value and not low <= len(value) <= high:
                raise EmulatorUsageError(f"text input {custom_id!r} must be {low}-{high} characters long")
            out["value"] = value
        else:  # selects and other value-carrying inputs
            out["values"] = list(values.get(custom_id, []))
        return out

    submitted: list[dict[str, Any]] = []
    for comp in modal.get("components") or []:
        if comp.get("type") == 1:
            submitted.append({"type": 1, "components": [answer(c) for c in comp.get("components") or []]})
        elif comp.get("type") == 18:
            submitted.append({"type": 18, "component": answer(comp["component"])})
        elif comp.get("type") == 10:  # text display: nothing to submit
            continue
        else:
            submitted.append(answer(comp))
    if unused:
        raise EmulatorUsageError(f"the modal has no inputs named {sorted(unused)}")
    return submitted
