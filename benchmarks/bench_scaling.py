"""Scale-out benchmark: the same arrival schedule through the local pool and through Ray actors, then a
simulated curve for N GPU nodes from the step times measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --shape tiny    # ~2 minutes, 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py                 # "small": the docs figure

Part 1, measured (needs ``pip install .[ray]``). Engines, one at a time, all continuous batching, all on
this machine, each worker one CPU with one torch thread:

- ``local x1`` / ``local x2``: the local process pool with one / two CPU workers;
- ``ray x1`` / ``ray x2``: ``backend = "ray"`` with one / two CPU worker actors on a one-node Ray cluster
  that this script starts on 127.0.0.1 (the same cluster serves both).

Each gets bench_arrivals.py's seeded schedule (Poisson arrivals of /imagine jobs of 1, 2 or 4 images and
/describe jobs from many users, the same jobs in the same order) at ``--load`` jobs per solo single-image
time S (S measured on ``local x1``): submit->Done p50/p95 for images and for chat, images/s and answers/s
over the run, failures; and the ratios ray/local at the same worker count (the transport's cost) and
x2/x1 (what a second worker buys). On a 2-core machine two workers share two cores with the front, so
x2/x1 here is a floor, not a GPU figure.

Part 2, simulated: N nodes of one worker each, continuous batching with ``max_images_per_batch`` rows,
a decoding step taking a + b * rows seconds, with a and b fitted to this run's solo 1-image and 4-image
times on ``local x1`` (or given with --step-a/--step-b, e.g. from ``bench_generation.py --steps`` on a
GPU); image jobs only, Poisson at a fixed load per node. Prints images/s and p50/p95 per N: the curve
the scheduler would give if the front were free, which the measured x2/x1 can be read against.

Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
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
# A one-node Ray cluster on loopback: without this Ray swaps 127.0.0.1 for the machine's LAN address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from bench_arrivals import N_IMAGES, Job, make_request, make_schedule, make_uploads, run_schedule, summarize
from bench_engine import percentile, save_model

SETUPS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


# ---- part 1: measured ------------------------------------------------------------------------------------


def engine_config(model_dir: Path, backend: str, workers: int, args: argparse.Namespace):
    from janus_engine.config import EngineConfig
    from janus_engine.protocol import ModelSpec

    spec = ModelSpec(model=str(model_dir), local_files_only=True, torch_threads=1)
    return EngineConfig(
        model=spec,
        devices=("cpu",) * workers,
        backend=backend,  # type: ignore[arg-type]
        max_queue=max(64, 2 * args.jobs),
        max_queued_per_user=max(4, args.jobs),  # refusals would hide queueing: let every job in
        max_images_per_batch=args.rows,
        worker_start_timeout_s=300.0,
    )


async def solo(engine, job: Job, tag: str, uploads, args) -> float:
    start = time.perf_counter()
    await engine.submit(make_request(job, tag, uploads, args.answer_tokens), user_id="solo").result()
    return time.perf_counter() - start


async def measure(model_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    from janus_engine.engine import JanusEngine

    uploads = make_uploads(4, args.seed)
    jobs = make_schedule(args.jobs, args.users, args.seed)
    figures: dict[str, object] = {"runs": {}, "startup": {}}
    service = None
    for backend, workers in SETUPS:
        name = f"{backend} x{workers}"
        if backend == "ray" and not _ray_ready(args):
            continue
        engine = JanusEngine(engine_config(model_dir, backend, workers, args))
        t0 = time.perf_counter()
        await engine.start()
        figures["startup"][name] = time.perf_counter() - t0  # type: ignore[index]
        try:
            for i, kind in enumerate(("image", "chat")):  # first calls of each kind, on every worker
                for w in range(workers):
                    await solo(
                        engine, Job(i, 0.0, 0, kind, 1 if kind == "image" else 0), f"warm{w}", uploads, args
                    )
            if service is None:  # the first setup (local x1) sets the rate and the simulation's step times
                ones = [
                    await solo(engine, Job(i, 0.0, 0, "image", 1), f"s1-{i}", uploads, args) for i in range(3)
                ]
                fours = [
                    await solo(engine, Job(i, 0.0, 0, "image", 4), f"s4-{i}", uploads, args) for i in range(3)
                ]
                service = statistics.median(ones)
                figures["solo1"], figures["solo4"] = service, statistics.median(fours)
                print(
                    f"solo submit->Done on local x1 (median of 3): 1 image {service:.3f} s, "
                    f"4 images {figures['solo4']:.3f} s; load {args.load} = {args.load / service:.2f} jobs/s",
                    flush=True,
                )
                print(HEADER, flush=True)
            run = await run_schedule(engine, jobs, args.load / service, name.replace(" ", ""), args, uploads)
            figures["runs"][name] = summarize(run)  # type: ignore[index]
            report_run(name, figures["startup"][name], figures["runs"][name])  # type: ignore[index]
        finally:
            await engine.stop()
    return figures


def _ray_ready(args: argparse.Namespace) -> bool:
    try:
        import ray
    except ImportError:
        print("ray is not installed (pip install .[ray]): the ray rows are skipped")
        return False
    if not ray.is_initialized():
        ray.init(
            num_cpus=4, include_dashboard=False, object_store_memory=256 * 2**20, _node_ip_address="127.0.0.1"
        )
    return True


HEADER = (
    f"{'setup':>8} {'start s':>7} | {'image p50':>9} {'p95':>7} | {'chat p50':>8} {'p95':>7} |"
    f" {'img/s':>6} {'ans/s':>6} | fail unfin"
)


def report_run(name: str, startup: float, s: dict[str, float]) -> None:
    print(
        f"{name:>8} {startup:7.2f} | {s['img_p50']:8.2f}s {s['img_p95']:6.2f}s | {s['chat_p50']:7.2f}s"
        f" {s['chat_p95']:6.2f}s | {s['images_s']:6.2f} {s['answers_s']:6.2f} | {s['failed']:4d}"
        f" {s['unfinished']:5d}",
        flush=True,
    )


def report_ratios(runs: dict[str, dict[str, float]]) -> None:
    pairs = [("ray x1", "local x1"), ("ray x2", "local x2"), ("local x2", "local x1"), ("ray x2", "ray x1")]
    for a, b in pairs:
        if a in runs and b in runs:
            x, y = runs[a], runs[b]
            print(
                f"  {a} / {b}: image p95 {x['img_p95'] / y['img_p95']:5.2f}x, chat p95 "
                f"{x['chat_p95'] / y['chat_p95']:5.2f}x, images/s {x['images_s'] / y['images_s']:5.2f}x, "
                f"answers/s {x['answers_s'] / y['answers_s']:5.2f}x"
            )


# ---- part 2: simulated -----------------------------------------------------------------------------------


def simulate(
    nodes: int, *, rate: float, steps: int, rows: int, a: float, b: float, jobs: int, seed: int
) -> dict[str, float]:
    """Continuous batching on ``nodes`` workers of ``rows`` image rows: jobs (1/2/4 images, Poisson at
    ``rate`` jobs/s) wait in one FIFO queue and join the worker with the most free rows at its next step;
    a step of ``k`` busy rows takes ``a + b * k`` s; a job ends after ``steps`` steps. Returns images/s
    (first arrival to last end) and p50/p95 of arrival->end."""
    rng = random.Random(seed)
    sizes, weights = zip(*N_IMAGES, strict=True)
    arrivals, t = [], 0.0
    for _ in range(jobs):
        t += rng.expovariate(rate)
        arrivals.append((t, rng.choices(sizes, weights)[0]))
    queue: list[tuple[float, int]] = []
    running: list[list[list[float]]] = [[] for _ in range(nodes)]  # per node: [arrived, n, steps left]
    clock = [0.0] * nodes  # when each node's current step ends (its next admission point)
    events = [(0.0, n) for n in range(nodes)]
    heapq.heapify(events)
    ends: list[tuple[float, float, int]] = []
    nxt = 0
    while len(ends) < jobs:
        now, n = heapq.heappop(events)
        while nxt < jobs and arrivals[nxt][0] <= now:
            queue.append(arrivals[nxt])
            nxt += 1
        for job in running[n]:
            if job[2] <= 0:
                ends.append((job[0], now, int(job[1])))
        running[n] = [job for job in running[n] if job[2] > 0]
        free = rows - sum(int(job[1]) for job in running[n])
        while queue and queue[0][1] <= free:  # FIFO, no overtaking (as the engine's dispatcher)
            arrived, size = queue.pop(0)
            running[n].append([arrived, size, steps])
            free -= size
        busy = rows - free
        if busy == 0:  # idle: wake at the next arrival
            wake = arrivals[nxt][0] if nxt < jobs else now + 1.0
            heapq.heappush(events, (max(wake, now), n))
            continue
        for job in running[n]:
            job[2] -= 1
        clock[n] = now + a + b * busy
        heapq.heappush(events, (clock[n], n))
    latencies = [end - arrived for arrived, end, _ in ends]
    span = max(end for _, end, _ in ends) - arrivals[0][0]
    return {
        "images_s": sum(n for _, _, n in ends) / span,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
    }


def report_simulation(args: argparse.Namespace, a: float, b: float, steps: int, source: str) -> None:
    mean_images = sum(n * w for n, w in N_IMAGES) / sum(w for _, w in N_IMAGES)
    capacity = args.rows / (steps * (a + b * args.rows))  # images/s of one node with every row busy
    per_node = args.sim_load * capacity / mean_images  # jobs/s per node
    print(
        f"simulated (part 2): step = {a * 1000:.2f} ms + {b * 1000:.2f} ms x rows ({source}), {steps} steps"
        f" per image, {args.rows} rows per node; one node's ceiling {capacity:.2f} images/s; Poisson image"
        f" jobs at {args.sim_load:.0%} of it per node, {args.sim_jobs} jobs per point"
    )
    print(f"{'nodes':>5} | {'images/s':>8} {'x one':>6} | {'p50 s':>7} {'p95 s':>7}")
    base = None
    for nodes in args.sim_nodes:
        s = simulate(
            nodes,
            rate=per_node * nodes,
            steps=steps,
            rows=args.rows,
            a=a,
            b=b,
            jobs=args.sim_jobs,
            seed=args.seed,
        )
        base = base or s["images_s"]
        print(
            f"{nodes:5d} | {s['images_s']:8.2f} {s['images_s'] / base:5.2f}x |"
            f" {s['p50']:7.2f} {s['p95']:7.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=24, help="jobs per measured run")
    parser.add_argument("--load", type=float, default=3.0, help="arrivals per solo single-image time")
    parser.add_argument("--rows", type=int, default=8, help="max_images_per_batch of every engine")
    parser.add_argument("--answer-tokens", type=int, default=64, help="max_new_tokens of a chat job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds a run may take")
    parser.add_argument("--skip-measured", action="store_true", help="part 2 only (needs --step-a/--step-b)")
    parser.add_argument("--step-a", type=float, help="simulation: seconds per step, fixed part")
    parser.add_argument("--step-b", type=float, help="simulation: seconds per step per busy row")
    parser.add_argument(
        "--steps", type=int, default=None, help="simulation: steps per image (default: model's)"
    )
    parser.add_argument("--sim-load", type=float, default=0.7, help="simulation: load per node (0-1)")
    parser.add_argument("--sim-jobs", type=int, default=2000)
    parser.add_argument(
        "--sim-nodes", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2, 4, 8, 16]
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model", args.shape)
        from transformers import AutoConfig

        tokens = int(AutoConfig.from_pretrained(model_dir).vision_config.num_image_tokens)
        steps = args.steps or tokens
        print(f"model: random Janus '{args.shape}' ({tokens} image tokens), CPU, one torch thread per worker")
        figures: dict[str, object] = {}
        if not args.skip_measured:
            figures = asyncio.run(measure(model_dir, args))
            print("ratios (below 1 = the first is faster):")
            report_ratios(figures["runs"])  # type: ignore[arg-type]
    if args.step_a is not None and args.step_b is not None:
        a, b, source = args.step_a, args.step_b, "given"
    elif "solo1" in figures:
        # Solo times on local x1: t(n) ~ tokens * (a + b * n) (prefill and PNG are small beside the loop).
        one, four = figures["solo1"] / tokens, figures["solo4"] / tokens  # type: ignore[operator]
        b = max(0.0, (four - one) / 3)
        a, source = max(1e-6, one - b), "fitted to this run's solo times"
    else:
        print("part 2 needs the measured part or --step-a and --step-b")
        return 2
    report_simulation(args, a, b, steps, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
