"""Per-user cooldowns and daily caps.

Two steps on purpose: :meth:`UsageLimiter.check` refuses before any work, :meth:`UsageLimiter.commit`
counts the use only once the job was accepted by the engine, so a user whose request failed validation
or hit a full queue is not also put on cooldown. State is in memory (it resets with the process); the
durable record of what a user ran is the jobs table.
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

    def commit(self, user_id: int, action: str, amount: int = 1) -> None:
        self._last[(user_id, action)] = self._clock()
        entry = self._entry(user_id, action)
        entry.used += amount

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
