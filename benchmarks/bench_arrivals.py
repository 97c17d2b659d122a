"""Open-loop benchmark: jobs arriving at random times (Poisson) from many users, under each batching policy.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_arrivals.py --shape tiny   # a minute on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_arrivals.py                # "small": the docs figure

bench_engine.py measures a burst (16 users at t=0). Real traffic arrives while the engine is busy: under
run-to-completion batching a job that arrives just after a batch started waits for that whole batch, which
continuous (iteration-level) batching is meant to avoid. This measures that, on the same model folder and
the same arrival schedule for every policy:

- the model is bench_engine.py's random "tiny" or "small" Janus, saved to a temporary folder; one
  JanusEngine per policy (``EngineSettings.batching``), each with one CPU worker (one torch thread), both
  started once and kept up; only one serves at a time (an idle worker waits on its pipe, costing nothing);
- first, a solo single-image job (submit->Done) is timed on each engine; its median on the
  run_to_completion engine, S, sets the rates: ``--loads 0.5,1.5,4`` means 0.5/S, 1.5/S and 4/S jobs/s
  ("1" = one job per solo single-image time, what a server without batching could just about carry);
- one seeded schedule of ``--jobs`` jobs from ``--users`` users: Poisson arrivals (exponential gaps, scaled
  to each rate), /imagine-like GenerateRequests (1, 2 or 4 images) and /describe-like UnderstandRequests
  (one uploaded image + a question, greedy, at most ``--answer-tokens`` tokens); the same jobs in the same
  order at every rate and for every policy; policies alternate order from one rate to the next;
- each job is timed from submit to its Done event. Per (rate, policy): p50/p95 (nearest rank, over the
  ~20 image and ~13 chat jobs) for image jobs and for chat jobs separately; throughput, images/s and
  answers/s over the run, first arrival to last Done (below saturation that is just the offered load);
  the engine's own batch count; mean tokens per answer (greedy: should match across policies);
  how many jobs failed, were cancelled, refused or unfinished; per rate, continuous/run_to_completion
  ratios of the p95s (and p50s, throughputs).

Per-user queue bounds are raised so that no job is refused; every other setting is the engine's
default. Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_engine import GUIDANCE, PROMPTS, TEMPERATURE, percentile, save_model

POLICIES = ("run_to_completion", "continuous")
QUESTIONS = [
    "Describe this image in detail.", "What colours are in this picture?", "What is in the picture?",
    "Is there a person in this image?", "What mood does this image have?", "Write a caption for this.",
]  # fmt: skip
IMAGE_SHARE = 0.6  # of jobs; the rest are chat (describe) jobs
N_IMAGES = ((1, 0.5), (2, 0.3), (4, 0.2))  # images per /imagine job, with their weights


@dataclass(frozen=True)
class Job:
    index: int
    at: float  # arrival time at rate 1 job/s (first job at 0)
    user: int
    kind: str  # "image" | "chat"
    n_images: int  # images asked for; 0 for chat


@dataclass
class Outcome:
    kind: str
    n_images: int
    submitted: float
    ended: float
    status: str  # done | failed | cancelled | refused | unfinished (no terminal event in time)
    tokens: int = 0


def make_schedule(n: int, users: int, seed: int) -> list[Job]:
    """``n`` jobs, ``IMAGE_SHARE`` of them image jobs (exactly, rounded), in a seeded random order."""
    rng = random.Random(seed)
    kinds = ["image"] * round(IMAGE_SHARE * n) + ["chat"] * (n - round(IMAGE_SHARE * n))
    rng.shuffle(kinds)
    owners = [i % users for i in range(n)]  # every user sends about as many jobs, in a random order
    rng.shuffle(owners)
    sizes, weights = zip(*N_IMAGES, strict=True)
    jobs, at = [], 0.0
    for i, (kind, user) in enumerate(zip(kinds, owners, strict=True)):
        if i:
            at += rng.expovariate(1.0)
        n_images = rng.choices(sizes, weights)[0] if kind == "image" else 0
        jobs.append(Job(i, at, user, kind, n_images))
    return jobs


def make_uploads(count: int, seed: int) -> list[bytes]:
    """A few 256x256 PNGs (smooth random colour fields), as an upload looks once the bot normalised it."""
    from PIL import Image

    from janus_engine.images import encode_png

    rng = random.Random(seed)
    uploads = []
    for _ in range(count):
        small = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3)))
        uploads.append(encode_png(small.resize((256, 256), Image.Resampling.BILINEAR)))
    return uploads


def make_request(job: Job, tag: str, uploads: list[bytes], answer_tokens: int):
    from janus_engine.protocol import GenerateRequest, TextSampling, Turn, UnderstandRequest

    request_id = f"{tag}-{job.index}"
    if job.kind == "image":
        prompt = PROMPTS[job.index % len(PROMPTS)]
        return GenerateRequest(
            request_id, prompt, job.n_images, guidance=GUIDANCE, temperature=TEMPERATURE, seed=job.index
        )
    turn = Turn("user", QUESTIONS[job.index % len(QUESTIONS)], (uploads[job.index % len(uploads)],))
    sampling = TextSampling(temperature=0.0, max_new_tokens=answer_tokens)
    return UnderstandRequest(request_id, (turn,), sampling)


# ---- engines -------------------------------------------------------------------------------------------


def engine_configs(model_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    """One EngineConfig per policy the engine has (a note for each it lacks)."""
    from janus_engine.config import EngineConfig, EngineSettings
    from janus_engine.errors import InvalidRequest
    from janus_engine.protocol import ModelSpec

    base: dict[str, object] = {
        "max_queue": max(64, 2 * args.jobs),
        "max_queued_per_user": max(4, args.jobs),  # refusals would hide queueing: let every job in
        "worker_start_timeout_s": 300.0,
    }
    if args.preview_every is not None:
        base["preview_every"] = args.preview_every
    settings = EngineSettings(**base)  # type: ignore[arg-type]
    spec = ModelSpec(model=str(model_dir), local_files_only=True, torch_threads=1)
    configs: dict[str, object] = {}
    for policy in POLICIES:
        try:
            chosen = dataclasses.replace(settings, batching=policy)  # type: ignore[call-arg]
        except TypeError:
            if policy == "run_to_completion":
                chosen = settings  # the engine without the setting batches this way and no other
                print(
                    "note: EngineSettings has no 'batching' field yet (continuous batching not landed): "
                    "run_to_completion is the engine's only policy; continuous is skipped."
                )
            else:
                continue
        except InvalidRequest as exc:
            print(f"note: the engine refuses batching={policy!r} ({exc}); skipped.")
            continue
        configs[policy] = EngineConfig.from_settings(chosen, model=spec, devices=("cpu",))
    return configs


async def solo_seconds(engine, request) -> float:
    start = time.perf_counter()
    await engine.submit(request, user_id="solo").result()
    return time.perf_counter() - start


async def run_schedule(engine, jobs: list[Job], rate: float, tag: str, args, uploads) -> dict[str, object]:
    """Submit ``jobs`` at their arrival times (scaled to ``rate`` jobs/s); wait for every one to end."""
    from janus_engine.errors import JanusError
    from janus_engine.protocol import Cancelled, Done, Failed, UnderstandResult

    async def follow(handle, outcome: Outcome) -> Outcome:
        async for event in handle:
            if isinstance(event, Done | Failed | Cancelled):
                outcome.ended = time.perf_counter()
                outcome.status = {Done: "done", Failed: "failed", Cancelled: "cancelled"}[type(event)]
                if isinstance(event, Done) and isinstance(event.result, UnderstandResult):
                    outcome.tokens = event.result.completion_tokens
        return outcome

    batches = engine.status().batches
    tasks: list[asyncio.Task[Outcome]] = []
    refused: list[Outcome] = []
    start = time.perf_counter()
    for job in jobs:
        delay = start + job.at / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = make_request(job, tag, uploads, args.answer_tokens)
        outcome = Outcome(job.kind, job.n_images, time.perf_counter(), 0.0, "unfinished")
        try:
            handle = engine.submit(request, user_id=f"user-{job.user}")
        except JanusError:
            outcome.ended, outcome.status = outcome.submitted, "refused"
            refused.append(outcome)
            continue
        tasks.append(asyncio.create_task(follow(handle, outcome)))
    done, pending = await asyncio.wait(tasks, timeout=args.run_timeout)
    for task in pending:  # past --run-timeout: reported as unfinished, not hidden
        task.cancel()
    outcomes = [t.result() for t in done] + refused
    outcomes += [Outcome("?", 0, 0.0, 0.0, "unfinished") for _ in pending]
    return {
        "outcomes": outcomes,
        "start": start,
        "batches": engine.status().batches - batches,
    }


async def run_all(model_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    from janus_engine.engine import JanusEngine

    configs = engine_configs(model_dir, args)
    uploads = make_uploads(4, args.seed)
    engines: dict[str, JanusEngine] = {}
    figures: dict[str, object] = {"policies": list(configs), "startup": {}, "solo": {}, "solo_chat": {}}
    try:
        for policy, config in configs.items():
            engine = JanusEngine(config)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            await engine.start()
            engines[policy] = engine
            figures["startup"][policy] = time.perf_counter() - t0
        warm = [Job(0, 0.0, 0, "image", 1), Job(1, 0.0, 0, "chat", 0)]
        for engine in engines.values():
            for job in warm:  # warm-up: first calls of each kind
                await engine.submit(
                    make_request(job, "warm", uploads, args.answer_tokens), user_id="warm"
                ).result()
        for i in range(args.solos):  # alternating, so that outside load hits every engine alike
            for policy, engine in engines.items():
                image = make_request(Job(i, 0.0, 0, "image", 1), f"solo-{i}", uploads, args.answer_tokens)
                chat = make_request(
                    Job(i + 1, 0.0, 0, "chat", 0), f"solochat-{i}", uploads, args.answer_tokens
                )
                figures["solo"].setdefault(policy, []).append(await solo_seconds(engine, image))
                figures["solo_chat"].setdefault(policy, []).append(await solo_seconds(engine, chat))
        service = statistics.median(figures["solo"][next(iter(engines))])
        jobs = make_schedule(args.jobs, args.users, args.seed)
        report_setup(figures, jobs, args, service)
        print(HEADER, flush=True)
        runs = []
        for r, load in enumerate(args.loads):
            rate = load / service
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for policy in order:
                result = await run_schedule(engines[policy], jobs, rate, f"{policy}-{r}", args, uploads)
                runs.append({"load": load, "rate": rate, "policy": policy, **result})
                report_run(runs[-1])
        figures["runs"] = runs
    finally:
        for engine in engines.values():
            await engine.stop()
    return figures


# ---- report --------------------------------------------------------------------------------------------


def summarize(run: dict[str, object]) -> dict[str, float]:
    outcomes: list[Outcome] = run["outcomes"]  # type: ignore[assignment]
    done = [o for o in outcomes if o.status == "done"]
    images = [o.ended - o.submitted for o in done if o.kind == "image"]
    chats = [o.ended - o.submitted for o in done if o.kind == "chat"]
    span = max((o.ended for o in done), default=run["start"]) - run["start"]  # type: ignore[operator]
    nan = float("nan")
    return {
        "img_p50": percentile(images, 50) if images else nan,
        "img_p95": percentile(images, 95) if images else nan,
        "chat_p50": percentile(chats, 50) if chats else nan,
        "chat_p95": percentile(chats, 95) if chats else nan,
        "images_s": sum(o.n_images for o in done if o.kind == "image") / span if span > 0 else nan,
        "answers_s": len(chats) / span if span > 0 else nan,
        "span": span,
        "tokens": statistics.mean(o.tokens for o in done if o.kind == "chat") if chats else nan,
        **{
            s: sum(1 for o in outcomes if o.status == s)
            for s in ("failed", "cancelled", "refused", "unfinished")
        },
    }


def report_setup(
    figures: dict[str, object], jobs: list[Job], args: argparse.Namespace, service: float
) -> None:
    for policy in figures["policies"]:  # type: ignore[union-attr]
        solo = statistics.median(figures["solo"][policy])  # type: ignore[index]
        chat = statistics.median(figures["solo_chat"][policy])  # type: ignore[index]
        print(
            f"engine {policy}: start-up {figures['startup'][policy]:.2f} s; solo submit->Done (median of "  # type: ignore[index]
            f"{args.solos}): one image {solo:.3f} s, one answer {chat:.3f} s"
        )
    images = [j.n_images for j in jobs if j.kind == "image"]
    print(
        f"schedule (seed {args.seed}): {len(jobs)} jobs from {len({j.user for j in jobs})} users, "
        f"{len(images)} image jobs ({sum(images)} images: n_images {sorted(images)}), "
        f"{len(jobs) - len(images)} chat jobs (one 256x256 upload + a question, greedy, <= "
        f"{args.answer_tokens} tokens); Poisson arrivals, rate = load / S, S = {service:.3f} s "
        "(solo single-image time, first engine)"
    )


HEADER = (
    f"{'load':>5} {'jobs/s':>7} {'policy':>17} | {'image p50':>9} {'p95':>7} | {'chat p50':>8} {'p95':>7} |"
    f" {'img/s':>7} {'ans/s':>6} | {'span s':>7} {'batches':>7} {'tok/ans':>7} | fail canc refu unfin"
)


def report_run(run: dict[str, object]) -> None:
    s = summarize(run)
    print(
        f"{run['load']:5.2f} {run['rate']:7.2f} {run['policy']:>17} |"
        f" {s['img_p50']:8.2f}s {s['img_p95']:6.2f}s |"
        f" {s['chat_p50']:7.2f}s {s['chat_p95']:6.2f}s | {s['images_s']:7.2f} {s['answers_s']:6.2f} |"
        f" {s['span']:7.2f} {run['batches']:7d} {s['tokens']:7.1f} |"
        f" {s['failed']:4d} {s['cancelled']:4d} {s['refused']:4d} {s['unfinished']:5d}",
        flush=True,
    )


def report_ratios(runs: list[dict[str, object]]) -> None:
    by_load: dict[float, dict[str, dict[str, float]]] = {}
    for run in runs:
        by_load.setdefault(run["load"], {})[run["policy"]] = summarize(run)  # type: ignore[index]
    if not any(len(pair) == 2 for pair in by_load.values()):
        print("no continuous/run_to_completion ratios: only one policy ran")
        return
    print("continuous / run_to_completion (below 1 = continuous is better):")
    for load, pair in by_load.items():
        if len(pair) < 2:
            continue
        c, r = pair["continuous"], pair["run_to_completion"]
        print(
            f"  load {load:5.2f}: image p95 {c['img_p95'] / r['img_p95']:5.2f}x  chat p95 "
            f"{c['chat_p95'] / r['chat_p95']:5.2f}x  (p50: image {c['img_p50'] / r['img_p50']:5.2f}x, "
            f"chat {c['chat_p50'] / r['chat_p50']:5.2f}x; images/s {c['images_s'] / r['images_s']:5.2f}x, "
            f"answers/s {c['answers_s'] / r['answers_s']:5.2f}x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=32, help="jobs per (rate, policy) run")
    parser.add_argument(
        "--loads",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.5, 1.5, 4.0],
        help="arrival rates in jobs per solo single-image time (comma-separated)",
    )
    parser.add_argument("--answer-tokens", type=int, default=128, help="max_new_tokens of a chat job")
    parser.add_argument("--solos", type=int, default=3, help="solo runs per engine that set the rates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--preview-every", type=int, default=None, help="engine preview_every (default: the engine's)"
    )
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds a run may take")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model", args.shape)
        print(f"model: random Janus '{args.shape}' shape, CPU, one worker per engine, torch threads 1")
        figures = asyncio.run(run_all(model_dir, args))
    report_ratios(figures["runs"])  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
