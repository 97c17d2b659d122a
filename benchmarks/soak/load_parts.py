"""Load, and worker faults under load: what the issue's first two rows measure.

- load: ``burst`` interactions from ``users`` users at once, then Poisson arrivals at ``rate`` per
  second for ``seconds``; drained, then each judged (outcomes.py).
- worker faults: the same stream, with a worker SIGKILLed every ``kill_every`` accepted jobs; besides
  the outcomes, how long the engine took to have a worker again (kill to a new worker pid that has
  finished a job).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

from benchmarks.soak.figures import Figure
from benchmarks.soak.traffic import burst, drain, judge, steady, tally_figures
from benchmarks.soak.world import SoakWorld


@dataclass(frozen=True)
class LoadPlan:
    users: int = 50
    burst: int = 200
    rate: float = 0.7
    seconds: float = 180.0
    drain_s: float = 600.0


@dataclass(frozen=True)
class FaultPlan:
    users: int = 10
    rate: float = 0.7
    seconds: float = 120.0
    kill_every: int = 6
    drain_s: float = 300.0


async def load_part(world: SoakWorld, plan: LoadPlan) -> list[Figure]:
    users = [world.user(f"load{i}") for i in range(plan.users)]
    started = time.monotonic()
    sent = await burst(world, users, plan.burst, "burst")
    burst_drain = await drain(world, sent, plan.drain_s)
    sent += await steady(world, users, plan.rate, plan.seconds, "steady")
    await drain(world, sent, plan.drain_s)
    figures = tally_figures("load", judge(world, sent), world)
    figures.insert(
        1,
        Figure(
            "load", f"burst of {plan.burst} from {plan.users} users: seconds to drain", round(burst_drain, 1)
        ),
    )
    figures.append(Figure("load", "wall seconds", round(time.monotonic() - started, 1)))
    return figures


async def fault_part(world: SoakWorld, plan: FaultPlan) -> list[Figure]:
    users = [world.user(f"fault{i}") for i in range(plan.users)]
    recoveries: list[float] = []
    kills = 0
    stop = asyncio.Event()

    async def killer() -> None:
        nonlocal kills
        seen = _accepted(world)
        while not stop.is_set():
            await asyncio.sleep(0.2)
            if _accepted(world) - seen < plan.kill_every:
                continue
            pids = world.worker_pids()
            if not pids:
                continue
            os.kill(pids[0], signal.SIGKILL)
            kills += 1
            killed_at = time.monotonic()
            recoveries.append(await _recovered(world, pids[0], killed_at))
            seen = _accepted(world)

    task = asyncio.create_task(killer())
    try:
        sent = await steady(world, users, plan.rate, plan.seconds, "fault", seed=2)
    finally:
        stop.set()
        await task
    await drain(world, sent, plan.drain_s)
    figures = tally_figures("worker faults", judge(world, sent), world)
    figures.insert(1, Figure("worker faults", "workers killed (kill -9)", kills))
    if recoveries:
        figures.append(
            Figure(
                "worker faults",
                "seconds to recovery (kill to next job done), worst",
                round(max(recoveries), 1),
            )
        )
        figures.append(
            Figure(
                "worker faults",
                "seconds to recovery, median",
                round(sorted(recoveries)[len(recoveries) // 2], 1),
            )
        )
    return figures


def _accepted(world: SoakWorld) -> int:
    return int(
        world.query("SELECT count(*) FROM jobs WHERE status != 'failed' OR error NOT LIKE '%queue%'")[0][0]
    )


async def _recovered(world: SoakWorld, dead: int, since: float, timeout: float = 120.0) -> float:
    """Seconds from the kill until a job finished (done) after it on a worker other than the dead one."""
    before = world.query("SELECT count(*) FROM jobs WHERE status = 'done'")[0][0]
    while time.monotonic() - since < timeout:
        pids = world.worker_pids()
        done = world.query("SELECT count(*) FROM jobs WHERE status = 'done'")[0][0]
        if pids and dead not in pids and done > before:
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    return timeout
