"""The conversation store: the only code of the bot that speaks SQL.

One ``Store`` wraps one async SQLAlchemy engine. Every public method is one transaction, so a crash
between two calls never leaves half a turn or half a job behind, and every answer is a frozen record
(``bot.store.records``), never a live row.

On SQLite, writes from this process also queue on an asyncio lock: SQLite has one writer at a time anyway,
and waiting on the lock is fair and instant where waiting in SQLite's busy handler means polling with
sleeps. The busy timeout still covers other processes (``janus-bot db upgrade`` while the bot runs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.store.context import TurnCost, plan_context
from bot.store.database import WRITE_OPTION, create_engine
from bot.store.errors import ConversationNotFound, JobNotFound, TurnNotFound
from bot.store.models import (
    AuditLog,
    ChannelSettings,
    Conversation,
    ConversationTurn,
    GuildSettings,
    Image,
    Job,
    TurnImage,
    TurnMessage,
    utcnow,
)
from bot.store.png import png_dimensions
from bot.store.records import (
    IMAGE_DROPPED_MARKER,
    SCOPE_SETTING,
    AuditEntry,
    ContextBudget,
    ConversationKey,
    ConversationRef,
    ConversationScope,
    ForgetResult,
    JobKind,
    JobRecord,
    JobStatus,
    ModelContext,
    RetentionResult,
    StoredImage,
    TurnRecord,
)
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import Role, Turn

TokenCounter = Callable[[str], int]

_CONTEXT_PAGE = 64  # turns fetched per step when building a context; 4096 tokens rarely need more
_IN_CHUNK = 500  # ids per IN (...) list, well under every backend's bound-parameter limit
_ROLES = ("user", "assistant")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3 bytes a token for the DeepSeek BPE on English text)."""
    return (len(text.encode("utf-8")) + 2) // 3


