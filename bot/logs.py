"""Log levels, in one place: set at start by the launcher, changed again by ``/admin reload``."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def set_log_levels(level: int | str) -> None:
    """The root logger at ``level``; discord.py never chattier than INFO (its DEBUG logs every frame)."""
    root = logging.getLogger()
    root.setLevel(level)
    logging.getLogger("discord").setLevel(max(root.level, logging.INFO))
