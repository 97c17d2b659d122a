"""Per-guild and per-channel settings (free-form JSON dicts the bot defines) and the admin audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, literal, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import StoreBase, inserted_id, json_dict
from bot.store.models import AuditLog, ChannelSettings, GuildSettings, utcnow
from bot.store.records import AuditEntry


class SettingsMixin(StoreBase):
    """Guild and channel settings as JSON dicts, and the audit log of admin actions."""

    async def get_guild_settings(self, guild_id: int) -> dict[str, Any]:
        async with self._query() as conn:
            data = await conn.scalar(select(GuildSettings.data).where(GuildSettings.guild_id == guild_id))
        return dict(data or {})

    async def update_guild_settings(
        self, guild_id: int, changes: Mapping[str, Any], *, actor_id: int | None = None
    ) -> dict[str, Any]:
        """Merge ``changes`` (a None value removes the key); with ``actor_id`` an audit entry is written
        in the same transaction. Returns the new settings."""
        changes = json_dict(changes, "settings")
        async with self._write() as conn:
            data = await conn.scalar(select(GuildSettings.data).where(GuildSettings.guild_id == guild_id))
            merged = _merge(data, changes)
            if data is None:
                await conn.execute(
                    insert(GuildSettings).values(guild_id=guild_id, data=merged, updated_at=utcnow())
                )
            else:
                await conn.execute(
                    update(GuildSettings)
                    .where(GuildSettings.guild_id == guild_id)
                    .values(data=merged, updated_at=utcnow())
                )
            if actor_id is not None:
                await _insert_audit(
                    conn, guild_id, actor_id, "settings.guild", f"guild:{guild_id}", {"changes": changes}
                )
        return merged

    async def get_channel_settings(self, channel_id: int) -> dict[str, Any]:
        async with self._query() as conn:
            data = await conn.scalar(
                select(ChannelSettings.data).where(ChannelSettings.channel_id == channel_id)
            )
        return dict(data or {})

    async def update_channel_settings(
        self,
        channel_id: int,
        changes: Mapping[str, Any],
        *,
        guild_id: int | None = None,
        actor_id: int | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`update_guild_settings`, for one channel or thread."""
        changes = json_dict(changes, "settings")
        async with self._write() as conn:
            data = await conn.scalar(
                select(ChannelSettings.data).where(ChannelSettings.channel_id == channel_id)
            )
            merged = _merge(data, changes)
            if data is None:
                await conn.execute(
                    insert(ChannelSettings).values(
                        channel_id=channel_id, guild_id=guild_id, data=merged, updated_at=utcnow()
                    )
                )
            else:
                await conn.execute(
                    update(ChannelSettings)
                    .where(ChannelSettings.channel_id == channel_id)
                    .values(data=merged, updated_at=utcnow())
                )
            if actor_id is not None:
                await _insert_audit(
                    conn,
                    guild_id,
                    actor_id,
                    "settings.channel",
                    f"channel:{channel_id}",
                    {"changes": changes},
                )
        return merged

    async def effective_settings(
        self, *, guild_id: int | None, channel_id: int | None, parent_channel_id: int | None = None
    ) -> dict[str, Any]:
        """Guild settings, overridden by the parent channel's, overridden by the channel's.

        One statement (a UNION of the levels), because every chat message asks this for its scope."""
        levels = []
        if guild_id is not None:
            levels.append(
                select(literal(0).label("level"), GuildSettings.data.label("data")).where(
                    GuildSettings.guild_id == guild_id
                )
            )
        for level, channel in ((1, parent_channel_id), (2, channel_id)):
            if channel is not None:
                levels.append(
                    select(literal(level).label("level"), ChannelSettings.data.label("data")).where(
                        ChannelSettings.channel_id == channel
                    )
                )
        if not levels:
            return {}
        async with self._query() as conn:
            rows = (await conn.execute(union_all(*levels))).all()
        merged: dict[str, Any] = {}
        for _, data in sorted(rows, key=lambda row: row[0]):
            merged.update(data or {})
        return merged

    async def record_audit(
        self,
        *,
        actor_id: int,
        action: str,
        guild_id: int | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        details = json_dict(details or {}, "audit details")
        async with self._write() as conn:
            return await _insert_audit(conn, guild_id, actor_id, action, target, details)

    async def list_audit(self, *, guild_id: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """Newest first; all guilds when ``guild_id`` is None."""
        stmt = _audit_select().order_by(AuditLog.id.desc()).limit(limit)
        if guild_id is not None:
            stmt = stmt.where(AuditLog.guild_id == guild_id)
        async with self._query() as conn:
            return [AuditEntry(*row) for row in (await conn.execute(stmt)).all()]


def _audit_select():  # type: ignore[no-untyped-def]
    return select(
        AuditLog.id,
        AuditLog.guild_id,
        AuditLog.actor_id,
        AuditLog.action,
        AuditLog.target,
        AuditLog.details,
        AuditLog.created_at,
    )


async def _insert_audit(
    conn: AsyncConnection,
    guild_id: int | None,
    actor_id: int,
    action: str,
    target: str | None,
    details: dict[str, Any],
) -> AuditEntry:
    now = utcnow()
    result = await conn.execute(
        insert(AuditLog).values(
            guild_id=guild_id,
            actor_id=actor_id,
            action=action,
            target=target,
            details=details,
            created_at=now,
        )
    )
    return AuditEntry(inserted_id(result), guild_id, actor_id, action, target, details, now)


def _merge(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