class Store:
    """Conversations, turns, images, jobs, settings and the audit log of the bot."""

    def __init__(self, engine: AsyncEngine, *, count_tokens: TokenCounter = estimate_tokens) -> None:
        """Wrap an engine made by :func:`bot.store.database.create_engine` (it sets SQLite up)."""
        self.engine = engine
        self.count_tokens = count_tokens
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(
        cls, url: str, *, count_tokens: TokenCounter = estimate_tokens, upgrade: bool = True
    ) -> Store:
        """Connect to ``url`` and (by default) upgrade its schema to the newest migration first."""
        engine = create_engine(url)
        if upgrade:
            from bot.store.migrate import upgrade_database

            try:
                await upgrade_database(engine)
            except BaseException:
                await engine.dispose()
                raise
        return cls(engine, count_tokens=count_tokens)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on any exception."""
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    # ---- conversations ---------------------------------------------------------------------------

    async def scope_for_channel(
        self, *, guild_id: int | None, channel_id: int, parent_channel_id: int | None = None
    ) -> ConversationScope:
        """The scope a message in this channel gets: DM without a guild, else the channel's (or, for a
        thread, its parent channel's, or the guild's) ``conversation_scope`` setting, USER by default."""
        if guild_id is None:
            return ConversationScope.DM
        settings = await self.effective_settings(
            guild_id=guild_id, channel_id=channel_id, parent_channel_id=parent_channel_id
        )
        if settings.get(SCOPE_SETTING) == ConversationScope.SHARED.value:
            return ConversationScope.SHARED
        return ConversationScope.USER

    async def open_conversation(
        self, *, guild_id: int | None, channel_id: int, user_id: int, parent_channel_id: int | None = None
    ) -> ConversationRef:
        """The conversation a message from ``user_id`` in this channel or thread continues: the scope
        from the settings (:meth:`scope_for_channel`), then the key, then :meth:`resolve_conversation`.
        The one call the chat cog needs, so no caller can pick a scope that leaks between users."""
        scope = await self.scope_for_channel(
            guild_id=guild_id, channel_id=channel_id, parent_channel_id=parent_channel_id
        )
        key = ConversationKey.for_scope(scope, guild_id=guild_id, channel_id=channel_id, user_id=user_id)
        return await self.resolve_conversation(key)

    async def resolve_conversation(self, key: ConversationKey) -> ConversationRef:
        """The conversation for ``key``, created on first use."""
        text_key = key.as_text()
        async with self._read() as conn:
            row = (await conn.execute(_conversation_select().where(Conversation.key == text_key))).first()
        if row is not None:
            return _conversation_ref(row)
        now = utcnow()
        values = {
            "key": text_key,
            "scope": key.scope.value,
            "guild_id": key.guild_id,
            "channel_id": key.channel_id,
            "user_id": key.user_id,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._write() as conn:
                row = (await conn.execute(_conversation_select().where(Conversation.key == text_key))).first()
                if row is None:
                    await conn.execute(insert(Conversation).values(**values))
                    row = (
                        await conn.execute(_conversation_select().where(Conversation.key == text_key))
                    ).one()
        except IntegrityError:  # another process created it between our read and write (PostgreSQL)
            async with self._read() as conn:
                row = (await conn.execute(_conversation_select().where(Conversation.key == text_key))).one()
        return _conversation_ref(row)

    async def get_conversation(self, conversation_id: int) -> ConversationRef | None:
        async with self._read() as conn:
            row = (
                await conn.execute(_conversation_select().where(Conversation.id == conversation_id))
            ).first()
        return None if row is None else _conversation_ref(row)

    async def conversation_for_message(self, message_id: int) -> ConversationRef | None:
        """The conversation a Discord message (user's or bot's) belongs to, e.g. for replies."""
        stmt = (
            _conversation_select()
            .join(ConversationTurn, ConversationTurn.conversation_id == Conversation.id)
            .join(TurnMessage, TurnMessage.turn_id == ConversationTurn.id)
            .where(TurnMessage.message_id == message_id)
        )
        async with self._read() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _conversation_ref(row)

    async def turn_for_message(self, message_id: int) -> TurnRecord | None:
        """The turn a Discord message shows, if it is still stored."""
        async with self._read() as conn:
            turn_id = await conn.scalar(
                select(TurnMessage.turn_id).where(TurnMessage.message_id == message_id)
            )
            if turn_id is None:
                return None
            turns = await _load_turn_records(conn, [turn_id])
        return turns[0] if turns else None

    async def append_turn(
        self,
        conversation_id: int,
        role: Role,
        text: str,
        *,
        author_id: int | None = None,
        images: Sequence[bytes] = (),
        message_ids: Iterable[int] = (),
        reply_to_turn_id: int | None = None,
        count_tokens: TokenCounter | None = None,
        created_at: datetime | None = None,
    ) -> TurnRecord:
        """Write one turn with its images (PNG bytes, deduplicated by sha256) in one transaction.

        The token count of ``text`` is taken here, with ``count_tokens`` or the store's counter, and kept
        with the turn so that building a context never tokenizes old turns again."""
        if role not in _ROLES:
            raise InvalidRequest(f"A turn's role must be 'user' or 'assistant', not {role!r}.")
        tokens = int((count_tokens or self.count_tokens)(text))
        blobs = [(hashlib.sha256(png).hexdigest(), png, *png_dimensions(png)) for png in images]
        hashes = tuple(sha for sha, *_ in blobs)
        messages = tuple(dict.fromkeys(int(m) for m in message_ids))
        now = created_at or utcnow()
        try:
            async with self._write() as conn:
                await _insert_missing_images(conn, blobs, now)
                result = await conn.execute(
                    insert(ConversationTurn).values(
                        conversation_id=conversation_id,
                        role=role,
                        text=text,
                        author_id=author_id,
                        reply_to_turn_id=reply_to_turn_id,
                        token_count=tokens,
                        created_at=now,
                    )
                )
                turn_id = int(result.inserted_primary_key[0])
                if hashes:
                    await conn.execute(
                        insert(TurnImage),
                        [
                            {"turn_id": turn_id, "position": i, "image_sha256": sha}
                            for i, sha in enumerate(hashes)
                        ],
                    )
                if messages:
                    await conn.execute(
                        insert(TurnMessage), [{"message_id": m, "turn_id": turn_id} for m in messages]
                    )
                await conn.execute(
                    update(Conversation).where(Conversation.id == conversation_id).values(updated_at=now)
                )
        except IntegrityError as exc:
            raise await self._explain_turn_integrity_error(conversation_id, reply_to_turn_id) from exc
        return TurnRecord(
            id=turn_id,
            conversation_id=conversation_id,
            role=role,
            text=text,
            author_id=author_id,
            message_ids=messages,
            image_hashes=hashes,
            token_count=tokens,
            created_at=now,
            reply_to_turn_id=reply_to_turn_id,
        )

    async def _explain_turn_integrity_error(self, conversation_id: int, reply_to: int | None) -> Exception:
        if await self.get_conversation(conversation_id) is None:
            return ConversationNotFound("This conversation was deleted (forgotten); start a new one.")
        if reply_to is not None:
            return TurnNotFound("The message this answers is no longer in memory.")
        return InvalidRequest("One of these Discord messages is already stored with another turn.")

    async def add_turn_messages(self, turn_id: int, message_ids: Iterable[int]) -> None:
        """Attach Discord message ids to a turn after it was written (the reply is posted later)."""
        rows = [{"message_id": int(m), "turn_id": turn_id} for m in dict.fromkeys(message_ids)]
        if not rows:
            return
        try:
            async with self._write() as conn:
                await conn.execute(insert(TurnMessage), rows)
        except IntegrityError as exc:
            raise TurnNotFound("That turn is no longer stored, or a message is already attached.") from exc

    async def list_turns(self, conversation_id: int, *, limit: int | None = None) -> list[TurnRecord]:
        """Turns oldest first (the newest ``limit`` if given)."""
        stmt = (
            select(ConversationTurn.id)
            .where(ConversationTurn.conversation_id == conversation_id)
            .order_by(ConversationTurn.id.desc())
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._read() as conn:
            ids = list((await conn.scalars(stmt)).all())
            records = await _load_turn_records(conn, ids)
        return sorted(records, key=lambda t: t.id)

    async def build_context(
        self,
        conversation_id: int,
        budget: ContextBudget,
        *,
        up_to_turn_id: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> ModelContext:
        """The model input ending with ``up_to_turn_id`` (default: the newest turn) within ``budget``.

        Raises ``PromptTooLong`` when the current turn alone does not fit, ``TurnNotFound`` when
        ``up_to_turn_id`` is not (any more) in this conversation, ``InvalidRequest`` when it is empty.
        See :mod:`bot.store.context` for the rules."""
        marker_tokens = int((count_tokens or self.count_tokens)(IMAGE_DROPPED_MARKER))
        async with self._read() as conn:
            fetched: list[TurnCost] = []
            page = _CONTEXT_PAGE
            while True:
                more = await _turn_costs(conn, conversation_id, up_to_turn_id, before=fetched, limit=page)
                fetched.extend(more)
                if not fetched:
                    if up_to_turn_id is not None:
                        raise TurnNotFound("The message to answer is no longer in this conversation.")
                    raise InvalidRequest("There is nothing in this conversation to answer yet.")
                if up_to_turn_id is not None and fetched[0].id != up_to_turn_id:
                    raise TurnNotFound("The message to answer is no longer in this conversation.")
                plan = plan_context(fetched, budget, marker_tokens)
                if len(more) < page or not plan.used_all_given:
                    break
                page *= 2
            kept = {sha for p in plan.turns for sha in p.kept_images}
            data = await _image_data(conn, kept)
        turns = tuple(
            Turn(role=p.turn.role, text=p.text, images=tuple(data[sha] for sha in p.kept_images))  # type: ignore[arg-type]
            for p in plan.turns
        )
        return ModelContext(
            turns=turns,
            token_count=plan.token_count,
            turn_ids=tuple(p.turn.id for p in plan.turns),
            omitted_turns=plan.omitted_turns,
            omitted_images=plan.omitted_images,
        )

    async def get_image(self, sha256: str) -> bytes | None:
        async with self._read() as conn:
            return await conn.scalar(select(Image.data).where(Image.sha256 == sha256))

    async def image_info(self, sha256: str) -> StoredImage | None:
        async with self._read() as conn:
            row = (await conn.execute(_image_info_select().where(Image.sha256 == sha256))).first()
        return None if row is None else StoredImage(*row)

    # ---- privacy ---------------------------------------------------------------------------------

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
        return ForgetResult(conversations=conversations or 0, turns=turn_count, images=images, jobs=jobs)

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
        return ForgetResult(conversations=gone or 0, turns=turn_count, images=images)

    async def delete_turns_older_than(self, cutoff: datetime) -> RetentionResult:
        """Retention: delete turns written before ``cutoff`` (with the answers to them), conversations
        left without turns whose last activity is before ``cutoff`` (a newer empty one may be about to
        get its first turn; the next pass takes it), and images no remaining turn uses."""
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
                    delete(Conversation).where(Conversation.updated_at < cutoff, ~has_turns.exists())
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
                    _conversation_select().where(Conversation.user_id == user_id).order_by(Conversation.id)
                )
            ).all()
            conv_ids = [row.id for row in conv_rows]
            turn_ids: list[int] = []
            for chunk in _chunks(conv_ids):
                turn_ids += (
                    await conn.scalars(
                        select(ConversationTurn.id).where(ConversationTurn.conversation_id.in_(chunk))
                    )
                ).all()
            shared_own = select(ConversationTurn.id).where(
                ConversationTurn.author_id == user_id, ConversationTurn.conversation_id.not_in(conv_ids)
            )
            shared_ids = list((await conn.scalars(shared_own)).all())
            for chunk in _chunks(shared_ids):
                turn_ids += (
                    await conn.scalars(
                        select(ConversationTurn.id).where(ConversationTurn.reply_to_turn_id.in_(chunk))
                    )
                ).all()
            turns = await _load_turn_records(conn, turn_ids + shared_ids)
            hashes = sorted({sha for t in turns for sha in t.image_hashes})
            images: list[StoredImage] = []
            for chunk in _chunks(hashes):
                images += [
                    StoredImage(*r)
                    for r in (await conn.execute(_image_info_select().where(Image.sha256.in_(chunk)))).all()
                ]
            job_rows = (
                await conn.execute(_job_select().where(Job.user_id == user_id).order_by(Job.created_at))
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
                    **_conversation_json(_conversation_ref(row)),
                    "turns": [_turn_json(t) for t in by_conv.get(row.id, [])],
                }
                for row in conv_rows
            ],
            "shared_conversation_turns": [
                _turn_json(t) for cid, ts in sorted(by_conv.items()) if cid not in owned for t in ts
            ],
            "jobs": [_job_json(_job_record(row)) for row in job_rows],
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

    # ---- jobs ------------------------------------------------------------------------------------

    async def create_job(
        self,
        kind: JobKind,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        prompt: str,
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Record a new job with status queued; the id (generated unless given) goes into custom_ids."""
        _check_seed(seed)
        record = JobRecord(
            id=job_id or uuid.uuid4().hex,
            kind=JobKind(kind),
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            prompt=prompt,
            params=_json_dict(params or {}, "job parameters"),
            seed=seed,
            status=JobStatus.QUEUED,
            error=None,
            created_at=utcnow(),
            started_at=None,
            finished_at=None,
        )
        try:
            async with self._write() as conn:
                await conn.execute(
                    insert(Job).values(
                        id=record.id,
                        kind=record.kind.value,
                        user_id=user_id,
                        guild_id=guild_id,
                        channel_id=channel_id,
                        prompt=prompt,
                        params=record.params,
                        seed=seed,
                        status=record.status.value,
                        error=None,
                        timings={},
                        message_ids=[],
                        created_at=record.created_at,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequest(f"A job with id {record.id} already exists.") from exc
        return record

    async def mark_job_running(self, job_id: str) -> JobRecord:
        """Queued -> running (with its start time). A job that already ended stays as it is."""
        async with self._write() as conn:
            await conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, started_at=utcnow())
            )
            return await _require_job(conn, job_id)

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        seed: int | None = None,
        timings: Mapping[str, float] | None = None,
        message_ids: Iterable[int] = (),
    ) -> JobRecord:
        """End a job: done, failed (with ``error``) or cancelled. The first ending wins: a cancel that
        races a finished job does not turn it into a cancelled one; timings and messages are still added."""
        status = JobStatus(status)
        _check_seed(seed)
        if not status.is_terminal:
            raise InvalidRequest(f"finish_job needs a final status, not {status.value}.")
        async with self._write() as conn:
            current = await _require_job(conn, job_id)
            values: dict[str, Any] = {
                "timings": {**current.timings, **{k: float(v) for k, v in (timings or {}).items()}},
                "message_ids": list(dict.fromkeys([*current.message_ids, *(int(m) for m in message_ids)])),
            }
            if not current.status.is_terminal:
                values.update(status=status.value, error=error, finished_at=utcnow())
                if seed is not None:
                    values["seed"] = seed
            await conn.execute(update(Job).where(Job.id == job_id).values(**values))
            return await _require_job(conn, job_id)

    async def add_job_messages(self, job_id: str, message_ids: Iterable[int]) -> JobRecord:
        async with self._write() as conn:
            current = await _require_job(conn, job_id)
            merged = list(dict.fromkeys([*current.message_ids, *(int(m) for m in message_ids)]))
            await conn.execute(update(Job).where(Job.id == job_id).values(message_ids=merged))
            return await _require_job(conn, job_id)

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(_job_select().where(Job.id == job_id))).first()
        return None if row is None else _job_record(row)

    async def list_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int = 20,
    ) -> list[JobRecord]:
        """Newest first."""
        stmt = _job_select().order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(Job.user_id == user_id)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        if statuses is not None:
            stmt = stmt.where(Job.status.in_([JobStatus(s).value for s in statuses]))
        async with self._read() as conn:
            return [_job_record(row) for row in (await conn.execute(stmt)).all()]

    async def fail_interrupted_jobs(self, reason: str = "The bot restarted before this job finished.") -> int:
        """At start: jobs still queued or running belong to a previous process; mark them failed."""
        async with self._write() as conn:
            result = await conn.execute(
                update(Job)
                .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
                .values(status=JobStatus.FAILED.value, error=reason, finished_at=utcnow())
            )
        return result.rowcount or 0

    # ---- settings and audit ----------------------------------------------------------------------

    async def get_guild_settings(self, guild_id: int) -> dict[str, Any]:
        async with self._read() as conn:
            data = await conn.scalar(select(GuildSettings.data).where(GuildSettings.guild_id == guild_id))
        return dict(data or {})

    async def update_guild_settings(
        self, guild_id: int, changes: Mapping[str, Any], *, actor_id: int | None = None
    ) -> dict[str, Any]:
        """Merge ``changes`` (a None value removes the key); with ``actor_id`` an audit entry is written
        in the same transaction. Returns the new settings."""
        changes = _json_dict(changes, "settings")
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
        async with self._read() as conn:
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
        changes = _json_dict(changes, "settings")
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
        """Guild settings, overridden by the parent channel's, overridden by the channel's."""
        channels = [c for c in (parent_channel_id, channel_id) if c is not None]
        async with self._read() as conn:
            merged: dict[str, Any] = {}
            if guild_id is not None:
                merged.update(
                    await conn.scalar(select(GuildSettings.data).where(GuildSettings.guild_id == guild_id))
                    or {}
                )
            if channels:
                rows = dict(
                    (
                        await conn.execute(
                            select(ChannelSettings.channel_id, ChannelSettings.data).where(
                                ChannelSettings.channel_id.in_(channels)
                            )
                        )
                    ).all()
                )
                for channel in channels:
                    merged.update(rows.get(channel) or {})
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
        details = _json_dict(details or {}, "audit details")
        async with self._write() as conn:
            return await _insert_audit(conn, guild_id, actor_id, action, target, details)

    async def list_audit(self, *, guild_id: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """Newest first; all guilds when ``guild_id`` is None."""
        stmt = _audit_select().order_by(AuditLog.id.desc()).limit(limit)
        if guild_id is not None:
            stmt = stmt.where(AuditLog.guild_id == guild_id)
        async with self._read() as conn:
            return [AuditEntry(*row) for row in (await conn.execute(stmt)).all()]


# ---- SQL helpers (module-private) -------------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _conversation_select():  # type: ignore[no-untyped-def]
    return select(
        Conversation.id,
        Conversation.scope,
        Conversation.guild_id,
        Conversation.channel_id,
        Conversation.user_id,
        Conversation.created_at,
        Conversation.updated_at,
    )


def _conversation_ref(row: Row[Any]) -> ConversationRef:
    key = ConversationKey(ConversationScope(row.scope), row.guild_id, row.channel_id, row.user_id)
    return ConversationRef(id=row.id, key=key, created_at=row.created_at, updated_at=row.updated_at)


def _image_info_select():  # type: ignore[no-untyped-def]
    return select(Image.sha256, Image.width, Image.height, Image.size_bytes, Image.created_at)


def _job_select():  # type: ignore[no-untyped-def]
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
    )


