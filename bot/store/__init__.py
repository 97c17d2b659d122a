"""Conversation memory, jobs, settings and audit log in SQL (SQLite now, PostgreSQL-ready).

Only this package speaks SQL. Typical use from the bot::

    store = await Store.open(url)                      # upgrades the schema to the newest migration
    key = ConversationKey.for_scope(await store.scope_for_channel(guild_id=g, channel_id=c),
                                    guild_id=g, channel_id=c, user_id=u)
    conv = await store.resolve_conversation(key)
    turn = await store.append_turn(conv.id, "user", text, author_id=u, images=pngs, message_ids=[m])
    ctx = await store.build_context(conv.id, ContextBudget(4096 - 512), up_to_turn_id=turn.id)
    ... engine.submit(UnderstandRequest(request_id, ctx.turns)) ...
    await store.append_turn(conv.id, "assistant", answer, reply_to_turn_id=turn.id, message_ids=[r])
"""

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
from bot.store.store import Store, TokenCounter, estimate_tokens

__all__ = [
    "IMAGE_DROPPED_MARKER",
    "SCOPE_SETTING",
    "AuditEntry",
    "ContextBudget",
    "ConversationKey",
    "ConversationRef",
    "ConversationScope",
    "ForgetResult",
    "JobKind",
    "JobRecord",
    "JobStatus",
    "ModelContext",
    "RetentionResult",
    "Store",
    "StoredImage",
    "TokenCounter",
    "TurnRecord",
    "estimate_tokens",
]
