"""Cooldowns and daily caps counted in the database, so every bot process sharing it enforces the same ones.

A use is checked and counted in one write transaction with the user's row locked (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite has one writer at a time anyway): two requests at once, from one process
or from two, cannot both pass a cooldown or together overshoot a daily cap. A use that never reached the
engine is given back with :meth:`UsageMixin.release_use`. Times are wall-clock UTC (processes on different
hosts share no monotonic clock); a day is a UTC date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import StoreBase, insert_missing
from bot.store.models import Usage


@dataclass(frozen=True)
class UseGranted:
    """One counted use, with what is needed to give it back."""

    user_id: int
    action: str
    amount: int
    day: str
    at: datetime
    previous: datetime | None  # the use before this one, restored on release


@dataclass(frozen=True)
class UseRefused:
    """Why a use was not counted: a cooldown still running (``wait_s``) or the daily cap (``wait_s`` None)."""

    wait_s: float | None
    used_today: int


class UsageMixin(StoreBase):
    async def reserve_use(
        self,
        user_id: int,
        action: str,
        amount: int,
        *,
        cooldown_s: float,
        daily_cap: int,
        now: datetime,
    ) -> UseGranted | UseRefused:
        """Check the cooldown (0: none) and the daily cap (0: none) and count the use, atomically."""
        day = now.date().isoformat()
        async with self._write() as conn:
            row = await _locked_row(conn, user_id, action, day)
            used = row.used if row.day == day else 0
            if cooldown_s > 0 and row.last_at is not None:
                wait = (row.last_at + timedelta(seconds=cooldown_s) - now).total_seconds()
                if wait > 0:
                    return UseRefused(wait, used)
            if daily_cap > 0 and used + amount > daily_cap:
                return UseRefused(None, used)
            await conn.execute(
                update(Usage)
                .where(Usage.user_id == user_id, Usage.action == action)
                .values(day=day, used=used + amount, last_at=now)
            )
        return UseGranted(user_id, action, amount, day, now, row.last_at)

    async def release_use(self, grant: UseGranted) -> None:
        """Undo a counted use: take it off its day's count (not another day's), and restore the cooldown
        unless a later use happened meanwhile."""
        async with self._write() as conn:
            row = await _locked_row(conn, grant.user_id, grant.action, grant.day)
            values: dict[str, object] = {}
            if row.day == grant.day:
                values["used"] = max(0, row.used - grant.amount)
            if row.last_at == grant.at:
                values["last_at"] = grant.previous
            if values:
                await conn.execute(
                    update(Usage)
                    .where(Usage.user_id == grant.user_id, Usage.action == grant.action)
                    .values(**values)
                )

    async def used_today(self, user_id: int, action: str, *, now: datetime) -> int:
        """How many uses of ``action`` the user has on the UTC day of ``now``."""
        async with self._query() as conn:
            row = (
                await conn.execute(
                    select(Usage.day, Usage.used).where(Usage.user_id == user_id, Usage.action == action)
                )
            ).first()
        return 0 if row is None or row.day != now.date().isoformat() else int(row.used)

    async def usage_of(self, user_id: int, action: str, *, now: datetime) -> tuple[int, datetime | None]:
        """Uses of ``action`` on the UTC day of ``now`` and the time of the last one (for /quota)."""
        async with self._query() as conn:
            row = (
                await conn.execute(
                    select(Usage.day, Usage.used, Usage.last_at).where(
                        Usage.user_id == user_id, Usage.action == action
                    )
                )
            ).first()
        if row is None:
            return 0, None
        used = int(row.used) if row.day == now.date().isoformat() else 0
        return used, row.last_at

    async def reset_cooldown(self, user_id: int, action: str) -> None:
        """Let the user act again at once (an admin's or a test's lever); the daily count stays."""
        async with self._write() as conn:
            await conn.execute(
                update(Usage).where(Usage.user_id == user_id, Usage.action == action).values(last_at=None)
            )


@dataclass(frozen=True)
class _Counter:
    day: str
    used: int
    last_at: datetime | None


async def _locked_row(conn: AsyncConnection, user_id: int, action: str, day: str) -> _Counter:
    """The user's counter row, created (zero) if missing, locked until the transaction ends."""
    fresh = {"user_id": user_id, "action": action, "day": day, "used": 0, "last_at": None}
    await insert_missing(conn, Usage, [fresh], ["user_id", "action"])
    stmt = (
        select(Usage.day, Usage.used, Usage.last_at)
        .where(Usage.user_id == user_id, Usage.action == action)
        .with_for_update()
    )
    row = (await conn.execute(stmt)).one()
    return _Counter(row.day, int(row.used), row.last_at)
