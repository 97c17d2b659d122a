"""The real ``janus-bot`` command line in a child process, with discord.py pointed at an emulator."""

from __future__ import annotations

import textwrap

# python -c RUN_SCRIPT API_BASE GATEWAY_URL janus-bot-args...: the CLI's main() with discord.py's REST
# base and gateway URL swapped for the emulator's (as bot_world does in-process).
RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    from discord_emulator import configure_client
    from bot.cli import main
    with configure_client(sys.argv[1], sys.argv[2]):
        sys.exit(main(sys.argv[3:]))
    """
)
