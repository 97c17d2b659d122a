"""Engine benchmark: 16 users at once through JanusEngine vs the same 16 requests through transformers'
own ``generate`` in one process (one after another, and all in one batched call); and the engine's
overhead on a single request.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py              # CPU, "small" shape
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine.py --shape tiny # the test checkpoint

The model is bench_generation.py's random "small" Janus (576 image tokens like the real model, hidden 256,
4 layers), saved to a temporary folder so the worker loads it through the same ``from_pretrained`` path
as a real checkpoint. Every process uses one torch thread.

(a) baseline: in this process, for each request in turn: chat template, ``model.generate(generation_mode=
    "image", do_sample=True, guidance_scale=5)``, ``decode_image_tokens`` (as bench_generation.py does).
    All 16 requests "arrive" at t=0, so a request's submit->done time is when its turn finishes.
(a2) stronger baseline: the same model, all 16 chat-templated prompts in ONE ``model.generate(generation_mode=
    "image", ...)`` call, left-padded by the processor (``padding=True``; JanusProcessor pads on the left),
    then one ``decode_image_tokens`` for the 16. transformers allows one guidance (and one seed) per call,
    so this only fits requests that share them and are all in hand at once; every request is done when the
    whole call is. (transformers' image generate builds no position ids from the padding mask, so a padded
    row's prompt starts at position = its padding; RoPE is relative, so this cancels out: checked greedy
    once on the tiny and small checkpoints, every prompt got the same tokens batched as alone.)
(b) engine: a JanusEngine with one CPU worker; 16 users submit one image each at the same moment; each
    job is timed from submit to its Done event (images decoded, PNG-encoded, sent back over the pipe).
(c) overhead: one request through a started engine vs the same request through ``JanusRuntime.generate``
    called directly in this process (the code the worker runs), alternating, median of N. The engine's
    figure includes the gathering window (a fresh job waits ``batch_window_s`` for companions).

Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

PROMPTS = [
    "a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a cat wearing a hat",
    "an old steam train", "a city street at night in the rain", "a sailing boat", "a mountain lake",
    "a robot reading a book", "a field of sunflowers", "a desert road", "a blue teapot",
    "a cabin in a forest", "a hot air balloon", "a castle on a hill", "portrait of an old fisherman",
]  # fmt: skip
GUIDANCE = 5.0
TEMPERATURE = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def save_model(directory: Path, shape: str) -> Path:
    """bench_generation.py's random model of ``shape``, written with save_pretrained."""
    if shape == "tiny":
        from janus_engine.tiny import build_tiny_checkpoint

        return build_tiny_checkpoint(directory)
    from bench_generation import build_model

    model, processor = build_model(shape, "cpu", "float32")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    del model
    gc.collect()
    return directory


def request(i: int, tag: str):
    from janus_engine.protocol import GenerateRequest

    prompt = PROMPTS[i % len(PROMPTS)]
    return GenerateRequest(f"{tag}-{i}", prompt, 1, guidance=GUIDANCE, temperature=TEMPERATURE, seed=i)


# ---- (b) and (c): the engine ---------------------------------------------------------------------------


async def run_engine(model_dir: Path, *, users: int, singles: int, window: float) -> dict[str, object]:
    from janus_engine.config import EngineConfig
    from janus_engine.engine import JanusEngine
    from janus_engine.protocol import ModelSpec

    config = EngineConfig(
        model=ModelSpec(model=str(model_dir), local_files_only=True, torch_threads=1),
        devices=("cpu",),
        max_queue=max(64, users),
        max_images_per_batch=16,
        batch_window_s=window,
        preview_every=0,  # as measured before the engine's default became 96: no preview decodes
    )
    engine = JanusEngine(config)
    t0 = time.perf_counter()
    await engine.start()
    figures: dict[str, object] = {"startup": time.perf_counter() - t0}
    await engine.submit(request(0, "warm"), user_id="warm").result()  # warm-up, as for the others

    if users:

        async def timed(i: int, start: float) -> float:
            await engine.submit(request(i, "burst"), user_id=f"user-{i}").result()
            return time.perf_counter() - start

        batches = engine.status().batches
        start = time.perf_counter()
        figures["latencies"] = list(await asyncio.gather(*(timed(i, start) for i in range(users))))
        figures["wall"] = time.perf_counter() - start
        figures["batches"] = engine.status().batches - batches

    # (c) alternate engine and direct runs, so that load from other processes hits both alike.
    direct = load_runtime(model_dir) if singles else None
    engine_times, direct_times = [], []
    for i in range(singles):
        start = time.perf_counter()
        await engine.submit(request(i, "single"), user_id="solo").result()
        engine_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        direct.generate([request(i, "direct")])
        direct_times.append(time.perf_counter() - start)
    figures["singles"] = engine_times
    figures["direct"] = direct_times
    await engine.stop()
    return figures


# ---- (a) and (c): in this process ----------------------------------------------------------------------


def load_transformers(model_dir: Path):
    """The checkpoint as transformers' own classes: (model, processor)."""
    from transformers import JanusForConditionalGeneration, JanusProcessor

    processor = JanusProcessor.from_pretrained(model_dir)
    model = JanusForConditionalGeneration.from_pretrained(model_dir).eval()
    return model, processor


