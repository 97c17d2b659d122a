"""The mod-log channel: what a server's moderators want to see, posted where they chose.

``/settings modlog channel:#mod-log`` names a channel per server (stored with the server's settings);
nothing is posted where none is set. What goes there: refusals that say something about a user (a
blocked prompt, a role or channel restriction, a reached daily cap or job limit, a full queue),
moderation hits (images withheld), and admin actions (settings changes, config reloads). A line names the
user and the channel without pinging anyone, and never repeats the refused prompt itself (it may be what
the moderators would rather not have echoed).

Posting is best effort: a mod-log that cannot be reached (deleted channel, missing permission) is logged
and never fails the user's request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.formatting import clip
from bot.store.records import MODLOG_CHANNEL

if TYPE_CHECKING:
    from bot.app import JanusBot

log = logging.getLogger(__name__)

# The refusals worth a moderator's attention (a cooldown or a typo'd option is not).
LOGGED_REFUSALS = frozenset(
    {"BlockedPrompt", "NotAllowed", "DailyCapReached", "UserLimitReached", "QueueFull"}
)


async def post_modlog(bot: JanusBot, guild_id: int | None, text: str) -> bool:
    """Post ``text`` to the server's mod-log channel, if it has one; True if it was posted."""
    if guild_id is None:
        return False
    try:
        settings = await bot.store.get_guild_settings(guild_id)
        channel_id = settings.get(MODLOG_CHANNEL)
        if not channel_id:
            return False
        channel = bot.get_channel(int(channel_id)) or await bot.fetch_channel(int(channel_id))
        await channel.send(clip(f"🛡️ {text}"), allowed_mentions=discord.AllowedMentions.none())  # type: ignore[union-attr]
        return True
    except Exception as exc:  # best effort: the user's request does not depend on it
        log.warning("could not post to the mod-log of guild %s: %s", guild_id, type(exc).__name__)
        return False


def where(user_id: int, channel_id: int | None) -> str:
    return f"<@{user_id}>" + (f" in <#{channel_id}>" if channel_id else "")