def _job_record(row: Row[Any]) -> JobRecord:
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
    )


async def _require_job(conn: AsyncConnection, job_id: str) -> JobRecord:
    row = (await conn.execute(_job_select().where(Job.id == job_id))).first()
    if row is None:
        raise JobNotFound("That job is no longer stored.")
    return _job_record(row)


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
    return AuditEntry(int(result.inserted_primary_key[0]), guild_id, actor_id, action, target, details, now)


async def _insert_missing_images(
    conn: AsyncConnection, blobs: Sequence[tuple[str, bytes, int, int]], now: datetime
) -> None:
    """Store each image once: a hash already present is the same bytes (sha256), so it is reused."""
    if not blobs:
        return
    wanted = {sha: (png, w, h) for sha, png, w, h in blobs}
    present = set((await conn.scalars(select(Image.sha256).where(Image.sha256.in_(list(wanted))))).all())
    rows = [
        {"sha256": sha, "data": png, "width": w, "height": h, "size_bytes": len(png), "created_at": now}
        for sha, (png, w, h) in wanted.items()
        if sha not in present
    ]
    if rows:
        await conn.execute(insert(Image), rows)


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
    for chunk in _chunks(sorted(candidates)):
        result = await conn.execute(delete(Image).where(and_(Image.sha256.in_(chunk), ~still_used)))
        deleted += result.rowcount or 0
    return deleted


