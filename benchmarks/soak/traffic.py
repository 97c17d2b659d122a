"""The soak's requests: a mix of /imagine (1-2 images), /describe with an image and /chat, each with a
text no other request has, sent in bursts or at a steady rate, then drained and judged."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence

from benchmarks.soak.figures import Figure
from benchmarks.soak.outcomes import Sent, Tally, classify, read_rows
from benchmarks.soak.world import SoakWorld
from discord_emulator import Upload, User
from tests.bot.bot_world import png_bytes

_serial = itertools.count(1)


async def send_one(world: SoakWorld, user: User, kind: str, tag: str) -> Sent:
    """One request of ``kind``; its text is unique in the whole soak."""
    n = next(_serial)
    if kind == "imagine":
        text = f"soak {tag} {n}: a red cube on a table"
        itx = await world.slash(user, "imagine", prompt=text, count=1 + n % 2)
    elif kind == "describe":
        text = f"soak {tag} {n}: what colour is this?"
        color = (n * 37 % 256, n * 91 % 256, 120)
        upload = Upload(f"soak{n}.png", png_bytes(color), "image/png")
        itx = await world.slash(user, "describe", image=upload, question=text)
    else:
        text = f"soak {tag} {n}: say hello"
        itx = await world.slash(user, "chat", message=text)
    return Sent(kind, user, text, itx)


KINDS = ("imagine", "describe", "chat", "imagine")


async def burst(world: SoakWorld, users: Sequence[User], count: int, tag: str) -> list[Sent]:
    """``count`` requests at once, spread over ``users`` round-robin (all dispatched before any answer)."""
    return list(
        await asyncio.gather(
            *(send_one(world, users[i % len(users)], KINDS[i % len(KINDS)], tag) for i in range(count))
        )
    )


async def steady(
    world: SoakWorld, users: Sequence[User], rate: float, seconds: float, tag: str, seed: int = 1
) -> list[Sent]:
    """Poisson arrivals at ``rate`` per second for ``seconds``: random users and kinds."""
    rng = random.Random(seed)
    sent: list[Sent] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent.append(await send_one(world, rng.choice(users), rng.choice(KINDS), tag))
        await asyncio.sleep(rng.expovariate(rate))
    return sent


async def drain(world: SoakWorld, sent: Sequence[Sent], timeout: float) -> float:
    """Wait until every accepted job row is closed and no chat answer is still streaming; returns the
    seconds it took (``timeout`` when it gave up: what is still open then counts as lost)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        open_jobs = world.query("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]
        streaming = [s for s in sent if s.kind == "chat" and _pending(s)]
        if not open_jobs and not streaming:
            await asyncio.sleep(0.5)  # the follower's last edits and writes after the job's row closes
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    return timeout


def _pending(s: Sent) -> bool:
    msg = s.itx.original
    if s.itx.failed:
        return False
    return msg is None or msg.loading or "▌" in (msg.content or "")


def judge(world: SoakWorld, sent: Sequence[Sent]) -> Tally:
    rows = read_rows(world)
    return Tally([classify(s, rows) for s in sent])


def tally_figures(part: str, tally: Tally, world: SoakWorld) -> list[Figure]:
    """The rows every traffic part prints: answered in 3 s, outcomes, lost, misrouted, rows vs posts."""
    total = len(tally.outcomes)
    refused = tally.reasons("refused")
    failed = tally.reasons("failed")
    stored = sum(1 for o in tally.outcomes if o.stored)
    delivered = sum(1 for o in tally.outcomes if o.delivered)
    lost = [o for o in tally.outcomes if o.status == "lost"]
    return [
        Figure(part, "interactions", total),
        Figure(part, "answered within 3 s", tally.answered_3s, must=total),
        Figure(part, "refused at once (reasons)", f"{tally.count('refused')} ({_reasons(refused)})"),
        Figure(part, "completed", tally.count("completed")),
        Figure(part, "failed with a reason", f"{tally.count('failed')} ({_reasons(failed)})"),
        Figure(
            part,
            "lost (accepted, never closed)",
            len(lost),
            must=0,
            detail="; ".join(f"{o.sent.kind} {o.sent.text!r}" for o in lost[:3]),
        ),
        Figure(
            part,
            "misrouted",
            len(tally.misrouted),
            must=0,
            detail="; ".join(f"{o.sent.text!r}: {o.misrouted}" for o in tally.misrouted[:3]),
        ),
        Figure(
            part,
            "refusals/failures without a clear sentence",
            len(tally.unclear),
            must=0,
            detail="; ".join(f"{o.sent.text!r}: {o.unclear}" for o in tally.unclear[:3]),
        ),
        Figure(part, "results delivered in Discord", delivered),
        Figure(part, "results stored (jobs done, exchanges)", stored, must=delivered),
    ]


def _reasons(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "-"
