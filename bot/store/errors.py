"""Typed errors of the store; like the engine's, each carries a message a Discord user can read."""

from __future__ import annotations

from janus_engine.errors import JanusError


class StoreError(JanusError):
    """Base of the store's own errors."""


class NotFound(StoreError):
    """The conversation, turn or job asked for does not exist (any more: forgotten or expired)."""


class ConversationNotFound(NotFound):
    pass


class TurnNotFound(NotFound):
    pass


class JobNotFound(NotFound):
    pass
