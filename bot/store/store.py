"""The conversation store: the only code of the bot that speaks SQL.

One ``Store`` wraps one async SQLAlchemy engine. Every public method is one transaction, so a crash
between two calls never leaves half a turn or half a job behind, and every answer is a frozen record
(``bot.store.records``), never a live row. The methods live in one module per subject:
conversations (turns, images, context), privacy (forget, retention, export), jobs, settings and audit,
usage (cooldowns and daily caps shared by every bot process).
"""

from __future__ import annotations

from bot.store.base import TokenCounter, estimate_tokens
from bot.store.conversations import ConversationsMixin
from bot.store.jobs import JobsMixin
from bot.store.privacy import PrivacyMixin
from bot.store.usage import UsageMixin

__all__ = ["Store", "TokenCounter", "estimate_tokens"]


class Store(ConversationsMixin, PrivacyMixin, JobsMixin, UsageMixin):
    """Conversations, turns, images, jobs, settings and the audit log of the bot.

    Open with ``await Store.open(url)`` (which upgrades the schema) and close with ``await store.close()``
    or ``async with``."""
