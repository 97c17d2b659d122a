"""Conversations and their turns: resolving a conversation, appending turns with images, building the
model context. Images are stored once per sha256 and shared by the turns that show them."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import TokenCounter, chunks, insert_missing, inserted_id
from bot.store.context import TurnCost, plan_context
from bot.store.errors import ConversationNotFound, TurnNotFound
from bot.store.models import Conversation, ConversationTurn, Image, TurnImage, TurnMessage, utcnow
from bot.store.png import png_dimensions
from bot.store.records import (
    IMAGE_DROPPED_MARKER,
    SCOPE_SETTING,
    ContextBudget,
    ConversationKey,
    ConversationRef,
    ConversationScope,
    ModelContext,
    StoredImage,
    TurnRecord,
)
from bot.store.rows import conversation_ref, conversation_select, image_info_select, load_turn_records
from bot.store.settings import SettingsMixin
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import Role, Turn

_CONTEXT_PAGE = 64  # turns fetched per step when building a context; 4096 tokens rarely need more
_ROLES = ("user", "assistant")


class ConversationsMixin(SettingsMixin):
    """Conversations, turns, images and context building (scopes come from the settings)."""

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
        async with self._query() as conn:
            row = (await conn.execute(conversation_select().where(Conversation.key == text_key))).first()
        if row is not None:
            return conversation_ref(row)
        now = utcnow()
        values = {
            "key": text_key,
            "scope": key.scope.value,
            "guild_id": key.guild_id,
            "channel_id": key.channel_id,
            "user_id": key.user_id,
            "created_at": now,
        }
        try:
            async with self._write() as conn:
                row = (await conn.execute(conversation_select().where(Conversation.key == text_key))).first()
                if row is None:
                    await conn.execute(insert(Conversation).values(**values))
                    row = (
                        await conn.execute(conversation_select().where(Conversation.key == text_key))
                    ).one()
        except IntegrityError:  # another process created it between our read and write (PostgreSQL)
            async with self._query() as conn:
                row = (await conn.execute(conversation_select().where(Conversation.key == text_key))).one()
        return conversation_ref(row)

    async def get_conversation(self, conversation_id: int) -> ConversationRef | None:
        async with self._query() as conn:
            row = (
                await conn.execute(conversation_select().where(Conversation.id == conversation_id))
            ).first()
        return None if row is None else conversation_ref(row)

    async def conversation_for_message(self, message_id: int) -> ConversationRef | None:
        """The conversation a Discord message (user's or bot's) belongs to, e.g. for replies."""
        stmt = (
            conversation_select()
            .join(ConversationTurn, ConversationTurn.conversation_id == Conversation.id)
            .join(TurnMessage, TurnMessage.turn_id == ConversationTurn.id)
            .where(TurnMessage.message_id == message_id)
        )
        async with self._query() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else conversation_ref(row)

    async def turn_for_message(self, message_id: int) -> TurnRecord | None:
        """The turn a Discord message shows, if it is still stored."""
        async with self._read() as conn:
            turn_id = await conn.scalar(
                select(TurnMessage.turn_id).where(TurnMessage.message_id == message_id)
            )
            if turn_id is None:
                return None
            turns = await load_turn_records(conn, [turn_id])
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
        turn = self._new_turn(
            conversation_id, role, text, author_id, images, message_ids, reply_to_turn_id, count_tokens,
            created_at,
        )  # fmt: skip
        try:
            async with self._write() as conn:
                await _lock_conversation(conn, conversation_id)
                if reply_to_turn_id is not None:
                    await _require_turn_in(conn, reply_to_turn_id, conversation_id)
                return await _insert_turn(conn, turn)
        except IntegrityError as exc:
            raise await self._explain_turn_integrity_error(conversation_id, reply_to_turn_id) from exc

    async def append_exchange(
        self,
        conversation_id: int,
        question: str,
        answer: str,
        *,
        author_id: int | None = None,
        images: Sequence[bytes] = (),
        message_ids: Iterable[int] = (),
    ) -> tuple[TurnRecord, TurnRecord]:
        """A user's turn and the assistant's answer to it, in one transaction.

        Two answers finishing at the same moment in one conversation (a user may have two running) are
        stored as question, answer, question, answer - never interleaved - and a crash never keeps a
        question without its answer."""
        user_turn = self._new_turn(conversation_id, "user", question, author_id, images, message_ids)
        try:
            async with self._write() as conn:
                await _lock_conversation(conn, conversation_id)
                stored_question = await _insert_turn(conn, user_turn)
                reply = self._new_turn(conversation_id, "assistant", answer, None, (), (), stored_question.id)
                return stored_question, await _insert_turn(conn, reply)
        except IntegrityError as exc:
            raise await self._explain_turn_integrity_error(conversation_id, None) from exc

    def _new_turn(
        self,
        conversation_id: int,
        role: Role,
        text: str,
        author_id: int | None,
        images: Sequence[bytes],
        message_ids: Iterable[int],
        reply_to_turn_id: int | None = None,
        count_tokens: TokenCounter | None = None,
        created_at: datetime | None = None,
    ) -> _NewTurn:
        """Validate and prepare a turn (token count, image hashes); its id is set when it is inserted."""
        if role not in _ROLES:
            raise InvalidRequest(f"A turn's role must be 'user' or 'assistant', not {role!r}.")
        blobs = [(hashlib.sha256(png).hexdigest(), png, *png_dimensions(png)) for png in images]
        record = TurnRecord(
            id=0,
            conversation_id=conversation_id,
            role=role,
            text=text,
            author_id=author_id,
            message_ids=tuple(dict.fromkeys(int(m) for m in message_ids)),
            image_hashes=tuple(sha for sha, *_ in blobs),
            token_count=int((count_tokens or self.count_tokens)(text)),
            created_at=created_at or utcnow(),
            reply_to_turn_id=reply_to_turn_id,
        )
        return _NewTurn(record, blobs)

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
            records = await load_turn_records(conn, ids)
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
        # Fast path: almost every context fits in its first page of turns, read by one statement, and
        # then needs one more for the images' bytes. If it needs more pages, or an image vanished between
        # the two reads (forgotten meanwhile), build it again inside one snapshot transaction.
        async with self._query() as conn:
            context = await _build_context(
                conn, conversation_id, budget, up_to_turn_id, marker_tokens, first_page_only=True
            )
        if context is None:
            async with self._read() as conn:
                context = await _build_context(
                    conn, conversation_id, budget, up_to_turn_id, marker_tokens, first_page_only=False
                )
        assert context is not None
        return context

    async def get_image(self, sha256: str) -> bytes | None:
        async with self._query() as conn:
            return await conn.scalar(select(Image.data).where(Image.sha256 == sha256))

    async def image_info(self, sha256: str) -> StoredImage | None:
        async with self._query() as conn:
            row = (await conn.execute(image_info_select().where(Image.sha256 == sha256))).first()
        return None if row is None else StoredImage(*row)


async def _build_context(
    conn: AsyncConnection,
    conversation_id: int,
    budget: ContextBudget,
    up_to_turn_id: int | None,
    marker_tokens: int,
    *,
    first_page_only: bool,
) -> ModelContext | None:
    """The context, or None when ``first_page_only`` and one page of turns (or one read) is not enough."""
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
        if first_page_only:
            return None
        page *= 2
    kept = {sha for p in plan.turns for sha in p.kept_images}
    data = await _image_data(conn, kept)
    if len(data) < len(kept):
        if first_page_only:
            return None
        raise AssertionError("an image of a stored turn is missing")  # impossible: FK ON DELETE RESTRICT
    return ModelContext(
        turns=tuple(
            Turn(role=p.turn.role, text=p.text, images=tuple(data[sha] for sha in p.kept_images))  # type: ignore[arg-type]
            for p in plan.turns
        ),
        token_count=plan.token_count,
        turn_ids=tuple(p.turn.id for p in plan.turns),
        omitted_turns=plan.omitted_turns,
        omitted_images=plan.omitted_images,
    )


@dataclass(frozen=True)
class _NewTurn:
    """A turn ready to insert: its record (id 0 until inserted) and its images as (sha256, png, w, h)."""

    record: TurnRecord
    blobs: list[tuple[str, bytes, int, int]]


async def _lock_conversation(conn: AsyncConnection, conversation_id: int) -> None:
    """Writers of one conversation take turns, so turn ids follow transaction order and an exchange's two
    turns are adjacent. SQLite's single writer gives that already (the FOR UPDATE is dropped there); on
    PostgreSQL two transactions would otherwise draw interleaved ids from the sequence."""
    await conn.execute(select(Conversation.id).where(Conversation.id == conversation_id).with_for_update())


async def _insert_turn(conn: AsyncConnection, new: _NewTurn) -> TurnRecord:
    """Insert a prepared turn with its images and message ids, inside the caller's transaction (which
    has checked the turn it replies to, if any)."""
    turn = new.record
    await _insert_missing_images(conn, new.blobs, turn.created_at)
    result = await conn.execute(
        insert(ConversationTurn).values(
            conversation_id=turn.conversation_id,
            role=turn.role,
            text=turn.text,
            author_id=turn.author_id,
            reply_to_turn_id=turn.reply_to_turn_id,
            token_count=turn.token_count,
            created_at=turn.created_at,
        )
    )
    turn_id = inserted_id(result)
    if turn.image_hashes:
        hashes = enumerate(turn.image_hashes)
        rows = [{"turn_id": turn_id, "position": i, "image_sha256": sha} for i, sha in hashes]
        await conn.execute(insert(TurnImage), rows)
    if turn.message_ids:
        await conn.execute(
            insert(TurnMessage), [{"message_id": m, "turn_id": turn_id} for m in turn.message_ids]
        )
    return dataclasses.replace(turn, id=turn_id)


async def _require_turn_in(conn: AsyncConnection, turn_id: int, conversation_id: int) -> None:
    """An answer must answer a turn of its own conversation: forgetting that turn takes the answer along
    (ON DELETE CASCADE), which must never reach into another user's conversation."""
    owner = await conn.scalar(select(ConversationTurn.conversation_id).where(ConversationTurn.id == turn_id))
    if owner != conversation_id:
        raise TurnNotFound("The message this answers is no longer in this conversation.")


async def _insert_missing_images(
    conn: AsyncConnection, blobs: Sequence[tuple[str, bytes, int, int]], now: datetime
) -> None:
    """Store each image once: a hash already present is the same bytes (sha256), so it is reused (and a
    concurrent writer storing the same image is no conflict: see :func:`insert_missing`)."""
    if not blobs:
        return
    # Sorted: two PostgreSQL transactions storing the same images lock them in one order (no deadlock).
    wanted = {sha: (png, w, h) for sha, png, w, h in sorted(blobs, key=lambda blob: blob[0])}
    rows = [
        {"sha256": sha, "data": png, "width": w, "height": h, "size_bytes": len(png), "created_at": now}
        for sha, (png, w, h) in wanted.items()
    ]
    await insert_missing(conn, Image, rows, ["sha256"])


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
    for chunk in chunks(sorted(hashes)):
        data.update(
            (await conn.execute(select(Image.sha256, Image.data).where(Image.sha256.in_(chunk)))).all()
        )
    return data
