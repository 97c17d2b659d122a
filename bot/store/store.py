"""The conversation store: the only code of the bot that speaks SQL.

One ``Store`` wraps one async SQLAlchemy engine. Every public method is one transaction, so a crash
between two calls never leaves half a turn or half a job behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from bot.store.records import (
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
from janus_engine.protocol import Role

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3 bytes a token for the DeepSeek BPE on English text)."""
    return (len(text.encode("utf-8")) + 2) // 3


class Store:
    """Conversations, turns, images, jobs, settings and the audit log of the bot."""

    def __init__(self, engine: Any, *, count_tokens: TokenCounter = estimate_tokens) -> None:
        raise NotImplementedError

    @classmethod
    async def open(
        cls, url: str, *, count_tokens: TokenCounter = estimate_tokens, upgrade: bool = True
    ) -> Store:
        """Connect to ``url`` and (by default) upgrade its schema to the newest migration first."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- conversations ---------------------------------------------------------------------------

    async def scope_for_channel(
        self, *, guild_id: int | None, channel_id: int, parent_channel_id: int | None = None
    ) -> ConversationScope:
        """The scope a message in this channel gets: DM without a guild, else the channel's (or, for a
        thread, its parent channel's) ``conversation_scope`` setting, USER by default."""
        raise NotImplementedError

    async def resolve_conversation(self, key: ConversationKey) -> ConversationRef:
        """The conversation for ``key``, created on first use."""
        raise NotImplementedError

    async def conversation_for_message(self, message_id: int) -> ConversationRef | None:
        """The conversation a Discord message (user's or bot's) belongs to, e.g. for replies."""
        raise NotImplementedError

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
        """Write one turn with its images (PNG bytes, deduplicated by sha256) in one transaction."""
        raise NotImplementedError

    async def add_turn_messages(self, turn_id: int, message_ids: Iterable[int]) -> None:
        """Attach Discord message ids to a turn after it was written (the reply is posted later)."""
        raise NotImplementedError

    async def list_turns(self, conversation_id: int, *, limit: int | None = None) -> list[TurnRecord]:
        """Turns oldest first (the newest ``limit`` if given)."""
        raise NotImplementedError

    async def build_context(
        self,
        conversation_id: int,
        budget: ContextBudget,
        *,
        up_to_turn_id: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> ModelContext:
        """The model input ending with ``up_to_turn_id`` (default: the newest turn) within ``budget``.

        Raises ``PromptTooLong`` when the current turn alone does not fit, ``InvalidRequest`` when the
        conversation has no turns."""
        raise NotImplementedError

    async def get_image(self, sha256: str) -> bytes | None:
        raise NotImplementedError

    async def image_info(self, sha256: str) -> StoredImage | None:
        raise NotImplementedError

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
        conversations delete the user's turns and the answers to them."""
        raise NotImplementedError

    async def clear_conversation(self, conversation_id: int) -> ForgetResult:
        raise NotImplementedError

    async def delete_turns_older_than(self, cutoff: datetime) -> RetentionResult:
        """Retention: delete turns written before ``cutoff``, conversations left empty, orphaned images."""
        raise NotImplementedError

    async def export_user_data(self, user_id: int) -> dict[str, Any]:
        """A user's stored data as a JSON-serialisable dict (turn texts, jobs, image metadata)."""
        raise NotImplementedError

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
        raise NotImplementedError

    async def mark_job_running(self, job_id: str) -> JobRecord:
        raise NotImplementedError

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
        raise NotImplementedError

    async def add_job_messages(self, job_id: str, message_ids: Iterable[int]) -> JobRecord:
        raise NotImplementedError

    async def get_job(self, job_id: str) -> JobRecord | None:
        raise NotImplementedError

    async def list_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int = 20,
    ) -> list[JobRecord]:
        """Newest first."""
        raise NotImplementedError

    async def fail_interrupted_jobs(self, reason: str = "The bot restarted before this job finished.") -> int:
        """At start: jobs still queued or running belong to a previous process; mark them failed."""
        raise NotImplementedError

    # ---- settings and audit ----------------------------------------------------------------------

    async def get_guild_settings(self, guild_id: int) -> dict[str, Any]:
        raise NotImplementedError

    async def update_guild_settings(
        self, guild_id: int, changes: Mapping[str, Any], *, actor_id: int | None = None
    ) -> dict[str, Any]:
        """Merge ``changes`` (a None value removes the key); with ``actor_id`` an audit entry is written
        in the same transaction. Returns the new settings."""
        raise NotImplementedError

    async def get_channel_settings(self, channel_id: int) -> dict[str, Any]:
        raise NotImplementedError

    async def update_channel_settings(
        self,
        channel_id: int,
        changes: Mapping[str, Any],
        *,
        guild_id: int | None = None,
        actor_id: int | None = None,
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def effective_settings(
        self, *, guild_id: int | None, channel_id: int | None, parent_channel_id: int | None = None
    ) -> dict[str, Any]:
        """Guild settings, overridden by the parent channel's, overridden by the channel's."""
        raise NotImplementedError

    async def record_audit(
        self,
        *,
        actor_id: int,
        action: str,
        guild_id: int | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        raise NotImplementedError

    async def list_audit(self, *, guild_id: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """Newest first."""
        raise NotImplementedError
