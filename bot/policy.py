"""Who may use the bot where, and which prompts it refuses.

Plain data in (a :class:`Requester` built by the cogs from the interaction), a typed Refusal out, so the
rules can be tested without Discord. Order matters only for the message a user sees: the most specific
reason wins (blocked user, then server/channel/role restrictions, then the prompt).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
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


# Cyrillic, Greek and Armenian letters drawn like Latin ones (Unicode's confusables for the letters a
# blocklist is written in), by case: "а" looks like "a", but Greek "η" like "n" while its capital "Η" is
# an "H", so they are mapped before case-folding.
_LOOK_ALIKES = str.maketrans(
    dict(
        zip(
            "аеорсухѕіјԁһӏԛԝпкɡАВЕКМНОРСТХУЅІЈԚԜαονικυχωεγτϲϳΑΒΕΖΗΙΚΜΝΟΡΤΥΧօսոհ",
            "aeopcyxsijdhlqwnkgABEKMHOPCTXYSIJQWaovikuxweytcjABEZHIKMNOPTYXounh",
            strict=True,
        )
    )
)
_DROPPED = {"Mn", "Me", "Cf"}  # combining marks; format characters (zero-width, soft hyphen, bidi controls)


def _without_marks(text: str) -> str:
    """Compatibility-decomposed (fullwidth and mathematical letters become plain ones, "é" becomes "e"
    plus a mark), with marks, invisible format characters and control characters other than whitespace
    removed."""
    return "".join(
        c
        for c in unicodedata.normalize("NFKD", text)
        if unicodedata.category(c) not in _DROPPED and (c.isspace() or unicodedata.category(c) != "Cc")
    )


def normalize_for_matching(text: str) -> str:
    """The text as a blocklist should see it: ``ｆｏｒｂｉｄｄｅｎ``, ``𝐟𝐨𝐫𝐛𝐢𝐝𝐝𝐞𝐧``, ``for\u200bbidden``,
    ``FORBİDDEN`` and Cyrillic ``fоrbiddеn`` all read "forbidden". Only ever matched against: the model
    and the user see the text as it was typed."""
    return _without_marks(_without_marks(text).translate(_LOOK_ALIKES).casefold())


def is_blank(text: str) -> bool:
    """Nothing a reader could see: whitespace, zero-width and format characters, lone combining marks."""
    return not _without_marks(text).strip()


def _matches(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    """A pattern found in the text as typed or in its normalised copy (a pattern written in a script the
    normalisation maps away, Cyrillic say, still matches the text as typed)."""
    normalized = normalize_for_matching(text)
    return any(p.search(text) or p.search(normalized) for p in patterns)


def check_negative_prompt(access: AccessSection, text: str) -> None:
    """A negative prompt says what to keep out of the image, so NSFW words there are welcome ("nudity" in
    it steers away from nudity); the blocked patterns still apply, since it is stored and shown."""
    if _matches(access.blocked_prompt_patterns, text):
        raise BlockedPrompt("That negative prompt contains something this server's bot does not accept.")


def check_prompt(access: AccessSection, who: Requester, settings: ServerSettings, text: str) -> None:
    """Raise BlockedPrompt if ``text`` matches a blocked pattern, or NSFW patterns where not allowed
    (both matched on :func:`normalize_for_matching`'s copy too, so look-alike letters do not slip by)."""
    if _matches(access.blocked_prompt_patterns, text):
        raise BlockedPrompt("That prompt contains something this server's bot does not accept.")
    if not _matches(access.nsfw_prompt_patterns, text):
        return
    policy = effective_nsfw_policy(access, settings)
    if policy == "block":
        raise BlockedPrompt("NSFW prompts are not accepted here.")
    if policy == "nsfw_channels_only" and not who.channel_nsfw:
        raise BlockedPrompt("NSFW prompts are only accepted in channels marked NSFW.")
