"""Late arrivals, one at a time: what a job submitted while another decodes waits, under each policy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_join.py              # CPU, "small" shape (~3 min)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_join.py --shape tiny # the test checkpoint

The issue behind continuous batching measured two cases on run-to-completion batching: an image job
submitted 1 s after another waited for the whole first batch (13.9 s instead of 7.8 s together), and a
/describe arriving 1 s into an image batch took 6.2 s instead of 0.3-0.6 s. This runs both cases through
one JanusEngine per policy (``EngineSettings.batching``), same random model folder (bench_engine.py's),
one CPU worker each, alternating policies, ``--repeats`` times; medians of submit->Done:

- join: image job A (1 image) at t=0, image job B (1 image) at t=``--delay``; B's time, and A's;
- describe: an image job of 4 images at t=0, a /describe (one 256x256 upload, greedy, ``--answer-tokens``)
  at t=``--delay``; the answer's time, and the image job's;
- solo: B alone and the /describe alone (what each costs with nothing in the way).

Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_arrivals import Job, make_request, make_uploads
from bench_engine import save_model

POLICIES = ("run_to_completion", "continuous")


async def timed(engine, request, user: str, delay: float = 0.0) -> float:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    await engine.submit(request, user_id=user).result()
    return time.perf_counter() - start


async def one_round(engine, r: int, args, uploads) -> dict[str, tuple[float, ...]]:
    def image(i: int, n: int = 1):
        return make_request(Job(i, 0.0, 0, "image", n), f"r{r}-img{i}", uploads, args.answer_tokens)

    def describe(i: int):
        return make_request(Job(i, 0.0, 0, "chat", 0), f"r{r}-chat{i}", uploads, args.answer_tokens)

    join = await asyncio.gather(timed(engine, image(1), "a"), timed(engine, image(2), "b", args.delay))
    chat = await asyncio.gather(timed(engine, image(3, 4), "a"), timed(engine, describe(4), "b", args.delay))
    solo = (await timed(engine, image(2), "b"), await timed(engine, describe(4), "b"))
    return {"join": tuple(join), "describe": tuple(chat), "solo": solo}


async def run(model_dir: Path, args) -> dict[str, list[dict[str, tuple[float, ...]]]]:
    from janus_engine.config import EngineConfig, EngineSettings
    from janus_engine.engine import JanusEngine
    from janus_engine.protocol import ModelSpec

    spec = ModelSpec(model=str(model_dir), local_files_only=True, torch_threads=1)
    uploads = make_uploads(4, 0)
    engines = {}
    results: dict[str, list[dict[str, tuple[float, ...]]]] = {p: [] for p in POLICIES}
    try:
        for policy in POLICIES:
            settings = dataclasses.replace(EngineSettings(), batching=policy, batch_window_s=0.05)
            engines[policy] = JanusEngine(EngineConfig.from_settings(settings, model=spec, devices=("cpu",)))
            await engines[policy].start()
            await one_round(engines[policy], -1, args, uploads)  # warm-up
        for r in range(args.repeats):
            order = POLICIES if r % 2 == 0 else tuple(reversed(POLICIES))
            for policy in order:
                results[policy].append(await one_round(engines[policy], r, args, uploads))
    finally:
        for engine in engines.values():
            await engine.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds between the two submissions")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model", args.shape)
        results = asyncio.run(run(model_dir, args))

    def med(policy: str, case: str, index: int) -> float:
        return statistics.median(r[case][index] for r in results[policy])

    print(
        f"model: random Janus '{args.shape}', CPU, one worker per engine, torch threads 1; "
        f"second job {args.delay:g} s after the first; medians of {args.repeats}, submit->Done"
    )
    print(
        f"{'policy':>17} | {'B late':>7} {'A':>7} | {'describe late':>13} {'4 images':>8} |"
        f" {'B solo':>7} {'describe solo':>13}"
    )
    for policy in POLICIES:
        print(
            f"{policy:>17} | {med(policy, 'join', 1):6.2f}s {med(policy, 'join', 0):6.2f}s |"
            f" {med(policy, 'describe', 1):12.2f}s {med(policy, 'describe', 0):7.2f}s |"
            f" {med(policy, 'solo', 0):6.2f}s {med(policy, 'solo', 1):12.2f}s"
        )
    for case, index, name in (("join", 1, "image B late"), ("describe", 1, "describe late")):
        ratio = med("continuous", case, index) / med("run_to_completion", case, index)
        print(f"continuous / run_to_completion, {name}: {ratio:.2f}x (below 1 = continuous is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
