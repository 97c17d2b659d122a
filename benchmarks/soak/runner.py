"""Runs the soak's parts in order against one emulator and one bot process, and collects the table."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.soak.figures import Figure
from benchmarks.soak.load_parts import FaultPlan, LoadPlan, fault_part, load_part
from benchmarks.soak.world import SoakWorld, open_world


@dataclass(frozen=True)
class SoakPlan:
    load: LoadPlan = field(default_factory=LoadPlan)
    faults: FaultPlan = field(default_factory=FaultPlan)
    crashes: int = 10
    parts: tuple[str, ...] = ("load", "faults", "crash", "isolation", "hostile", "secrets")


def quick_plan() -> SoakPlan:
    """A few seconds of each part: what CI runs (tests/test_soak.py)."""
    return SoakPlan(
        load=LoadPlan(users=10, burst=30, rate=1.0, seconds=4.0, drain_s=240.0),
        faults=FaultPlan(users=4, rate=1.0, seconds=8.0, kill_every=3, drain_s=180.0),
        crashes=2,
    )


Part = Callable[[SoakWorld, SoakPlan], Awaitable[list[Figure]]]


def _parts() -> dict[str, Part]:
    from benchmarks.soak.crash_part import crash_part
    from benchmarks.soak.hostile_part import hostile_part
    from benchmarks.soak.isolation_part import isolation_part
    from benchmarks.soak.secrets_part import secrets_part

    return {
        "load": lambda w, p: load_part(w, p.load),
        "faults": lambda w, p: fault_part(w, p.faults),
        "crash": lambda w, p: crash_part(w, p.crashes),
        "isolation": lambda w, p: isolation_part(w),
        "hostile": lambda w, p: hostile_part(w),
        "secrets": lambda w, p: secrets_part(w),  # last: it reads every log line the others caused
    }


async def run_soak(
    plan: SoakPlan, tiny_model_dir: Path, tmp: Path, log: Callable[[str], None] = print
) -> list[Figure]:
    emu, world = await open_world(tiny_model_dir, tmp)
    figures: list[Figure] = []
    parts = _parts()
    try:
        await world.start_bot()
        for name in plan.parts:
            started = time.monotonic()
            log(f"==> {name}")
            got = await parts[name](world, plan)
            figures += got
            log(f"    {name}: {time.monotonic() - started:.1f} s")
    finally:
        await world.stop_bot()
        await emu.stop()
    return figures


def replace_parts(plan: SoakPlan, parts: tuple[str, ...]) -> SoakPlan:
    return dataclasses.replace(plan, parts=parts)
