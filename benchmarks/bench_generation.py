"""Text-to-image throughput: transformers' generate, one request at a time, vs our batched CFG loop.

Both sides run in this one process on the same randomly initialised model (weights never touch the disk;
nothing is downloaded), so the ratio is measured, not assumed:

  (a) baseline: for each request, ``model.generate(generation_mode="image", do_sample=True,
      guidance_scale=5)`` then ``decode_image_tokens``; requests one after another, as every Janus
      deployment without cross-request batching serves them;
  (b) ours: ``JanusRuntime.generate`` serving all requests (different prompts) as ONE batch, end to end
      (tokens, VQ decode and PNG encoding included, which the baseline does not even pay for).

Shapes: ``tiny`` (the test checkpoint's), ``small`` (576 image tokens like the real model, hidden 256,
4 layers: a CPU-sized model whose per-step work is real), and ``1b`` / ``7b`` (the real Janus-Pro
shapes, for GPUs). ``--images 1,4,16`` also times single requests of n images (seconds per batch, next to
the ~2.5-3 s H100 floor for 7B).

``--steps 1,2,4,8,16`` times one decode step of the continuous image decoder per bucket of image pairs,
in each mode it has: eager (live rows and filled columns only), static (the fixed bucket and the whole
cache width: what a CUDA graph records), and graph (the static step replayed as a CUDA graph, on CUDA;
``--compile`` adds torch.compile of the static step on any device). Next to each figure: the bytes a step
must read (weights + the KV cache it attends over) and the bandwidth floor they set on an H100 (3.35 TB/s)
and an H200 (4.8 TB/s).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generation.py                  # CPU, small, 8 requests
  .venv/bin/python benchmarks/bench_generation.py --shape 7b --device cuda --dtype bfloat16 --images 1,4,16
  .venv/bin/python benchmarks/bench_generation.py --shape 7b --device cuda --no-baseline --requests 1 \
      --steps 1,2,4,8,16                                              # ms per step: eager vs graph
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "a red fox in the snow",
    "an astronaut riding a horse on the moon, photorealistic, cinematic lighting",
    "a watercolor painting of a lighthouse on a cliff",
    "a bowl of ramen",
    "a cyberpunk city street at night in the rain, neon signs reflected in puddles, wide angle",
    "portrait of an old fisherman, oil painting",
    "a cat",
    "isometric pixel art of a small island with a windmill, two trees and a wooden pier at sunset",
]


def text_config(shape: str, vocab: int, pad: int, bos: int, eos: int):
    from transformers import LlamaConfig

    sizes = {
        "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
        "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16),
        "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32),
    }[shape]
    return LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=4096,
        num_key_value_heads=sizes["num_attention_heads"],
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        **sizes,
    )


def build_model(shape: str, device: str, dtype_name: str):
    """A random-weight Janus of ``shape`` built directly on ``device``; returns (model, processor)."""
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusVisionConfig, JanusVQVAEConfig

    from janus_engine.tiny import (
        IMAGE_TOKEN,
        build_processor,
        build_tiny_checkpoint,
        build_tokenizer,
        configure_generation,
    )

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    if shape == "tiny":
        import tempfile

        from transformers import JanusProcessor

        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_checkpoint(tmp)
            model = JanusForConditionalGeneration.from_pretrained(tmp, dtype=dtype).to(device)
            return model.eval(), JanusProcessor.from_pretrained(tmp)
    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    real = shape in ("1b", "7b")
    vocab = 102400 if real else 512
    text = text_config(shape, vocab, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    hidden = text.hidden_size
    if real:  # the converted checkpoints' vision and VQ configs are transformers' defaults
        vision = JanusVisionConfig(projection_dim=hidden)
        vq = JanusVQVAEConfig(projection_dim=hidden, image_token_embed_dim=hidden)
    else:  # 576 image tokens like the real model, a small SigLIP and a small VQ decoder (96 px out)
        vision = JanusVisionConfig(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=96,
            patch_size=4,
            projection_dim=hidden,
            num_image_tokens=576,
        )
        vq = JanusVQVAEConfig(
            base_channels=32,
            channel_multiplier=[1, 1, 1],
            num_res_blocks=1,
            latent_channels=32,
            projection_dim=hidden,
            image_token_embed_dim=hidden,
        )
    config = JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=ids(IMAGE_TOKEN),
        tie_word_embeddings=not real,  # DeepSeek-LLM has its own lm_head: 7.4B parameters, 14.8 GB in bf16
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = JanusForConditionalGeneration._from_config(config, dtype=dtype).eval()
    configure_generation(model, tokenizer)
    processor = build_processor(
        tokenizer, image_size=vision.image_size, num_image_tokens=vision.num_image_tokens
    )
    return model, processor


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline(runtime, prompts: list[str], n_images: int = 1) -> float:
    """transformers' generate, one request after another; returns seconds."""
    import torch

    model, processor = runtime.model, runtime.processor
    start = time.perf_counter()
    for prompt in prompts:
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, generation_mode="image", return_tensors="pt").to(model.device)
        tokens = model.generate(
            **inputs,
            generation_mode="image",
            do_sample=True,
            guidance_scale=5.0,
            num_return_sequences=n_images,
        )
        with torch.inference_mode():
            model.decode_image_tokens(tokens).float().cpu()
    sync(runtime.device)
    return time.perf_counter() - start


