"""Typed errors of the engine.

Every error carries a message a Discord user can read as it is (``user_message``), because the bot shows
these to people: no stack traces, no internals. They are plain exceptions with only string arguments so
that they pickle across the worker process boundary unchanged.
"""

from __future__ import annotations


class JanusError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message

    def __reduce__(self):  # keep subclasses picklable whatever their __init__ looks like
        return (self.__class__, (self.user_message,))


class InvalidRequest(JanusError):
    """A request's parameters are out of range (empty prompt, too many images, guidance <= 1, ...)."""


class InvalidImage(JanusError):
    """An uploaded file is not a usable image (not an image, corrupt, truncated, too large)."""


class ImageTooLarge(InvalidImage):
    """An image whose pixel count or dimensions are beyond the limits (decompression bomb protection)."""


class PromptTooLong(InvalidRequest):
    """A prompt or conversation that does not fit the model's context."""


class ModelNotAvailable(JanusError):
    """The model could not be found or loaded; the message says what to do about it."""


class QueueFull(JanusError):
    """The engine's queue is at its bound: backpressure, try again later."""


class UserLimitReached(JanusError):
    """The user already has as many queued or running jobs as the configuration allows."""


class JobFailed(JanusError):
    """A job ended without a result (worker crash, timeout, model error)."""


class JobCancelled(JanusError):
    """A job was cancelled before it finished."""


def error_class(name: str, default: type[JanusError]) -> type[JanusError]:
    """The error class of this module called ``name`` (as a worker reports it), or ``default`` if there is
    no such JanusError subclass."""
    found = globals().get(name)
    if isinstance(found, type) and issubclass(found, JanusError):
        return found
    return default
