"""Per-user cooldowns and daily caps, shared by every bot process on one database.

:meth:`UsageLimiter.reserve` checks and counts a use in one database transaction (see
:mod:`bot.store.usage`), before the request goes anywhere: two requests fired at once (a double-clicked
Re-roll, quick @mentions, the same user on two shards served by two processes) cannot both pass a cooldown
or overshoot the daily cap. A request refused or failed before the engine accepted it gives its use back
with :meth:`UsageLimiter.release`, so a bad upload or a full queue does not also cost a cooldown. The
counters live in the database, so a restart does not hand out a fresh day's allowance either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from bot.config import LimitsSection
from bot.errors import CooldownActive, DailyCapReached
from bot.store import Store
from bot.store.usage import UseGranted, UseRefused

IMAGINE = "imagine"
CHAT = "chat"

Reservation = UseGranted  # what reserve() hands out and release() takes back

log = logging.getLogger(__name__)


class UsageLimiter:
    def __init__(
        self,
        limits: LimitsSection,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.limits = limits
        self.store = store
        self._clock = clock

    def update(self, limits: LimitsSection) -> None:
        """Apply reloaded limits; the counters (in the database) are kept."""
        self.limits = limits

    def _cooldown(self, action: str) -> float:
        return self.limits.imagine_cooldown_s if action == IMAGINE else self.limits.chat_cooldown_s

    def _cap(self, action: str) -> int:
        return (
            self.limits.images_per_user_per_day
            if action == IMAGINE
            else self.limits.messages_per_user_per_day
        )

    async def reserve(self, user_id: int, action: str, amount: int = 1) -> Reservation:
        """Count the use now, or raise CooldownActive / DailyCapReached. Give it back with :meth:`release`."""
        cap = self._cap(action)
        outcome = await self.store.reserve_use(
            user_id, action, amount, cooldown_s=self._cooldown(action), daily_cap=cap, now=self._clock()
        )
        if isinstance(outcome, UseGranted):
            return outcome
        return self._refuse(outcome, action, amount, cap)

    @staticmethod
    def _refuse(refused: UseRefused, action: str, amount: int, cap: int) -> Reservation:
        if refused.wait_s is not None:
            raise CooldownActive(f"Slow down a little: you can use this again in {refused.wait_s:.0f}s.")
        unit = "images" if action == IMAGINE else "messages"
        left = max(cap - refused.used_today, 0)
        asked = f"; this request needs {amount}" if amount > 1 and left > 0 else ""
        raise DailyCapReached(
            f"You have reached today's limit of {cap} {unit} ({left} left{asked}); it resets at 00:00 UTC."
        )

    async def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose request never reached the engine. Never raises: a lost give-back costs
        the user one use, which is better than hiding the error that made the request fail."""
        try:
            await self.store.release_use(reservation)
        except Exception:
            log.exception("could not give back a %s use of user %s", reservation.action, reservation.user_id)

    async def reset_cooldown(self, user_id: int, action: str) -> None:
        await self.store.reset_cooldown(user_id, action)

    async def used_today(self, user_id: int, action: str) -> int:
        return await self.store.used_today(user_id, action, now=self._clock())