async def _load_turn_records(conn: AsyncConnection, turn_ids: Sequence[int]) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    for chunk in _chunks(list(turn_ids)):
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


async def _turn_costs(
    conn: AsyncConnection, conversation_id: int, up_to: int | None, *, before: Sequence[TurnCost], limit: int
) -> list[TurnCost]:
    """The next ``limit`` turns, newest first, older than those already fetched (``before``), with their
    image hashes: one statement (so one consistent read, and one round trip to the database thread)."""
    page = (
        select(
            ConversationTurn.id, ConversationTurn.role, ConversationTurn.text, ConversationTurn.token_count
        )
        .where(ConversationTurn.conversation_id == conversation_id)
        .order_by(ConversationTurn.id.desc())
        .limit(limit)
    )
    if before:
        page = page.where(ConversationTurn.id < before[-1].id)
    elif up_to is not None:
        page = page.where(ConversationTurn.id <= up_to)
    turns = page.subquery()
    stmt = (
        select(turns, TurnImage.image_sha256)
        .outerjoin(TurnImage, TurnImage.turn_id == turns.c.id)
        .order_by(turns.c.id.desc(), TurnImage.position)
    )
    costs: list[TurnCost] = []
    for row in (await conn.execute(stmt)).all():
        if costs and costs[-1].id == row.id:
            last = costs[-1]
            costs[-1] = TurnCost(
                last.id, last.role, last.text, last.token_count, (*last.image_hashes, row.image_sha256)
            )
        else:
            images = (row.image_sha256,) if row.image_sha256 is not None else ()
            costs.append(TurnCost(row.id, row.role, row.text, row.token_count, images))
    return costs


async def _image_data(conn: AsyncConnection, hashes: set[str]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for chunk in _chunks(sorted(hashes)):
        data.update(
            (await conn.execute(select(Image.sha256, Image.data).where(Image.sha256.in_(chunk)))).all()
        )
    return data


def _check_seed(seed: int | None) -> None:
    """Seeds are stored as signed 64-bit integers (BIGINT on every backend)."""
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise InvalidRequest("The seed must be an integer between 0 and 9223372036854775807.")


def _merge(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _json_dict(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A plain JSON-safe copy, or a clear error now instead of a failed commit later."""
    try:
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"The {what} must be JSON data (strings, numbers, lists, dicts): {exc}"
        ) from None


def _conversation_json(ref: ConversationRef) -> dict[str, Any]:
    return {
        "id": ref.id,
        "scope": ref.key.scope.value,
        "guild_id": _sid(ref.key.guild_id),
        "channel_id": _sid(ref.key.channel_id),
        "created_at": ref.created_at.isoformat(),
        "updated_at": ref.updated_at.isoformat(),
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
