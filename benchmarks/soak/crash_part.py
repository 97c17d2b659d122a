"""Bot crash mid-write: SIGKILL the bot process while exchanges and jobs are being written, restart it.

Each round sends a few /chat, /imagine and /describe requests, opens an Edit-prompt form on an earlier
result, waits a random fraction of a job's time (so the kill lands while rows and messages are being
written) and SIGKILLs the bot. After each restart (whose start-up closes the jobs the dead process left):

- PRAGMA integrity_check is "ok";
- half exchanges (a question stored without its answer): 0;
- jobs left open after the restart's clean-up: 0;
- every request of the round ends up closed for its user: a result, or a message saying it was
  interrupted (a /chat that was thinking when the bot died included);
- an old result's Re-roll button, and the form opened before the kill, are still answered.
"""

from __future__ import annotations

import asyncio
import random

from benchmarks.soak.figures import Figure
from benchmarks.soak.outcomes import interaction_messages, leaks_internals
from benchmarks.soak.traffic import drain, judge, send_one
from benchmarks.soak.world import SoakWorld


async def crash_part(world: SoakWorld, rounds: int, seed: int = 3) -> list[Figure]:
    rng = random.Random(seed)
    users = [world.user(f"crash{i}") for i in range(4)]
    integrity_bad: list[str] = []
    half = 0
    left_open = 0
    old_tried = old_answered = 0
    sent = []
    # One finished result to press buttons on after each restart.
    first = await send_one(world, users[0], "imagine", "crash-base")
    base = await world.emu.wait_for(
        lambda: next((m for m in interaction_messages(first.itx) if _has(m, "janus:edit:")), None),
        timeout=120,
        message="the first result",
    )
    for n in range(rounds):
        form = await world.press(users[0], base, _custom_id(base, "janus:edit:"))
        await world.emu.wait_for(lambda f=form: f.modal or f.failed or None, timeout=10, message="the form")
        batch = [
            await send_one(world, users[i % len(users)], kind, f"crash{n}")
            for i, kind in enumerate(("chat", "imagine", "describe", "chat", "imagine"))
        ]
        sent += batch
        await asyncio.sleep(rng.uniform(0.05, 1.5))
        await world.kill_bot()
        await world.start_bot()
        check = world.query("PRAGMA integrity_check")[0][0]
        if check != "ok":
            integrity_bad.append(f"round {n}: {check}")
        half += _half_exchanges(world)
        left_open += world.query("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]
        # Buttons on a message from before the kill, and the form opened before it.
        old_tried += 2
        reroll = await world.press(users[0], base, _custom_id(base, "janus:reroll:"))
        submitted = await world.emu.submit_modal(
            users[0], form, {"prompt": f"soak crash{n} edited: a blue cube"}
        )
        world.interactions.append(submitted)
        for itx in (reroll, submitted):
            await itx.wait_response()
            old_answered += int(not itx.failed and bool(itx.responses))
    await drain(world, sent, 180)
    tally = judge(world, sent)
    not_closed = [o for o in tally.outcomes if o.status == "lost"]
    told = [o for o in tally.outcomes if o.status == "failed" and "interrupted" in o.reason.lower()]
    unclear = [o for o in tally.outcomes if o.unclear or leaks_internals(o.reason)]
    replaced = [o for o in tally.outcomes if _result_replaced(o.sent)]
    return [
        Figure("bot crash", "SIGKILLs of the bot mid-write (restarted each time)", rounds),
        Figure(
            "bot crash",
            "PRAGMA integrity_check not ok",
            len(integrity_bad),
            must=0,
            detail="; ".join(integrity_bad),
        ),
        Figure("bot crash", "half exchanges (question without answer)", half, must=0),
        Figure("bot crash", "jobs left open after the restart's clean-up", left_open, must=0),
        Figure("bot crash", "requests in flight at the kills", len(sent)),
        Figure(
            "bot crash", "completed / told they were interrupted", f"{tally.count('completed')} / {len(told)}"
        ),
        Figure(
            "bot crash",
            "requests never closed for their user",
            len(not_closed),
            must=0,
            detail="; ".join(f"{o.sent.kind} {o.sent.text!r}" for o in not_closed[:3]),
        ),
        Figure("bot crash", "misrouted", len(tally.misrouted), must=0),
        Figure(
            "bot crash",
            "results posted, then replaced by 'interrupted'",
            len(replaced),
            must=0,
            detail="; ".join(repr(o.sent.text) for o in replaced[:3]),
        ),
        Figure(
            "bot crash",
            "unclear messages",
            len(unclear),
            must=0,
            detail="; ".join(f"{o.sent.text!r}: {o.unclear or o.reason}" for o in unclear[:3]),
        ),
        Figure("bot crash", "old buttons and forms answered after a restart", old_answered, must=old_tried),
    ]


def _result_replaced(sent) -> bool:
    """A message that showed the finished result (images with Re-roll; an answer no longer streaming)
    and later said the job was interrupted: the restart's clean-up must never overwrite a delivery."""
    for m in interaction_messages(sent.itx):
        if "interrupted" not in str(m.content or ""):
            continue
        for r in m.revisions:
            text = str(r.content or "")
            if sent.kind == "imagine":
                ids = [c.get("custom_id", "") for row in r.components for c in row.get("components", [])]
                if r.attachment_ids and any(i.startswith("janus:reroll:") for i in ids):
                    return True
            elif text.strip() and "▌" not in text and "queue" not in text.lower():
                return True
    return False


def _has(message, prefix: str) -> bool:
    return any(c.startswith(prefix) for c in message.custom_ids())


def _custom_id(message, prefix: str) -> str:
    return next(c for c in message.custom_ids() if c.startswith(prefix))


def _half_exchanges(world: SoakWorld) -> int:
    sql = (
        "SELECT count(*) FROM turns q WHERE q.role = 'user' AND NOT EXISTS "
        "(SELECT 1 FROM turns a WHERE a.reply_to_turn_id = q.id AND a.role = 'assistant')"
    )
    return int(world.query(sql)[0][0])
