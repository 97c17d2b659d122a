"""Conversation memory, jobs, settings and audit log in SQL (SQLite now, PostgreSQL-ready).

Only this package speaks SQL. Typical use from the bot::

    store = await Store.open(url, count_tokens=counter)  # upgrades the schema to the newest migration
    await store.fail_interrupted_jobs()                   # jobs a previous process left unfinished
    retention = asyncio.create_task(run_retention(store, lambda: config.memory.retention_days))
    key = ConversationKey.for_scope(scope, guild_id=g, channel_id=c, user_id=u)
    conv = await store.resolve_conversation(key)                      # created on first use
    ctx = await store.build_context(conv.id, ContextBudget(4096 - 512))   # the stored history that fits
    ... engine.submit(UnderstandRequest(request_id, (*ctx.turns, new_turn))) ...
    await store.append_exchange(conv.id, text, answer, author_id=u, images=pngs, message_ids=[m])

    job = await store.create_job(JobKind.IMAGINE, user_id=u, guild_id=g, channel_id=c, prompt=..., params=...)
    await store.mark_job_running(job.id); await store.finish_job(job.id, JobStatus.DONE, message_ids=[m])
"""

from bot.store.errors import ConversationNotFound, JobNotFound, NotFound, StoreError, TurnNotFound
from bot.store.migrate import current_revision, upgrade_database
from bot.store.records import (
    IMAGE_DROPPED_MARKER,
    INTERACTION_ID,
    REPLY_TO,
    SCOPE_SETTING,
    AuditEntry,
    ContextBudget,
    ConversationKey,
    ConversationRef,
    ConversationScope,
    ForgetResult,
    ImagineParams,
    JobKind,
    JobRecord,
    JobStatus,
    ModelContext,
    RetentionResult,
    ServerSettings,
    StoredImage,
    TurnRecord,
)
from bot.store.retention import apply_retention, run_retention
from bot.store.store import Store, TokenCounter, estimate_tokens

__all__ = [
    "IMAGE_DROPPED_MARKER",
    "INTERACTION_ID",
    "REPLY_TO",
    "SCOPE_SETTING",
    "AuditEntry",
    "ContextBudget",
    "ConversationKey",
    "ConversationNotFound",
    "ConversationRef",
    "ConversationScope",
    "ForgetResult",
    "ImagineParams",
    "JobKind",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "ModelContext",
    "NotFound",
    "RetentionResult",
    "ServerSettings",
    "Store",
    "StoreError",
    "StoredImage",
    "TokenCounter",
    "TurnNotFound",
    "TurnRecord",
    "apply_retention",
    "current_revision",
    "estimate_tokens",
    "run_retention",
    "upgrade_database",
]
