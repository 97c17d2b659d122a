"""Cooldowns and daily caps counted in the database (SQLite and PostgreSQL): atomic, shared by every store
(bot process) on the database, given back when a request never reached the engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import LimitsSection
from bot.errors import CooldownActive, DailyCapReached
from bot.limits import CHAT, IMAGINE, UsageLimiter
from bot.store import Store

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_a_reservation_counts_at_once_and_a_release_gives_it_back(store: Store) -> None:
    now = [START]
    limiter = UsageLimiter(
        LimitsSection(imagine_cooldown_s=10, chat_cooldown_s=0, images_per_user_per_day=5),
        store,
        clock=lambda: now[0],
    )
    first = await limiter.reserve(1, IMAGINE, 4)
    with pytest.raises(CooldownActive, match="10s"):
        await limiter.reserve(1, IMAGINE)
    await limiter.release(await limiter.reserve(2, IMAGINE))  # other users are unaffected
    await limiter.release(await limiter.reserve(1, CHAT))  # and other actions
    # The request failed before the engine took it (bad upload, full queue): nothing is charged.
    await limiter.release(first)
    assert await limiter.used_today(1, IMAGINE) == 0
    assert (await limiter.reserve(1, IMAGINE, 5)).amount == 5
    now[0] += timedelta(seconds=10.5)
    with pytest.raises(DailyCapReached, match="0 left"):
        await limiter.reserve(1, IMAGINE, 1)
    now[0] += timedelta(days=1)
    stale = await limiter.reserve(1, IMAGINE, 5)
    now[0] += timedelta(days=1)
    await limiter.reserve(1, IMAGINE, 5)
    await limiter.release(stale)  # yesterday's use is not taken off today's count
    now[0] += timedelta(seconds=10.5)
    with pytest.raises(DailyCapReached, match="today's limit of 5 images"):
        await limiter.reserve(1, IMAGINE, 1)


async def test_a_release_keeps_a_later_use_s_cooldown(store: Store) -> None:
    now = [START]
    limiter = UsageLimiter(LimitsSection(imagine_cooldown_s=10), store, clock=lambda: now[0])
    first = await limiter.reserve(7, IMAGINE)
    now[0] += timedelta(seconds=11)
    await limiter.reserve(7, IMAGINE)  # a later use, already counted
    await limiter.release(first)
    with pytest.raises(CooldownActive):
        await limiter.reserve(7, IMAGINE)  # the later use's cooldown still runs
    await limiter.reset_cooldown(7, IMAGINE)
    await limiter.reserve(7, IMAGINE)


async def test_a_cap_refusal_says_how_many_are_left(store: Store) -> None:
    limiter = UsageLimiter(LimitsSection(imagine_cooldown_s=0, images_per_user_per_day=3), store)
    await limiter.reserve(3, IMAGINE, 2)
    with pytest.raises(DailyCapReached, match=r"1 left; this request needs 2"):
        await limiter.reserve(3, IMAGINE, 2)
    await limiter.reserve(3, IMAGINE, 1)


@pytest.mark.parametrize(("cooldown_s", "cap", "granted"), [(0, 5, 5), (60, 0, 1)])
async def test_two_processes_at_once_never_pass_together(
    db_url: str, cooldown_s: float, cap: int, granted: int
) -> None:
    """Two stores on one database, as two bot processes have, each firing 10 requests of the same user at
    once: exactly the cap (or the one use a cooldown allows) is granted, never more."""
    limits = LimitsSection(imagine_cooldown_s=cooldown_s, images_per_user_per_day=cap)
    first, second = await Store.open(db_url), await Store.open(db_url)
    try:
        limiters = [UsageLimiter(limits, first), UsageLimiter(limits, second)]
        outcomes = await asyncio.gather(
            *(limiter.reserve(42, IMAGINE) for limiter in limiters for _ in range(10)), return_exceptions=True
        )
    finally:
        await first.close()
        await second.close()
    passed = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, CooldownActive | DailyCapReached)]
    assert len(passed) == granted and len(refused) == 20 - granted, outcomes


async def test_trusted_roles_get_larger_caps_and_a_server_cap_holds_for_everyone(store: Store) -> None:
    now = [START]
    limits = LimitsSection(
        imagine_cooldown_s=0,
        images_per_user_per_day=2,
        trusted_roles=(77,),
        trusted_cap_multiplier=3.0,
        images_per_server_per_day=7,
    )
    limiter = UsageLimiter(limits, store, clock=lambda: now[0])
    guild = 5000
    with pytest.raises(DailyCapReached, match="limit of 2 images"):
        await limiter.reserve(1, IMAGINE, 3, guild_id=guild)  # a plain member: 2 a day
    patron = await limiter.reserve(2, IMAGINE, 6, roles=frozenset({77, 8}), guild_id=guild)  # 2 x 3
    assert patron.server is not None and patron.server.amount == 6
    # The server has 1 left of 7: a member still under their own cap is refused by the server's.
    with pytest.raises(DailyCapReached, match="This server has reached today's limit of 7 images"):
        await limiter.reserve(3, IMAGINE, 2, guild_id=guild)
    assert await limiter.used_today(3, IMAGINE) == 0  # the member's own use was given back
    await limiter.reserve(3, IMAGINE, 1, guild_id=guild)
    quota = await limiter.quota(3, IMAGINE, guild_id=guild)
    assert (quota.used, quota.cap, quota.server_used, quota.server_cap) == (1, 2, 7, 7)
    assert (await limiter.quota(2, IMAGINE, roles=frozenset({77}))).cap == 6
    await limiter.reserve(4, IMAGINE, 2, guild_id=guild + 1)  # another server counts apart
    await limiter.release(patron)  # gives back both counts
    assert (await limiter.quota(3, IMAGINE, guild_id=guild)).server_used == 1
    now[0] += timedelta(days=1)
    assert (await limiter.quota(3, IMAGINE, guild_id=guild)).server_used == 0
