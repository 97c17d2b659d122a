"""Point the real discord.py client at the emulator.

discord.py builds every REST, interaction-callback and webhook URL from `Route.BASE`, and connects the
gateway to `DiscordWebSocket.DEFAULT_GATEWAY` (since 2.0 it no longer asks GET /gateway). Neither is
public API, which is why the project pins discord.py's version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import discord.gateway
import discord.http
import yarl


@contextlib.contextmanager
def configure_client(api_base: str, gateway_url: str) -> Iterator[None]:
    """Within the block, every discord.py client in this process talks to the given server."""
    route = discord.http.Route
    websocket = discord.gateway.DiscordWebSocket
    saved = route.BASE, websocket.DEFAULT_GATEWAY
    route.BASE = api_base
    websocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        route.BASE, websocket.DEFAULT_GATEWAY = saved
