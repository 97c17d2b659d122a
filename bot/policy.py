"""Who may use the bot where, and which prompts it refuses.

Plain data in (a :class:`Requester` built by the cogs from the interaction), a typed Refusal out, so the
rules can be tested without Discord. Order matters only for the message a user sees: the most specific
reason wins (blocked user, then server/channel/role restrictions, then the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import NSFW_POLICIES, AccessSection
from bot.errors import BlockedPrompt, NotAllowed

# The settings keys /settings writes (values live in bot.store's settings tables), read back as one
# typed ServerSettings.
from bot.store.records import (  # noqa: F401  (re-exported for the cogs and tests)
    DEFAULT_COUNT,
    DEFAULT_GUIDANCE,
    DEFAULT_TEMPERATURE,
    ENABLED,
    MODERATION,
    MODLOG_CHANNEL,
    NSFW_POLICY,
    PERSONA,
    ServerSettings,
)

_STRICTNESS = {name: i for i, name in enumerate(("allow", "nsfw_channels_only", "block"))}
assert set(_STRICTNESS) == set(NSFW_POLICIES)


@dataclass(frozen=True)
class Requester:
    """Where a request comes from, reduced to plain ids."""

    user_id: int
    guild_id: int | None  # None in direct messages
    channel_id: int
    parent_channel_id: int | None = None  # the channel a thread belongs to
    role_ids: frozenset[int] = frozenset()
    channel_nsfw: bool = False

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None


def check_access(access: AccessSection, who: Requester, settings: ServerSettings) -> None:
    """Raise NotAllowed unless the config and the server's /settings let this user use the bot here."""
    if who.user_id in access.blocked_users:
        raise NotAllowed("You are not allowed to use this bot.")
    if who.is_dm:
        # A DM carries no server, channel or roles to check: where the config limits the bot to some of
        # those, a DM would be a way around the limit, so it is refused.
        if not access.allow_dms or access.allowed_guilds or access.allowed_channels or access.allowed_roles:
            raise NotAllowed("This bot does not answer in direct messages; use it in a server channel.")
        return
    if access.allowed_guilds and who.guild_id not in access.allowed_guilds:
        raise NotAllowed("This bot is not enabled on this server.")
    if access.allowed_channels and not (
        who.channel_id in access.allowed_channels or who.parent_channel_id in access.allowed_channels
    ):
        raise NotAllowed("This bot is not enabled in this channel.")
    if access.allowed_roles and not (who.role_ids & set(access.allowed_roles)):
        raise NotAllowed("You need one of the roles this bot is limited to.")
    if settings.enabled is False:
        raise NotAllowed("A server manager has turned this bot off in this channel (/settings).")


def effective_nsfw_policy(access: AccessSection, settings: ServerSettings) -> str:
    """The stricter of the config's policy and the server's: a server can tighten it, never loosen it."""
    server = settings.nsfw_policy
    if server not in _STRICTNESS:
        return access.nsfw_policy
    return max(access.nsfw_policy, server, key=_STRICTNESS.__getitem__)


def check_negative_prompt(access: AccessSection, text: str) -> None:
    """A negative prompt says what to keep out of the image, so NSFW words there are welcome ("nudity" in
    it steers away from nudity); the blocked patterns still apply, since it is stored and shown."""
    for pattern in access.blocked_prompt_patterns:
        if pattern.search(text):
            raise BlockedPrompt("That negative prompt contains something this server's bot does not accept.")


def check_prompt(access: AccessSection, who: Requester, settings: ServerSettings, text: str) -> None:
    """Raise BlockedPrompt if ``text`` matches a blocked pattern, or NSFW patterns where not allowed."""
    for pattern in access.blocked_prompt_patterns:
        if pattern.search(text):
            raise BlockedPrompt("That prompt contains something this server's bot does not accept.")
    if not any(p.search(text) for p in access.nsfw_prompt_patterns):
        return
    policy = effective_nsfw_policy(access, settings)
    if policy == "block":
        raise BlockedPrompt("NSFW prompts are not accepted here.")
    if policy == "nsfw_channels_only" and not who.channel_nsfw:
        raise BlockedPrompt("NSFW prompts are only accepted in channels marked NSFW.")
