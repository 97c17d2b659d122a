"""Continuous image batching: tokens do not depend on when a request joined or whom it shares steps with."""

from __future__ import annotations

import shutil

import pytest
import torch

from janus_engine.protocol import GenerateRequest
from janus_engine.runtime.continuous_images import ImageDecoder, bucket_for, run_image_jobs

PROMPTS = {
    "fox": "a red fox",
    "astro": "an astronaut riding a horse on the moon, photorealistic, cinematic lighting",
    "house": "a watercolor painting of a small house and two trees",
}


def job(
    runtime, key: str, *, n: int = 1, guidance: float = 5.0, temperature: float = 0.0, seed=None, name=None
):
    request = GenerateRequest(
        name or key, PROMPTS[key], n_images=n, guidance=guidance, temperature=temperature, seed=seed
    )
    return runtime.prepare_generate(request)


def batch_loop(runtime, jobs) -> dict[str, torch.Tensor]:
    from janus_engine.runtime.generation import generate_image_tokens

    out = generate_image_tokens(
        runtime.model, jobs, runtime.special, num_image_tokens=runtime.num_image_tokens
    )
    return {k: v for k, v in out.items() if v is not None}


def decoder(runtime, *, static: bool = False, max_pairs: int = 8) -> ImageDecoder:
    return ImageDecoder(
        runtime.model,
        runtime.special,
        num_image_tokens=runtime.num_image_tokens,
        max_pairs=max_pairs,
        static=static,
    )


