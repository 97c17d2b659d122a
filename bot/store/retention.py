"""Periodic retention: turns older than N days leave the database on their own.

The bot starts :func:`start_retention_task` after the store is open and cancels the task at shutdown.
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


async def run_retention_periodically(
    store: Store, retention_days: float, *, interval_s: float = 3600.0, first_delay_s: float = 0.0
) -> None:
    """Run :func:`apply_retention` every ``interval_s`` seconds until cancelled."""
    await asyncio.sleep(first_delay_s)
    while True:
        try:
            await apply_retention(store, retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)


def start_retention_task(
    store: Store, retention_days: float, *, interval_s: float = 3600.0, first_delay_s: float = 0.0
) -> asyncio.Task[None]:
    """The periodic runner as a named task (keep a reference; cancel it at shutdown)."""
    return asyncio.get_running_loop().create_task(
        run_retention_periodically(store, retention_days, interval_s=interval_s, first_delay_s=first_delay_s),
        name="store-retention",
    )
