"""The batched CFG image loop: equal to transformers token for token, batch-invariant, seeded, cancellable."""

from __future__ import annotations

import io
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from janus_engine.errors import InvalidRequest, PromptTooLong
from janus_engine.protocol import GenerateRequest

PROMPTS = {
    "fox": "a red fox",
    "astro": "an astronaut riding a horse on the moon, photorealistic, cinematic lighting",
    "house": "a watercolor painting of a small house and two trees",
}


def greedy(key: str, guidance: float = 5.0, n: int = 1) -> GenerateRequest:
    return GenerateRequest(key, PROMPTS[key], n_images=n, guidance=guidance, temperature=0.0)


def tokens_of(runtime, requests, **kwargs) -> dict[str, torch.Tensor | None]:
    return runtime.generate_tokens(requests, **kwargs)[0]


def transformers_greedy(runtime, prompts: list[str], guidance: float) -> torch.Tensor:
    """transformers' own image generation, prompts built the documented way."""
    p = runtime.processor
    texts = [
        p.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": t}]}], add_generation_prompt=True
        )
        for t in prompts
    ]
    inputs = p(text=texts, generation_mode="image", padding=True, return_tensors="pt")
    return runtime.model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=guidance)


@contextmanager
def batch_sizes(runtime):
    """Record the batch size of every language-model forward (to see rows leave the batch)."""
    sizes: list[int] = []
    lm = runtime.model.model.language_model
    handle = lm.register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(kw["inputs_embeds"].shape[0]), with_kwargs=True
    )
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.mark.parametrize("guidance", [1.5, 5.0])
@pytest.mark.parametrize("key", ["fox", "astro"])
def test_greedy_tokens_equal_transformers_generate(runtime, key: str, guidance: float) -> None:
    ours = tokens_of(runtime, [greedy(key, guidance)])[key]
    theirs = transformers_greedy(runtime, [PROMPTS[key]], guidance)
    assert ours.shape == (1, runtime.num_image_tokens)
    assert torch.equal(ours, theirs)


def test_greedy_batch_equals_transformers_left_padded_batch(runtime) -> None:
    keys = ["fox", "astro", "house"]
    ours = tokens_of(runtime, [greedy(k, 3.0) for k in keys])
    theirs = transformers_greedy(runtime, [PROMPTS[k] for k in keys], 3.0)
    assert torch.equal(torch.cat([ours[k] for k in keys]), theirs)


def test_outputs_depend_on_prompt_and_guidance(runtime) -> None:
    """Guards the tests above against a degenerate model whose output ignores its input."""
    out = tokens_of(runtime, [greedy("fox", 5.0), greedy("astro", 5.0)])
    assert not torch.equal(out["fox"], out["astro"])
    assert len(set(out["astro"][0].tolist())) > 4
    assert not torch.equal(tokens_of(runtime, [greedy("fox", 1.5)])["fox"], out["fox"])


def test_a_request_gives_the_same_tokens_alone_and_in_a_mixed_batch(runtime) -> None:
    alone = {k: tokens_of(runtime, [greedy(k, g)])[k] for k, g in (("fox", 2.0), ("astro", 7.0))}
    batch = tokens_of(
        runtime,
        [
            greedy("fox", 2.0, n=3),
            GenerateRequest("sampled", PROMPTS["house"], n_images=2, temperature=1.0, seed=11),
            greedy("astro", 7.0),
        ],
    )
    assert torch.equal(batch["fox"], alone["fox"].expand(3, -1))
    assert torch.equal(batch["astro"], alone["astro"])


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(runtime) -> None:
    def req(seed: int, n: int = 2) -> GenerateRequest:
        return GenerateRequest("s", PROMPTS["astro"], n_images=n, guidance=4.0, temperature=1.0, seed=seed)

    first = tokens_of(runtime, [req(42)])["s"]
    assert torch.equal(first, tokens_of(runtime, [req(42)])["s"])
    in_batch = tokens_of(runtime, [greedy("fox"), req(42), greedy("house", 2.0, n=2)])["s"]
    assert torch.equal(first, in_batch)
    assert not torch.equal(first[0], first[1])  # each image of a request has its own stream
    assert not torch.equal(first, tokens_of(runtime, [req(43)])["s"])
    # Image i only depends on the seed and i: asking for more images keeps the first ones.
    assert torch.equal(tokens_of(runtime, [req(42, n=3)])["s"][:2], first)