def ours(runtime, prompts: list[str], n_images: int = 1) -> float:
    from janus_engine.protocol import GenerateRequest

    requests = [GenerateRequest(f"r{i}", p, n_images=n_images, seed=i) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    results = runtime.generate(requests)
    sync(runtime.device)
    assert all(r is not None and len(r.images) == n_images for r in results)
    return time.perf_counter() - start


BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # HBM bytes/s (SXM parts), for the floor next to each figure


def step_bytes(runtime, pairs: int, columns: int) -> int:
    """Bytes one decode step reads at least: the language model's weights, the image head and embedding
    rows it uses, and the KV cache of ``2 * pairs`` rows over ``columns`` columns."""
    model = runtime.model
    lm = model.model.language_model
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    head = sum(p.numel() * p.element_size() for p in model.model.generation_head.parameters())
    config = lm.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(lm.parameters()).element_size()
    kv = 2 * config.num_hidden_layers * 2 * pairs * columns * kv_heads * head_dim * element
    return weights + head + kv


def step_times(runtime, buckets: list[int], *, compile_too: bool, steps: int = 20) -> None:
    """ms per decode step of the continuous image decoder, per bucket and mode (see the module doc)."""
    import torch

    from janus_engine.protocol import GenerateRequest
    from janus_engine.runtime.continuous_images import ImageDecoder
    from janus_engine.runtime.static_step import capture_graphs, compile_step

    cuda = runtime.device.startswith("cuda")
    modes = ["eager", "static"] + (["graph"] if cuda else []) + (["compiled"] if compile_too else [])
    print(f"decode step, ms ({steps} steps after 3 warm-up; prompt ~20 tokens, cache width 128 + 576):")
    print(
        f"{'pairs':>5} "
        + " ".join(f"{m:>9}" for m in modes)
        + f" {'GB read':>8} {'H100 floor':>10} {'H200 floor':>10}"
    )
    for pairs in buckets:
        figures = []
        for mode in modes:
            decoder = ImageDecoder(
                runtime.model,
                runtime.special,
                num_image_tokens=runtime.num_image_tokens,
                max_pairs=max(buckets),
                static=mode != "eager",
            )
            if mode == "graph":
                if not capture_graphs(decoder):
                    figures.append(float("nan"))
                    continue
            elif mode == "compiled":
                compile_step(decoder)
            jobs = [
                runtime.prepare_generate(GenerateRequest(f"p{i}", PROMPTS[i % len(PROMPTS)], seed=i))
                for i in range(pairs)
            ]
            decoder.admit(jobs)
            for _ in range(3):
                decoder.step()
            sync(runtime.device)
            start = time.perf_counter()
            for _ in range(steps):
                decoder.step()
            sync(runtime.device)
            figures.append((time.perf_counter() - start) / steps * 1000)
            del decoder
            if cuda:
                torch.cuda.empty_cache()
        columns = 128 + runtime.num_image_tokens
        read = step_bytes(runtime, pairs, columns)
        floors = [read / BANDWIDTH[name] * 1000 for name in ("H100", "H200")]
        print(
            f"{pairs:5d} "
            + " ".join(f"{ms:9.2f}" for ms in figures)
            + f" {read / 1e9:8.2f} {floors[0]:8.2f}ms {floors[1]:8.2f}ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["tiny", "small", "1b", "7b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--requests", type=int, default=8, help="requests (different prompts, 1 image each)")
    parser.add_argument("--images", default="", help="also time single requests of these image counts")
    parser.add_argument("--no-baseline", action="store_true", help="skip transformers' sequential baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--steps", default="", help="ms per decode step for these image-pair buckets")
    parser.add_argument("--compile", action="store_true", help="with --steps: also torch.compile the step")
    args = parser.parse_args(argv)

    import torch

    from janus_engine.runtime import JanusRuntime

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    model, processor = build_model(args.shape, args.device, dtype)
    runtime = JanusRuntime(model, processor, name=f"random-{args.shape}")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model: random Janus, shape {args.shape} ({params:.0f}M parameters), {runtime.device}, {dtype}, "
        f"{runtime.num_image_tokens} image tokens, torch threads {torch.get_num_threads()}, "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(torch.device(args.device))}")

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    ours(runtime, prompts[:1])  # warm-up for both sides: allocator, kernels, tokenizer caches
    if not args.no_baseline:
        base_s = baseline(runtime, prompts)
        print(
            f"(a) transformers generate, {len(prompts)} requests one by one: {base_s:7.2f} s  "
            f"{len(prompts) / base_s:7.3f} images/s"
        )
    ours_s = ours(runtime, prompts)
    print(
        f"(b) our batched loop, {len(prompts)} requests in one batch:    {ours_s:7.2f} s  "
        f"{len(prompts) / ours_s:7.3f} images/s"
    )
    if not args.no_baseline:
        print(f"speed-up (b)/(a): {base_s / ours_s:.2f}x")

    for n in [int(x) for x in args.images.split(",") if x.strip()]:
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds = ours(runtime, prompts[:1], n_images=n)
        peak = ""
        if args.device.startswith("cuda"):
            peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        step_ms = seconds / runtime.num_image_tokens * 1000
        print(
            f"one request, {n:2d} images: {seconds:7.2f} s per batch, "
            f"{step_ms:6.2f} ms per step, {n / seconds:6.2f} images/s{peak}"
        )
    buckets = [int(x) for x in args.steps.split(",") if x.strip()]
    if buckets:
        step_times(runtime, buckets, compile_too=args.compile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
