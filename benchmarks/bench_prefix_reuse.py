"""Prefix reuse for conversations: the prefill of turn 10 of a chat holding 3 images, with every image
through SigLIP again (today) vs with the images' embeddings from a warm :class:`ImageFeatureCache`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prefix_reuse.py --shape tiny   # the test checkpoint
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prefix_reuse.py                # CPU, "small" shape
    .venv/bin/python benchmarks/bench_prefix_reuse.py --shape 7b --device cuda          # real shapes, a GPU

Models are bench_generation.py's random ones (``small``: 576 image tokens like the real model, but a
one-layer 64-wide vision tower; ``1b`` / ``7b``: the real SigLIP-L and language-model shapes). The chat
has 10 user turns with an assistant answer between each, images in user turns 1, 4 and 7 (PNG bytes, as
``Turn.images`` carries them), and the request answers user turn 10. Every variant runs the same prefill
as the understanding loop does (preallocated KV cache, ``logits_to_keep=1``):

  today       ``processor(text, images)`` + ``model(input_ids=..., pixel_values=...)``, as generate_text;
  no cache    ``prompt_embeddings(..., cache=None)`` + ``model(inputs_embeds=...)``: the same work;
  warm cache  ``prompt_embeddings`` with all 3 images cached + ``model(inputs_embeds=...)``.

"vision" times ``image_features`` on the 3 images alone (preprocessing, tower, aligner). Decoding the
PNGs (the caller's job, before any of this) is timed apart. Medians of ``--runs`` runs after a warm-up.
Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What is in this picture?", "What colour is the sky?", "How many trees are there?",
    "Here is another one. What changed?", "Is it day or night?", "Describe the house.",
    "And this last one?", "Which of the three is the brightest?", "Is there any text in them?",
    "Summarise all three pictures in one sentence.",
]  # fmt: skip
ANSWER = "It shows a small house with a red roof, two green trees and a yellow sun in a blue sky."
IMAGE_TURNS = (0, 3, 6)  # user turns 1, 4 and 7


def make_pngs(n: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Distinct, photo-like (noisy) images, PNG-encoded as the bot hands them over."""
    import numpy as np
    from PIL import Image

    from janus_engine.images import encode_png

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None] * (0.3 + 0.2 * i)
        noise = rng.normal(0, 20, (size[1], size[0], 3))
        out.append(encode_png(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))))
    return out


def conversation(pngs: list[bytes]):
    from janus_engine.protocol import Turn

    turns = []
    images = iter(pngs)
    for i, question in enumerate(QUESTIONS):
        attached = (next(images),) if i in IMAGE_TURNS else ()
        turns.append(Turn("user", question, attached))
        if i < len(QUESTIONS) - 1:
            turns.append(Turn("assistant", ANSWER))
    return tuple(turns)


def median_time(fn: Callable[[], object], runs: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small", "1b", "7b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    args = parser.parse_args(argv)

    import torch
    from bench_generation import build_model

    from janus_engine.runtime.generation import cache_keyword
    from janus_engine.runtime.image_features import ImageFeatureCache, image_features, prompt_embeddings
    from janus_engine.runtime.kv_cache import preallocated_cache
    from janus_engine.runtime.understanding import conversation_messages, open_images

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    model, processor = build_model(args.shape, args.device, dtype)
    model.eval()
    build_s = time.perf_counter() - t0

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    pngs = make_pngs(len(IMAGE_TURNS))
    turns = conversation(pngs)
    prompt = processor.apply_chat_template(conversation_messages(turns), add_generation_prompt=True)
    images = open_images(turns)
    device = model.get_input_embeddings().weight.device
    weight_dtype = model.get_input_embeddings().weight.dtype
    layers = model.config.text_config.num_hidden_layers
    kw = cache_keyword(model)

    @torch.inference_mode()
    def prefill(**inputs) -> torch.Tensor:
        width = inputs["attention_mask"].shape[1]
        out = model(use_cache=True, logits_to_keep=1, **{kw: preallocated_cache(layers, width + 1)}, **inputs)
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def today() -> torch.Tensor:
        batch = processor(text=[prompt], images=images, padding=True, return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        return prefill(
            input_ids=batch["input_ids"].to(device),
            pixel_values=batch["pixel_values"].to(device=device, dtype=weight_dtype),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
        )

    def embeddings(cache: ImageFeatureCache | None):
        return prompt_embeddings(model, processor, [prompt], [images], [list(pngs)], cache, ["chat"])

    def ours(cache: ImageFeatureCache | None) -> torch.Tensor:
        e = embeddings(cache)
        return prefill(
            inputs_embeds=e.inputs_embeds, attention_mask=e.attention_mask, position_ids=e.position_ids
        )

    warm = ImageFeatureCache()
    embeddings(warm)  # turn 7 put the three images in the cache
    n_tokens = int(embeddings(None).attention_mask.sum())
    same = torch.equal(today(), ours(None)) and torch.equal(today(), ours(warm))

    figures = {
        "PNG decode, 3 images (caller)": (median_time(lambda: open_images(turns), args.runs, sync), None),
        "vision: image_features(3 images)": (
            median_time(lambda: image_features(model, processor, images), args.runs, sync),
            0.0,
        ),
        "  of which preprocessing (image_processor)": (
            median_time(lambda: processor.image_processor(images, return_tensors="pt"), args.runs, sync),
            0.0,
        ),
        "prompt_embeddings": (
            median_time(lambda: embeddings(None), args.runs, sync),
            median_time(lambda: embeddings(warm), args.runs, sync),
        ),
        "prefill, today's path (model(pixel_values))": (median_time(today, args.runs, sync), None),
        "prefill, prompt_embeddings + model(inputs_embeds)": (
            median_time(lambda: ours(None), args.runs, sync),
            median_time(lambda: ours(warm), args.runs, sync),
        ),
    }
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model: random Janus, shape {args.shape} ({params:.0f}M parameters), {device}, {dtype}, "
        f"{model.config.vision_config.num_image_tokens} image tokens, "
        f"torch threads {torch.get_num_threads()}, "
        f"built in {build_s:.1f} s"
    )
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}")
    print(
        f"turn 10 of a 10-turn chat, 3 images of {describe_sizes(images)}: {n_tokens} prompt tokens; "
        f"median of {args.runs} runs; cache: {len(warm)} entries, {warm.nbytes / 2**20:.1f} MiB, "
        f"same logits on all paths: {same}"
    )
    print(f"{'':52s} {'no cache':>10s} {'warm cache':>11s} {'ratio':>7s}")
    for name, (cold, hot) in figures.items():
        hot_s = f"{hot * 1000:9.1f}ms" if hot is not None else f"{'':>11s}"
        ratio = f"{cold / hot:6.2f}x" if hot else f"{'':>7s}"
        print(f"{name:52s} {cold * 1000:8.1f}ms {hot_s} {ratio}")
    return 0


def describe_sizes(images) -> str:
    sizes = {f"{im.width}x{im.height}" for im in images}
    return ", ".join(sorted(sizes))


if __name__ == "__main__":
    raise SystemExit(main())