def chat_text(processor, i: int) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": PROMPTS[i % len(PROMPTS)]}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def baseline_sequential(model, processor, users: int) -> tuple[float, list[float]]:
    """transformers' generate, one request after another (bench_generation.py's baseline, timed per job)."""
    import torch

    def one(i: int) -> None:
        torch.manual_seed(i)
        inputs = processor(text=chat_text(processor, i), generation_mode="image", return_tensors="pt")
        tokens = model.generate(
            **inputs,
            generation_mode="image",
            do_sample=True,
            temperature=TEMPERATURE,
            guidance_scale=GUIDANCE,
        )
        with torch.inference_mode():
            model.decode_image_tokens(tokens).float().cpu()

    one(0)  # warm-up
    start = time.perf_counter()
    done_at = []
    for i in range(users):
        one(i)
        done_at.append(time.perf_counter() - start)
    return time.perf_counter() - start, done_at


def baseline_batched(model, processor, users: int) -> dict[str, object]:
    """transformers' generate with all ``users`` prompts in one left-padded call (one guidance, one seed).

    Run after baseline_sequential, whose warm-up call already warmed this model up."""
    import torch

    start = time.perf_counter()
    texts = [chat_text(processor, i) for i in range(users)]
    inputs = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
    torch.manual_seed(0)
    tokens = model.generate(
        **inputs,
        generation_mode="image",
        do_sample=True,
        temperature=TEMPERATURE,
        guidance_scale=GUIDANCE,
    )
    generated = time.perf_counter()
    with torch.inference_mode():
        images = model.decode_image_tokens(tokens).float().cpu()
    wall = time.perf_counter() - start
    assert images.shape[0] == users, images.shape
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    left = bool((inputs["attention_mask"][:, -1] == 1).all())  # every row ends with a real token
    return {
        "wall": wall,
        "decode": start + wall - generated,
        "padded_to": inputs["input_ids"].shape[1],
        "shortest": min(lengths),
        "left": left,
    }


def load_runtime(model_dir: Path):
    """The runtime the worker runs, loaded in this process for the direct single-request runs."""
    from janus_engine.protocol import ModelSpec
    from janus_engine.runtime import JanusRuntime

    runtime = JanusRuntime.load(ModelSpec(model=str(model_dir), device="cpu", local_files_only=True))
    runtime.generate([request(0, "warm")])
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--singles", type=int, default=5, help="single-request runs for the overhead")
    parser.add_argument("--window", type=float, default=0.05, help="engine batch_window_s (the default)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(Path(tmp) / "model", args.shape)
        # The burst first, while this process holds no model; then (c), then the two baselines.
        eng = asyncio.run(run_engine(model_dir, users=args.users, singles=args.singles, window=args.window))
        gc.collect()
        model, processor = load_transformers(model_dir)
        base_wall, base_done = baseline_sequential(model, processor, args.users)
        batched = baseline_batched(model, processor, args.users)
        del model, processor

    n = args.users
    lat = eng["latencies"]
    threads = torch.get_num_threads()
    print(f"model: random Janus '{args.shape}' shape, CPU, torch threads {threads} per process")
    print(f"engine start-up (one-time: spawn worker, import torch, load): {eng['startup']:.2f} s")
    print(
        f"(a) transformers generate, {n} requests one by one: {base_wall:7.2f} s  {n / base_wall:6.3f} img/s"
        f"  submit->done p50 {percentile(base_done, 50):6.2f} s  p95 {percentile(base_done, 95):6.2f} s"
    )
    print(
        f"(b) JanusEngine, {n} users at once ({eng['batches']} batch(es)): {eng['wall']:7.2f} s  "
        f"{n / eng['wall']:6.3f} img/s  submit->done p50 {percentile(lat, 50):6.2f} s  "
        f"p95 {percentile(lat, 95):6.2f} s"
    )
    batched_wall = batched["wall"]
    padding = "left" if batched["left"] else "NOT left (padding side is wrong for generation)"
    print(
        f"(a2) transformers generate, {n} prompts in ONE batched call ({padding}-padded to "
        f"{batched['padded_to']} tokens, shortest {batched['shortest']}): {batched_wall:7.2f} s  "
        f"{n / batched_wall:6.3f} img/s  submit->done p50 {batched_wall:6.2f} s  p95 {batched_wall:6.2f} s"
        f"  (of which decode_image_tokens {batched['decode']:.2f} s)"
    )
    print(f"throughput ratio (b)/(a): {base_wall / eng['wall']:.2f}x   (target >= 4x)")
    p50, p95 = percentile(lat, 50), percentile(lat, 95)
    print(
        f"throughput ratio (b)/(a2): {batched_wall / eng['wall']:.2f}x   submit->done, (a2) over (b): "
        f"p50 {batched_wall / p50:.2f}x  p95 {batched_wall / p95:.2f}x   (above 1 = the engine is ahead)"
    )
    behind = [
        name
        for name, base, ours in (
            ("throughput", batched_wall, eng["wall"]),
            ("p50", batched_wall, p50),
            ("p95", batched_wall, p95),
        )
        if base < ours
    ]
    if behind:
        print(
            f"    the batched baseline (a2) BEATS the engine on {', '.join(behind)}: it skips what the "
            "engine pays for (PNG encoding, the pipe to the worker, the gathering window, per-request "
            "seeds); it also needs every prompt in hand at once with one shared guidance and seed"
        )
    else:
        print("    the engine beats the batched baseline (a2) on throughput, p50 and p95")
    single, direct_s = statistics.median(eng["singles"]), statistics.median(eng["direct"])
    print(
        f"(c) one request: engine {single:6.3f} s (incl. the {args.window:g} s gathering window) vs the same "
        f"runtime in-process {direct_s:6.3f} s -> overhead {100 * (single / direct_s - 1):+5.1f}%  "
        f"(median of {args.singles}, alternating; target < 10%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
