"""Refusals: requests the bot turns down on purpose, each with a message the user can read.

They subclass :class:`janus_engine.errors.JanusError` so the one tree error handler treats them like the
engine's own typed errors (QueueFull, InvalidImage, ...): an ephemeral message saying why, never
"This interaction failed".
"""

from __future__ import annotations

from janus_engine.errors import JanusError


class Refusal(JanusError):
    """A request the bot will not run (policy, permissions, limits, bad input)."""


class NotAllowed(Refusal):
    """The user, channel or server is not allowed to use this (access lists, /settings, permissions)."""


class BlockedPrompt(Refusal):
    """A prompt or message matched a blocked pattern or the NSFW policy."""


class CooldownActive(Refusal):
    """The user used this command too recently."""


class DailyCapReached(Refusal):
    """The user reached their daily allowance."""


class BadUpload(Refusal):
    """An attachment was refused before or after downloading (type, size, count, corrupt)."""