def run_with_late_joins(
    dec: ImageDecoder, schedule: dict[int, list]
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Step the decoder, admitting ``schedule[step]`` before that step; returns tokens and rows per step."""
    results: dict[str, torch.Tensor] = {}
    pairs_per_step: list[int] = []
    step = 0
    while dec or any(s >= step for s in schedule):
        if step in schedule:
            dec.admit(schedule[step])
        pairs_per_step.append(dec.pairs_in_use)
        results.update(dec.step().finished)
        step += 1
    return results, pairs_per_step


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_alone_equals_the_batch_loop_greedy_and_seeded(runtime, static: bool) -> None:
    jobs = [
        job(runtime, "fox", guidance=3.0),
        job(runtime, "astro", n=2, temperature=1.0, seed=42),
    ]
    for j in jobs:
        expected = batch_loop(runtime, [j])[j.key]
        got = run_image_jobs(decoder(runtime, static=static), [j])[j.key]
        assert got.shape == (j.n_images, runtime.num_image_tokens)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_in_a_batch_and_joining_late_give_the_same_tokens(runtime, static: bool) -> None:
    fox = job(runtime, "fox", guidance=2.0, n=2)
    seeded = job(runtime, "house", n=2, temperature=1.0, seed=7)
    astro = job(runtime, "astro", guidance=7.0)
    alone = {j.key: batch_loop(runtime, [j])[j.key] for j in (fox, seeded, astro)}

    together = run_image_jobs(decoder(runtime, static=static), [fox, seeded, astro])
    total = runtime.num_image_tokens
    late, pairs = run_with_late_joins(
        decoder(runtime, static=static), {0: [fox], 3: [seeded], total + 2: [astro]}
    )
    for key, tokens in alone.items():
        assert torch.equal(together[key], tokens), key
        assert torch.equal(late[key], tokens), key
    # The late request shared steps with the running one, and the first one left when it was done.
    assert pairs[3] == 4 and pairs[total - 1] == 4 and pairs[total] == 2
    assert pairs[total + 2] == 3


def test_a_dropped_request_leaves_and_the_others_finish_unchanged(runtime) -> None:
    a = job(runtime, "fox", n=2)
    b = job(runtime, "astro", temperature=1.0, seed=3)
    c = job(runtime, "house", guidance=2.0)
    expected = {j.key: batch_loop(runtime, [j])[j.key] for j in (b, c)}
    dec = decoder(runtime)
    dec.admit([a, b, c])
    results: dict[str, torch.Tensor] = {}
    for step in range(runtime.num_image_tokens + 1):
        if step == 2:
            dec.drop({a.key})  # a's pairs were the first two: the tail pairs move into them
            assert dec.pairs_in_use == 2
        results.update(dec.step().finished)
    assert set(results) == {b.key, c.key}
    for key, tokens in expected.items():
        assert torch.equal(results[key], tokens)


def test_admit_refuses_more_images_than_free_pairs_and_previews_are_partial(runtime) -> None:
    dec = decoder(runtime, max_pairs=2)
    dec.admit([job(runtime, "fox", n=2)])
    assert dec.free_pairs == 0
    with pytest.raises(ValueError, match="free row pairs"):
        dec.admit([job(runtime, "astro")])
    report = dec.step(preview_due=lambda key, done: done == 1)
    assert report.progressed == [("fox", 1)]
    assert report.previews["fox"].shape == (2, 1)
    dec.reset()
    assert not dec and dec.free_pairs == 2


def test_static_mode_runs_every_step_over_one_bucket(runtime) -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 9, 100)] == [1, 2, 4, 8, 16, 64]
    assert decoder(runtime, static=True, max_pairs=12).buckets == (1, 2, 4, 8, 12)  # 12 rows, not 16
    dec = decoder(runtime, static=True, max_pairs=4)
    sizes: list[tuple[int, int]] = []
    lm = runtime.model.model.language_model

    def record(_m, _a, kw):
        mask = kw["attention_mask"]
        sizes.append((kw["inputs_embeds"].shape[0], mask.shape[-1]))

    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run_with_late_joins(dec, {0: [job(runtime, "fox")], 2: [job(runtime, "astro", n=2)]})
    finally:
        handle.remove()
    decode = [s for s in sizes if s[1] == dec.table.capacity]
    # Decode forwards only ever ran over buckets (2 rows per pair) and the whole capacity.
    assert {rows for rows, _ in decode} <= {2, 4, 8}
    assert (8, dec.table.capacity) in decode


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler"
            ),
        ),
    ],
)
def test_the_compiled_static_step_gives_the_same_tokens(runtime, backend: str) -> None:
    """torch.compile of the static step (what CUDA graphs capture on a GPU) changes no token, across
    buckets (a late request moves the step from 1 to 2 to 4 pairs)."""
    from janus_engine.runtime.static_step import compile_step

    fox = job(runtime, "fox", guidance=2.0)
    seeded = job(runtime, "house", n=2, temperature=1.0, seed=7)
    expected = {j.key: batch_loop(runtime, [j])[j.key] for j in (fox, seeded)}
    dec = decoder(runtime, static=True, max_pairs=4)
    calls: list[int] = []
    compiled = compile_step(dec, backend=backend)
    dec.graph_runner = lambda rows: calls.append(rows) or compiled(rows)
    got, _ = run_with_late_joins(dec, {0: [fox], 2: [seeded]})
    assert set(calls) == {2, 8, 4}  # 1 pair, 3 pairs (in the 4-pair bucket), then the last 2 pairs
    for key, tokens in expected.items():
        assert torch.equal(got[key], tokens), key


def test_eager_attention_masks_give_the_same_late_join_tokens(tiny_model_dir) -> None:
    """The additive masks of eager attention (not SDPA's boolean ones) keep the same invariance."""
    from janus_engine.protocol import ModelSpec
    from janus_engine.runtime import JanusRuntime

    rt = JanusRuntime.load(ModelSpec(model=str(tiny_model_dir), attn_implementation="eager"))
    fox, astro = job(rt, "fox"), job(rt, "astro", n=2, temperature=1.0, seed=9)
    expected = {j.key: batch_loop(rt, [j])[j.key] for j in (fox, astro)}
    for static in (False, True):
        got, _ = run_with_late_joins(decoder(rt, static=static), {0: [fox], 5: [astro]})
        assert all(torch.equal(got[k], v) for k, v in expected.items()), static
