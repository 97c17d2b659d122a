"""Log levels, in one place: set at start by the launcher, changed again by ``/admin reload``."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries whose DEBUG output is not the bot's: discord.py logs every gateway frame, aiosqlite every SQL
# statement with its parameters (users' prompts, conversations, image bytes) and PIL every PNG chunk. At
# ``level = "DEBUG"`` they stay at INFO, so an operator's debug log holds the bot's own lines and no
# user content the database already keeps (the soak measured 7,490 of 7,533 lines from aiosqlite).
QUIET_LIBRARIES = ("discord", "aiosqlite", "PIL", "asyncio", "urllib3", "filelock")


def set_log_levels(level: int | str) -> None:
    """The root logger at ``level``; the libraries above never chattier than INFO."""
    root = logging.getLogger()
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
