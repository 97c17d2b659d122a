"""Periodic retention: turns older than N days leave the database on their own.

The bot runs :func:`run_retention` in the background from its ``setup_hook`` (reading
``memory.retention_days`` at each pass) and cancels it when it closes.
One failed pass (a locked file, a full disk) is logged and retried at the next interval rather than
ending the loop, because a retention task that silently died would keep data longer than promised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.store.records import RetentionResult
from bot.store.store import Store

log = logging.getLogger(__name__)


async def apply_retention(
    store: Store, retention_days: float, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> RetentionResult:
    """One pass: delete what is older than ``retention_days``."""
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    result = await store.delete_turns_older_than(now() - timedelta(days=retention_days))
    if result.turns or result.conversations or result.images:
        log.info(
            "retention: deleted %d turns, %d conversations, %d images older than %g days",
            result.turns,
            result.conversations,
            result.images,
            retention_days,
        )
    return result


async def run_retention(
    store: Store, retention_days: Callable[[], float], *, interval_s: float = 3600.0
) -> None:
    """Run :func:`apply_retention` every ``interval_s`` seconds until cancelled.

    ``retention_days`` is read at each pass (so a config reload applies); 0 or less keeps everything."""
    while True:
        days = retention_days()
        if days > 0:
            try:
                await apply_retention(store, days)
            except Exception:
                log.exception("retention pass failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
