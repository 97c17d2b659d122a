"""Per-user cooldowns and daily caps.

:meth:`UsageLimiter.reserve` checks and counts a use in one synchronous step, before the first ``await``
of a request: two requests fired at once (a double-clicked Re-roll, quick @mentions) cannot both pass a
cooldown or overshoot the daily cap. A request refused or failed before the engine accepted it gives its
use back with :meth:`UsageLimiter.release`, so a bad upload or a full queue does not also cost a cooldown.
State is in memory (it resets with the process); the durable record of what a user ran is the jobs table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import LimitsSection
from bot.errors import CooldownActive, DailyCapReached

IMAGINE = "imagine"
CHAT = "chat"


@dataclass(frozen=True)
class Reservation:
    """One counted use, with what is needed to give it back."""

    user_id: int
    action: str
    amount: int
    day: str
    at: float
    previous: float | None  # the use before this one, restored on release


@dataclass
class _Daily:
    day: str
    used: int = 0


class UsageLimiter:
    def __init__(
        self,
        limits: LimitsSection,
        *,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], str] = lambda: datetime.now(UTC).date().isoformat(),
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._today = today
        self._last: dict[tuple[int, str], float] = {}
        self._daily: dict[tuple[int, str], _Daily] = {}

    def update(self, limits: LimitsSection) -> None:
        """Apply reloaded limits; counters are kept."""
        self.limits = limits

    def _cooldown(self, action: str) -> float:
        return self.limits.imagine_cooldown_s if action == IMAGINE else self.limits.chat_cooldown_s

    def _cap(self, action: str) -> int:
        return (
            self.limits.images_per_user_per_day
            if action == IMAGINE
            else self.limits.messages_per_user_per_day
        )

    def check(self, user_id: int, action: str, amount: int = 1) -> None:
        """Raise CooldownActive / DailyCapReached if the user may not do ``action`` now."""
        last = self._last.get((user_id, action))
        cooldown = self._cooldown(action)
        if last is not None and cooldown > 0:
            wait = last + cooldown - self._clock()
            if wait > 0:
                raise CooldownActive(f"Slow down a little: you can use this again in {wait:.0f}s.")
        cap = self._cap(action)
        if cap > 0:
            used = self._used(user_id, action)
            unit = "images" if action == IMAGINE else "messages"
            if used + amount > cap:
                left = max(cap - used, 0)
                raise DailyCapReached(
                    f"You have reached today's limit of {cap} {unit} ({left} left); it resets at 00:00 UTC."
                )

    def reserve(self, user_id: int, action: str, amount: int = 1) -> Reservation:
        """Check, then count the use at once (no await in between). Give it back with :meth:`release`."""
        self.check(user_id, action, amount)
        key = (user_id, action)
        previous, now = self._last.get(key), self._clock()
        self._last[key] = now
        entry = self._entry(user_id, action)
        entry.used += amount
        return Reservation(user_id, action, amount, entry.day, now, previous)

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose request never reached the engine."""
        key = (reservation.user_id, reservation.action)
        entry = self._daily.get(key)
        if entry is not None and entry.day == reservation.day:
            entry.used = max(0, entry.used - reservation.amount)
        if self._last.get(key) == reservation.at:  # no later use happened meanwhile
            if reservation.previous is None:
                self._last.pop(key, None)
            else:
                self._last[key] = reservation.previous

    def reset_cooldown(self, user_id: int, action: str) -> None:
        self._last.pop((user_id, action), None)

    def _entry(self, user_id: int, action: str) -> _Daily:
        today = self._today()
        entry = self._daily.get((user_id, action))
        if entry is None or entry.day != today:
            entry = self._daily[(user_id, action)] = _Daily(today)
        return entry

    def _used(self, user_id: int, action: str) -> int:
        return self._entry(user_id, action).used
