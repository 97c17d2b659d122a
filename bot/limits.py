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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from bot.config import LimitsSection
from bot.errors import CooldownActive, DailyCapReached
from bot.store import Store
from bot.store.usage import UseGranted, UseRefused

IMAGINE = "imagine"
CHAT = "chat"

SERVER_PREFIX = "server:"  # a server's own counter: the usage row (guild id, "server:<action>")


@dataclass(frozen=True)
class Reservation:
    """What reserve() hands out and release() takes back: the user's use and the server's, if counted."""

    user: UseGranted
    server: UseGranted | None = None

    @property
    def amount(self) -> int:
        return self.user.amount


@dataclass(frozen=True)
class Quota:
    """One action's standing for /quota: used today and the caps that apply (0 = unlimited)."""

    action: str
    used: int
    cap: int
    cooldown_left_s: float
    server_used: int
    server_cap: int


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

    def cap(self, action: str, roles: frozenset[int] = frozenset()) -> int:
        """The user's daily cap for ``action`` (0 = unlimited): the config's, multiplied for members of
        a trusted role."""
        limits = self.limits
        base = limits.images_per_user_per_day if action == IMAGINE else limits.messages_per_user_per_day
        if base and roles & set(limits.trusted_roles):
            return int(base * limits.trusted_cap_multiplier)
        return base

    def server_cap(self, action: str) -> int:
        limits = self.limits
        return limits.images_per_server_per_day if action == IMAGINE else limits.messages_per_server_per_day

    async def reserve(
        self,
        user_id: int,
        action: str,
        amount: int = 1,
        *,
        roles: frozenset[int] = frozenset(),
        guild_id: int | None = None,
    ) -> Reservation:
        """Count the use now (the user's, then the server's), or raise CooldownActive / DailyCapReached.
        Give it back with :meth:`release`."""
        cap = self.cap(action, roles)
        now = self._clock()
        outcome = await self.store.reserve_use(
            user_id, action, amount, cooldown_s=self._cooldown(action), daily_cap=cap, now=now
        )
        if not isinstance(outcome, UseGranted):
            self._refuse(outcome, action, amount, cap)
        server_cap = self.server_cap(action)
        if guild_id is None or not server_cap:
            return Reservation(outcome)
        server = await self.store.reserve_use(
            guild_id, SERVER_PREFIX + action, amount, cooldown_s=0, daily_cap=server_cap, now=now
        )
        if isinstance(server, UseGranted):
            return Reservation(outcome, server)
        await self.release(Reservation(outcome))
        unit = "images" if action == IMAGINE else "messages"
        raise DailyCapReached(
            f"This server has reached today's limit of {server_cap} {unit} "
            f"({max(server_cap - server.used_today, 0)} left); it resets at 00:00 UTC."
        )

    @staticmethod
    def _refuse(refused: UseRefused, action: str, amount: int, cap: int) -> NoReturn:
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
        for grant in (reservation.user, reservation.server):
            if grant is None:
                continue
            try:
                await self.store.release_use(grant)
            except Exception:
                log.exception("could not give back a %s use of %s", grant.action, grant.user_id)

    async def reset_cooldown(self, user_id: int, action: str) -> None:
        await self.store.reset_cooldown(user_id, action)

    async def used_today(self, user_id: int, action: str) -> int:
        return await self.store.used_today(user_id, action, now=self._clock())

    async def quota(
        self, user_id: int, action: str, *, roles: frozenset[int] = frozenset(), guild_id: int | None = None
    ) -> Quota:
        """Where the user stands with ``action`` today (read-only)."""
        now = self._clock()
        used, last_at = await self.store.usage_of(user_id, action, now=now)
        cooldown = self._cooldown(action)
        left = 0.0
        if cooldown > 0 and last_at is not None:
            left = max(0.0, (last_at - now).total_seconds() + cooldown)
        server_used = 0
        if guild_id is not None and self.server_cap(action):
            server_used, _ = await self.store.usage_of(guild_id, SERVER_PREFIX + action, now=now)
        return Quota(action, used, self.cap(action, roles), left, server_used, self.server_cap(action))
