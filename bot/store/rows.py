"""Reading rows into records: the SELECTs and conversions several parts of the store share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import chunks
from bot.store.models import Conversation, ConversationTurn, Image, Job, TurnImage, TurnMessage
from bot.store.records import (
    ConversationKey,
    ConversationRef,
    ConversationScope,
    JobKind,
    JobRecord,
    JobStatus,
    TurnRecord,
)


def conversation_select():  # type: ignore[no-untyped-def]
    return select(
        Conversation.id,
        Conversation.scope,
        Conversation.guild_id,
        Conversation.channel_id,
        Conversation.user_id,
        Conversation.created_at,
    )


def conversation_ref(row: Row[Any]) -> ConversationRef:
    key = ConversationKey(ConversationScope(row.scope), row.guild_id, row.channel_id, row.user_id)
    return ConversationRef(id=row.id, key=key, created_at=row.created_at)


def image_info_select():  # type: ignore[no-untyped-def]
    return select(Image.sha256, Image.width, Image.height, Image.size_bytes, Image.created_at)


def job_select():  # type: ignore[no-untyped-def]
    return select(
        Job.id,
        Job.kind,
        Job.user_id,
        Job.guild_id,
        Job.channel_id,
        Job.prompt,
        Job.params,
        Job.seed,
        Job.status,
        Job.error,
        Job.created_at,
        Job.started_at,
        Job.finished_at,
        Job.timings,
        Job.message_ids,
        Job.owner,
    )


def job_record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=JobKind(row.kind),
        user_id=row.user_id,
        guild_id=row.guild_id,
        channel_id=row.channel_id,
        prompt=row.prompt,
        params=dict(row.params or {}),
        seed=row.seed,
        status=JobStatus(row.status),
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        timings=dict(row.timings or {}),
        message_ids=tuple(row.message_ids or ()),
        owner=row.owner,
    )


async def load_turn_records(conn: AsyncConnection, turn_ids: Sequence[int]) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    for chunk in chunks(list(turn_ids)):
        rows = (
            await conn.execute(
                select(
                    ConversationTurn.id,
                    ConversationTurn.conversation_id,
                    ConversationTurn.role,
                    ConversationTurn.text,
                    ConversationTurn.author_id,
                    ConversationTurn.token_count,
                    ConversationTurn.created_at,
                    ConversationTurn.reply_to_turn_id,
                ).where(ConversationTurn.id.in_(chunk))
            )
        ).all()
        images: dict[int, list[str]] = {}
        for turn_id, sha in (
            await conn.execute(
                select(TurnImage.turn_id, TurnImage.image_sha256)
                .where(TurnImage.turn_id.in_(chunk))
                .order_by(TurnImage.turn_id, TurnImage.position)
            )
        ).all():
            images.setdefault(turn_id, []).append(sha)
        messages: dict[int, list[int]] = {}
        for message_id, turn_id in (
            await conn.execute(
                select(TurnMessage.message_id, TurnMessage.turn_id)
                .where(TurnMessage.turn_id.in_(chunk))
                .order_by(TurnMessage.message_id)
            )
        ).all():
            messages.setdefault(turn_id, []).append(message_id)
        records += [
            TurnRecord(
                id=row.id,
                conversation_id=row.conversation_id,
                role=row.role,
                text=row.text,
                author_id=row.author_id,
                message_ids=tuple(messages.get(row.id, ())),
                image_hashes=tuple(images.get(row.id, ())),
                token_count=row.token_count,
                created_at=row.created_at,
                reply_to_turn_id=row.reply_to_turn_id,
            )
            for row in rows
        ]
    return records
