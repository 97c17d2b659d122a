"""Forgetting, retention and export: what leaves the database, and what a user can take with them.

Images leave with the last turn that uses them, in the same transaction as the turns (no orphans).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import StoreBase, chunks
from bot.store.models import Conversation, ConversationTurn, Image, Job, TurnImage, utcnow
from bot.store.records import (
    ConversationRef,
    ConversationScope,
    ForgetResult,
    JobRecord,
    RetentionResult,
    StoredImage,
    TurnRecord,
)
from bot.store.rows import (
    conversation_ref,
    conversation_select,
    image_info_select,
    job_record,
    job_select,
    load_turn_records,
)


class PrivacyMixin(StoreBase):
    """Forget, retention and export."""

    async def forget_user(
        self,
        user_id: int,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        include_jobs: bool = False,
    ) -> ForgetResult:
        """Delete a user's conversations (all, one guild's, or one channel's) with their images; in shared
        conversations delete the user's turns and the answers to them. Images no other turn uses go too,
        in the same transaction."""
        owned = select(Conversation.id).where(Conversation.user_id == user_id)
        shared = select(Conversation.id).where(Conversation.scope == ConversationScope.SHARED.value)
        if guild_id is not None:
            owned = owned.where(Conversation.guild_id == guild_id)
            shared = shared.where(Conversation.guild_id == guild_id)
        if channel_id is not None:
            owned = owned.where(Conversation.channel_id == channel_id)
            shared = shared.where(Conversation.channel_id == channel_id)
        own_shared_turns = select(ConversationTurn.id).where(
            ConversationTurn.author_id == user_id, ConversationTurn.conversation_id.in_(shared)
        )
        doomed = or_(
            ConversationTurn.conversation_id.in_(owned),
            ConversationTurn.id.in_(own_shared_turns),
            ConversationTurn.reply_to_turn_id.in_(own_shared_turns),
        )
        async with self._write() as conn:
            touched_rows = await conn.execute(
                select(ConversationTurn.conversation_id).where(doomed).distinct()
            )
            touched = tuple(sorted(int(row[0]) for row in touched_rows))
            turn_count, candidates = await _turns_and_images(conn, doomed)
            conversations = (
                await conn.execute(delete(Conversation).where(Conversation.id.in_(owned)))
            ).rowcount
            # Answers to the user's turns go with them (ON DELETE CASCADE on reply_to_turn_id).
            await conn.execute(delete(ConversationTurn).where(ConversationTurn.id.in_(own_shared_turns)))
            images = await _delete_orphan_images(conn, candidates)
            jobs = 0
            if include_jobs:
                job_filter = [Job.user_id == user_id]
                if guild_id is not None:
                    job_filter.append(Job.guild_id == guild_id)
                if channel_id is not None:
                    job_filter.append(Job.channel_id == channel_id)
                jobs = (await conn.execute(delete(Job).where(*job_filter))).rowcount or 0
        return ForgetResult(
            conversations=conversations or 0, turns=turn_count, images=images, jobs=jobs, touched=touched
        )

    async def clear_conversation(self, conversation_id: int) -> ForgetResult:
        """Delete one conversation (all its turns) and the images only it used."""
        async with self._write() as conn:
            turn_count, candidates = await _turns_and_images(
                conn, ConversationTurn.conversation_id == conversation_id
            )
            gone = (
                await conn.execute(delete(Conversation).where(Conversation.id == conversation_id))
            ).rowcount
            images = await _delete_orphan_images(conn, candidates)
        return ForgetResult(
            conversations=gone or 0, turns=turn_count, images=images, touched=(conversation_id,)
        )

    async def delete_turns_older_than(self, cutoff: datetime) -> RetentionResult:
        """Retention: delete turns written before ``cutoff`` (with the answers to them), conversations
        created before ``cutoff`` that are left without turns (a newer empty one may be about to get its
        first turn; a later pass takes it), and images no remaining turn uses."""
        async with self._write() as conn:
            old = ConversationTurn.created_at < cutoff
            old_ids = select(ConversationTurn.id).where(old).scalar_subquery()
            turn_count, candidates = await _turns_and_images(
                conn, or_(old, ConversationTurn.reply_to_turn_id.in_(old_ids))
            )
            await conn.execute(delete(ConversationTurn).where(old))
            has_turns = select(ConversationTurn.id).where(ConversationTurn.conversation_id == Conversation.id)
            conversations = (
                await conn.execute(
                    delete(Conversation).where(Conversation.created_at < cutoff, ~has_turns.exists())
                )
            ).rowcount or 0
            images = await _delete_orphan_images(conn, candidates)
        return RetentionResult(turns=turn_count, conversations=conversations, images=images)

    async def export_user_data(self, user_id: int) -> dict[str, Any]:
        """A user's stored data as a JSON-serialisable dict: their conversations with every turn's text,
        their own turns (and the answers to them) in shared conversations, their jobs, and metadata of
        the images in those turns. Discord ids are strings, as in Discord's own API."""
        async with self._read() as conn:
            conv_rows = (
                await conn.execute(
                    conversation_select().where(Conversation.user_id == user_id).order_by(Conversation.id)
                )
            ).all()
            conv_ids = [row.id for row in conv_rows]
            turn_ids: list[int] = []
            for chunk in chunks(conv_ids):
                turn_ids += (
                    await conn.scalars(
                        select(ConversationTurn.id).where(ConversationTurn.conversation_id.in_(chunk))
                    )
                ).all()
            shared_own = select(ConversationTurn.id).where(
                ConversationTurn.author_id == user_id,
                ConversationTurn.conversation_id.not_in(
                    select(Conversation.id).where(Conversation.user_id == user_id)
                ),
            )
            shared_ids = list((await conn.scalars(shared_own)).all())
            for chunk in chunks(shared_ids):
                turn_ids += (
                    await conn.scalars(
                        select(ConversationTurn.id).where(ConversationTurn.reply_to_turn_id.in_(chunk))
                    )
                ).all()
            turns = await load_turn_records(conn, turn_ids + shared_ids)
            hashes = sorted({sha for t in turns for sha in t.image_hashes})
            images: list[StoredImage] = []
            for chunk in chunks(hashes):
                images += [
                    StoredImage(*r)
                    for r in (await conn.execute(image_info_select().where(Image.sha256.in_(chunk)))).all()
                ]
            job_rows = (
                await conn.execute(job_select().where(Job.user_id == user_id).order_by(Job.created_at))
            ).all()
        by_conv: dict[int, list[TurnRecord]] = {}
        for turn in sorted(turns, key=lambda t: t.id):
            by_conv.setdefault(turn.conversation_id, []).append(turn)
        owned = {row.id for row in conv_rows}
        return {
            "user_id": str(user_id),
            "exported_at": utcnow().isoformat(),
            "conversations": [
                {
                    **_conversation_json(conversation_ref(row)),
                    "turns": [_turn_json(t) for t in by_conv.get(row.id, [])],
                }
                for row in conv_rows
            ],
            "shared_conversation_turns": [
                _turn_json(t) for cid, ts in sorted(by_conv.items()) if cid not in owned for t in ts
            ],
            "jobs": [_job_json(job_record(row)) for row in job_rows],
            "images": [
                {
                    "sha256": img.sha256,
                    "width": img.width,
                    "height": img.height,
                    "size_bytes": img.size_bytes,
                    "created_at": img.created_at.isoformat(),
                }
                for img in sorted(images, key=lambda i: i.sha256)
            ],
        }


