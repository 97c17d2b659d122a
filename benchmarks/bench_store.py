"""Benchmark of the conversation store's hot path: append a turn, then build the model context.

    .venv/bin/python benchmarks/bench_store.py [--conversations 10000] [--turns 100000] [--iterations 500]

It seeds a real SQLite file (migrated by Alembic) with many conversations and turns, some with images,
then times what every chat message costs: ``append_turn`` (the user's turn with its text, sometimes an
image) and ``build_context`` (a Janus-sized budget: 4096 tokens - 512 for the reply, 578 per image).
The same messages also go, interleaved, to a database 100 times smaller with conversations of the same
shape (100 conversations of 10 turns): that baseline, measured in the same run under the same machine
load, shows what the size of the database adds. "CPU per message" (process time of all threads) is the
figure least disturbed by other programs on a busy machine. Target: p50 of append + context under 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import insert

from bot.store import ContextBudget, ConversationKey, ConversationScope, Store
from bot.store.models import Conversation, ConversationTurn, Image, TurnImage

BUDGET = ContextBudget(total_tokens=4096 - 512, tokens_per_image=578, tokens_per_turn=4)
WORDS = ("the", "a", "cat", "dog", "red", "blue", "photo", "image", "shows", "what", "is", "this", "sky")
BASELINE_CONVERSATIONS = 100
_MESSAGE_IDS = itertools.count(10**15 + time.time_ns() % 10**12)


def random_png(rng: random.Random, size: int = 64) -> bytes:
    image = PILImage.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def seed(store: Store, conversations: int, turns: int, images: list[bytes], rng: random.Random) -> None:
    """Bulk insert through SQLAlchemy Core executemany, a few big transactions."""
    import hashlib

    now = datetime.now(UTC)
    hashes = [hashlib.sha256(png).hexdigest() for png in images]
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(Image),
            [
                {
                    "sha256": h,
                    "data": png,
                    "width": 64,
                    "height": 64,
                    "size_bytes": len(png),
                    "created_at": now,
                }
                for h, png in zip(hashes, images, strict=True)
            ],
        )
        await conn.execute(
            insert(Conversation),
            [
                {
                    "id": c + 1,
                    "key": ConversationKey(ConversationScope.USER, 1, 1000 + c % 50, c).as_text(),
                    "scope": "user",
                    "guild_id": 1,
                    "channel_id": 1000 + c % 50,
                    "user_id": c,
                    "created_at": now - timedelta(days=1),
                }
                for c in range(conversations)
            ],
        )
    per_conversation = max(1, turns // conversations)
    batch: list[dict] = []
    links: list[dict] = []
    turn_id = 0
    for c in range(conversations):
        for k in range(per_conversation):
            turn_id += 1
            text = sentence(rng, rng.randint(5, 60))
            batch.append(
                {
                    "id": turn_id,
                    "conversation_id": c + 1,
                    "role": "user" if k % 2 == 0 else "assistant",
                    "text": text,
                    "author_id": c if k % 2 == 0 else None,
                    "reply_to_turn_id": None,
                    "token_count": len(text.split()),
                    "created_at": now - timedelta(minutes=per_conversation - k),
                }
            )
            if k % 2 == 0 and rng.random() < 0.2:
                links.append({"turn_id": turn_id, "position": 0, "image_sha256": rng.choice(hashes)})
        if len(batch) >= 20_000:
            await _flush(store, batch, links)
    await _flush(store, batch, links)


async def _flush(store: Store, batch: list[dict], links: list[dict]) -> None:
    async with store.engine.begin() as conn:
        if batch:
            await conn.execute(insert(ConversationTurn), batch)
        if links:
            await conn.execute(insert(TurnImage), links)
    batch.clear()
    links.clear()


@dataclass
class Timings:
    append_ms: list[float] = field(default_factory=list)
    context_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU time (all threads: the event loop and aiosqlite's) spent in the ops


async def one_message(
    store: Store, conv: int, i: int, images: list[bytes], rng: random.Random, out: Timings
) -> None:
    """What one chat message costs the store: append the user's turn, build the context ending with it."""
    pictures = [rng.choice(images)] if i % 10 == 0 else []
    text = sentence(rng, 30)
    c0, t0 = time.process_time(), time.perf_counter()
    turn = await store.append_turn(
        conv, "user", text, author_id=1, images=pictures, message_ids=[next(_MESSAGE_IDS)]
    )
    t1 = time.perf_counter()
    await store.build_context(conv, BUDGET, up_to_turn_id=turn.id)
    t2, c2 = time.perf_counter(), time.process_time()
    out.append_ms.append((t1 - t0) * 1000)
    out.context_ms.append((t2 - t1) * 1000)
    out.cpu_s += c2 - c0


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def report(label: str, t: Timings) -> float:
    both = [a + c for a, c in zip(t.append_ms, t.context_ms, strict=True)]
    print(f"{label}")
    for name, values in (
        ("append_turn", t.append_ms),
        ("build_context", t.context_ms),
        ("append + context", both),
    ):
        print(f"  {name:<17} p50 {statistics.median(values):6.2f} ms   p95 {percentile(values, 95):6.2f} ms")
    print(f"  {'CPU per message':<17} {t.cpu_s / len(both) * 1000:6.2f} ms (all threads of this process)")
    return statistics.median(both)


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    images = [random_png(rng) for _ in range(200)]
    workdir = Path(args.db_dir or tempfile.mkdtemp(prefix="bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)

    baseline_db = workdir / "baseline.db"
    big_db = workdir / "seeded.db"
    for path in (baseline_db, big_db):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    baseline = await Store.open(f"sqlite+aiosqlite:///{baseline_db}")
    seeded = await Store.open(f"sqlite+aiosqlite:///{big_db}")
    try:
        await seed(baseline, BASELINE_CONVERSATIONS, BASELINE_CONVERSATIONS * 10, images, rng)
        t0 = time.perf_counter()
        await seed(seeded, args.conversations, args.turns, images, rng)
        seconds = time.perf_counter() - t0
        print(f"seeded {args.conversations} conversations, {args.turns} turns in {seconds:.1f} s")
        # Interleaved, so that both databases see the same machine load: the ratio is what is comparable.
        base_t, big_t = Timings(), Timings()
        for i in range(args.warmup + args.iterations):
            warm = i < args.warmup
            await one_message(
                baseline,
                rng.randint(1, BASELINE_CONVERSATIONS),
                i,
                images,
                rng,
                Timings() if warm else base_t,
            )
            await one_message(
                seeded, rng.randint(1, args.conversations), i, images, rng, Timings() if warm else big_t
            )
    finally:
        await baseline.close()
        await seeded.close()
    base = report(
        f"baseline: {BASELINE_CONVERSATIONS} conversations, {BASELINE_CONVERSATIONS * 10} turns", base_t
    )
    big = report(f"seeded: {args.conversations} conversations, {args.turns} turns", big_t)
    size_mb = (
        sum(Path(f"{big_db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{big_db}{s}").exists()) / 1e6
    )
    print(f"database file: {size_mb:.0f} MB in {workdir}")
    print(f"ratio seeded/baseline (p50 append + context): {big / base:.2f}x")
    print(f"target p50 < 5 ms: {'met' if big < 5 else 'NOT met'} ({big:.2f} ms)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db-dir", default=None, help="where to put the databases (default: a temp dir)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