def test_unseeded_request_reports_the_seed_that_reproduces_it(runtime) -> None:
    req = GenerateRequest("u", PROMPTS["house"], temperature=1.0)
    tokens, jobs = runtime.generate_tokens([req])
    seed = jobs[0].seed
    assert isinstance(seed, int)
    again = tokens_of(runtime, [GenerateRequest("u", PROMPTS["house"], temperature=1.0, seed=seed)])
    assert torch.equal(tokens["u"], again["u"])


def test_progress_is_reported_every_step_for_every_request(runtime) -> None:
    calls: dict[str, list[tuple[int, int]]] = defaultdict(list)
    runtime.generate_tokens(
        [greedy("fox"), greedy("astro", n=2)], on_progress=lambda k, s, t: calls[k].append((s, t))
    )
    total = runtime.num_image_tokens
    expected = [(s, total) for s in range(1, total + 1)]
    assert calls == {"fox": expected, "astro": expected}


def test_cancelled_request_leaves_the_batch_and_the_others_finish_unchanged(runtime) -> None:
    reference = tokens_of(runtime, [greedy("fox"), greedy("house", 2.5)])
    steps: dict[str, int] = defaultdict(int)

    def progress(key: str, step: int, total: int) -> None:
        steps[key] = step

    with batch_sizes(runtime) as sizes:
        out = tokens_of(
            runtime,
            [greedy("fox"), greedy("astro", n=3), greedy("house", 2.5)],
            on_progress=progress,
            should_cancel=lambda key: key == "astro" and steps[key] >= 5,
        )
    assert out["astro"] is None
    assert torch.equal(out["fox"], reference["fox"]) and torch.equal(out["house"], reference["house"])
    assert steps["astro"] == 5 and steps["fox"] == runtime.num_image_tokens
    # prefill (2 rows per prompt), then 2 rows per image; after the cancel only fox + house remain
    assert sizes[0] == 6 and sizes[1] == 10 and sizes[-1] == 4
    assert sizes.count(10) == 4  # steps 1-4 fed the full batch, step 5 was the last one for astro


def test_shared_prefixes_are_prefilled_once(runtime) -> None:
    """Two requests with one prompt share its prefill; unconditional prompts of equal length are shared."""
    twin = GenerateRequest("twin", PROMPTS["fox"], guidance=6.0, temperature=0.0)
    with batch_sizes(runtime) as sizes:
        out = tokens_of(runtime, [greedy("fox", 2.0, n=2), twin])
    assert sizes[0] == 2 and sizes[1] == 6  # prefill: one cond + one uncond row; decode: 3 image pairs
    assert torch.equal(out["fox"][0], tokens_of(runtime, [greedy("fox", 2.0)])["fox"][0])
    assert torch.equal(out["twin"], tokens_of(runtime, [greedy("fox", 6.0)])["fox"])
    fox_length = len(runtime.image_prompt_ids(PROMPTS["fox"]))
    candidates = ("a red cat", "a red dog", "a big dog", "a blue fox")
    same_length = [t for t in candidates if len(runtime.image_prompt_ids(t)) == fox_length]
    assert same_length, "the tiny tokenizer should give these prompts equal lengths"
    alone = tokens_of(runtime, [GenerateRequest("x", same_length[0], temperature=0.0)])["x"]
    with batch_sizes(runtime) as sizes:
        out = tokens_of(runtime, [greedy("fox"), GenerateRequest("x", same_length[0], temperature=0.0)])
    assert sizes[0] == 3  # two conditional rows, one shared unconditional row
    assert torch.equal(out["x"], alone)


