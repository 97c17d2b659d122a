"""A loopback Discord (REST API, gateway, CDN) that the real discord.py client can use, with Discord's rules.

See README.md in this package for the API.
"""

from discord_emulator.client import configure_client
from discord_emulator.emulator import DiscordEmulator
from discord_emulator.payloads import EmulatorUsageError
from discord_emulator.rules import DiscordAPIError
from discord_emulator.state import (
    MIB,
    Attachment,
    Channel,
    CommandSync,
    EmulatorClock,
    Guild,
    Interaction,
    InteractionFailure,
    Member,
    Message,
    MessageRevision,
    Pings,
    Rejection,
    Role,
    TranscriptLine,
    Upload,
    User,
)

__all__ = [
    "MIB",
    "Attachment",
    "Channel",
    "CommandSync",
    "DiscordAPIError",
    "DiscordEmulator",
    "EmulatorClock",
    "EmulatorUsageError",
    "Guild",
    "Interaction",
    "InteractionFailure",
    "Member",
    "Message",
    "MessageRevision",
    "Pings",
    "Rejection",
    "Role",
    "TranscriptLine",
    "Upload",
    "User",
    "configure_client",
]