async def _turns_and_images(conn: AsyncConnection, where: Any) -> tuple[int, set[str]]:
    """How many turns match ``where`` and which images they use (candidates for garbage collection)."""
    count = await conn.scalar(select(func.count()).select_from(ConversationTurn).where(where))
    hashes = (
        await conn.scalars(
            select(TurnImage.image_sha256)
            .distinct()
            .join(ConversationTurn, ConversationTurn.id == TurnImage.turn_id)
            .where(where)
        )
    ).all()
    return int(count or 0), set(hashes)


async def _delete_orphan_images(conn: AsyncConnection, candidates: Iterable[str]) -> int:
    """Delete the candidate images no turn refers to any more (in the caller's transaction)."""
    deleted = 0
    still_used = select(TurnImage.turn_id).where(TurnImage.image_sha256 == Image.sha256).exists()
    for chunk in chunks(sorted(candidates)):
        result = await conn.execute(delete(Image).where(and_(Image.sha256.in_(chunk), ~still_used)))
        deleted += result.rowcount or 0
    return deleted


def _conversation_json(ref: ConversationRef) -> dict[str, Any]:
    return {
        "id": ref.id,
        "scope": ref.key.scope.value,
        "guild_id": _sid(ref.key.guild_id),
        "channel_id": _sid(ref.key.channel_id),
        "created_at": ref.created_at.isoformat(),
    }


def _turn_json(turn: TurnRecord) -> dict[str, Any]:
    return {
        "id": turn.id,
        "conversation_id": turn.conversation_id,
        "role": turn.role,
        "text": turn.text,
        "author_id": _sid(turn.author_id),
        "message_ids": [str(m) for m in turn.message_ids],
        "images": list(turn.image_hashes),
        "token_count": turn.token_count,
        "created_at": turn.created_at.isoformat(),
    }


def _job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind.value,
        "guild_id": _sid(job.guild_id),
        "channel_id": _sid(job.channel_id),
        "prompt": job.prompt,
        "params": job.params,
        "seed": job.seed,
        "status": job.status.value,
        "error": job.error,
        "timings": job.timings,
        "message_ids": [str(m) for m in job.message_ids],
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _sid(value: int | None) -> str | None:
    return None if value is None else str(value)