def test_cancelled_before_start_and_everything_cancelled(runtime) -> None:
    out = tokens_of(runtime, [greedy("fox"), greedy("astro")], should_cancel=lambda k: k == "fox")
    assert out["fox"] is None and out["astro"] is not None
    assert runtime.generate([greedy("fox")], should_cancel=lambda k: True) == [None]


def test_generate_returns_png_images_and_previews(runtime) -> None:
    previews: list[tuple[str, int, bytes]] = []
    req = GenerateRequest(
        "p", PROMPTS["fox"], n_images=4, guidance=3.0, temperature=1.0, seed=5, preview_every=6
    )
    [result] = runtime.generate([req], on_preview=lambda k, s, png: previews.append((k, s, png)))
    assert result.request_id == "p" and result.seed == 5 and result.steps == runtime.num_image_tokens
    assert len(result.images) == 4
    for png in result.images:
        with Image.open(io.BytesIO(png)) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))
    # the PNGs are exactly the decoded tokens
    tokens = tokens_of(runtime, [req])["p"]
    assert list(result.images) == runtime.decode_images(tokens)
    assert [(k, s) for k, s, _ in previews] == [("p", 6), ("p", 12)]
    with Image.open(io.BytesIO(previews[0][2])) as grid:
        assert grid.size == (2 * 32 + 4, 2 * 32 + 4)  # 2x2 grid of the four images in progress
        # 6 of 16 tokens = 2 of 4 token rows: the lower half of each tile is still grey
        assert grid.getpixel((5, 30)) == (128, 128, 128)


def test_partial_preview_keeps_the_generated_rows(runtime) -> None:
    tokens = tokens_of(runtime, [greedy("astro")])["astro"]
    full = Image.open(io.BytesIO(runtime.decode_images(tokens)[0]))
    part = Image.open(io.BytesIO(runtime.decode_partial(tokens[:, :8])[0]))
    assert part.getpixel((3, 28)) == (128, 128, 128)
    # The top rows come from the same tokens; the VQ decoder's receptive field blurs only near the cut.
    assert part.crop((0, 0, 32, 4)).tobytes() != Image.new("RGB", (32, 4), (128, 128, 128)).tobytes()
    assert full.size == part.size


def test_invalid_requests_raise_typed_errors_before_any_work(runtime) -> None:
    with batch_sizes(runtime) as sizes:
        with pytest.raises(InvalidRequest, match="Guidance"):
            runtime.generate([greedy("fox"), GenerateRequest("bad", "x", guidance=1.0)])
        with pytest.raises(PromptTooLong, match="tokens"):
            runtime.generate([GenerateRequest("long", "zq xv jk " * 400)])
        with pytest.raises(InvalidRequest, match="share a request id"):
            runtime.generate([greedy("fox"), greedy("fox")])
    assert sizes == []


def test_eager_attention_gives_the_same_batch_invariance(tiny_model_dir) -> None:
    from janus_engine.protocol import ModelSpec
    from janus_engine.runtime import JanusRuntime

    rt = JanusRuntime.load(ModelSpec(model=str(tiny_model_dir), attn_implementation="eager"))
    alone = tokens_of(rt, [greedy("fox")])["fox"]
    assert torch.equal(tokens_of(rt, [greedy("astro"), greedy("fox")])["fox"], alone)


def test_worker_warm_up_measures_step_times_and_changes_no_result(runtime) -> None:
    from janus_engine.worker import WARMUP_BATCHES, measure_step_times

    request = GenerateRequest(request_id="after", prompt="a quiet harbour", seed=11)
    before = tokens_of(runtime, [request])["after"]
    measured = measure_step_times(runtime, step_delay_s=0.25)
    assert [images for images, _ in measured] == list(WARMUP_BATCHES)
    # Each figure is a measured decode step plus the configured test delay, never a guessed constant.
    assert all(0.25 < seconds < 0.25 + 5.0 for _, seconds in measured)
    assert torch.equal(tokens_of(runtime, [request])["after"], before)
