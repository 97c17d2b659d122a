"""Conversation memory, jobs, settings and audit log in SQL (SQLite now, PostgreSQL-ready).

Only this package speaks SQL. Typical use from the bot::

    store = await Store.open(url, count_tokens=counter)  # upgrades the schema to the newest migration
    await store.fail_interrupted_jobs()                   # jobs a previous process left unfinished
    retention = start_retention_task(store, retention_days=30)
    conv = await store.open_conversation(guild_id=g, channel_id=c, user_id=u, parent_channel_id=p)
    turn = await store.append_turn(conv.id, "user", text, author_id=u, images=pngs, message_ids=[m])
    ctx = await store.build_context(conv.id, ContextBudget(4096 - 512), up_to_turn_id=turn.id)
    ... engine.submit(UnderstandRequest(request_id, ctx.turns)) ...
    await store.append_turn(conv.id, "assistant", answer, reply_to_turn_id=turn.id, message_ids=[r])

    job = await store.create_job(JobKind.IMAGINE, user_id=u, guild_id=g, channel_id=c, prompt=..., params=...)
    await store.mark_job_running(job.id); await store.finish_job(job.id, JobStatus.DONE, message_ids=[m])
"""

from bot.store.database import default_database_url
from bot.store.errors import ConversationNotFound, JobNotFound, NotFound, StoreError, TurnNotFound
from bot.store.migrate import current_revision, upgrade_database
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
from bot.store.retention import apply_retention, start_retention_task
from bot.store.store import Store, TokenCounter, estimate_tokens

__all__ = [
    "IMAGE_DROPPED_MARKER",
    "SCOPE_SETTING",
    "AuditEntry",
    "ContextBudget",
    "ConversationKey",
    "ConversationNotFound",
    "ConversationRef",
    "ConversationScope",
    "ForgetResult",
    "JobKind",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "ModelContext",
    "NotFound",
    "RetentionResult",
    "Store",
    "StoreError",
    "StoredImage",
    "TokenCounter",
    "TurnNotFound",
    "TurnRecord",
    "apply_retention",
    "current_revision",
    "default_database_url",
    "estimate_tokens",
    "start_retention_task",
    "upgrade_database",
]
