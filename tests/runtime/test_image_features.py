"""Image-embedding reuse: the same merged embeddings, logits and greedy answers as the model's own path,
no vision call for a cached image, an LRU bound, and per-conversation invalidation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from janus_engine.images import decode_user_image, encode_png
from janus_engine.protocol import TextSampling, Turn, UnderstandRequest
from janus_engine.runtime.generation import cache_keyword
from janus_engine.runtime.image_features import (
    ImageFeatureCache,
    PromptEmbeddings,
    image_key,
    pixel_key,
    prompt_embeddings,
)
from janus_engine.runtime.kv_cache import preallocated_cache
from janus_engine.runtime.understanding import generate_text

GREEDY = TextSampling(temperature=0.0, max_new_tokens=10)


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    im = Image.new("RGB", size, color)
    im.paste((255 - color[0], 40, 200), (5, 5, 20, 18))
    return encode_png(im)


RED, BLUE, GREEN, GREY = (
    png((220, 30, 30)),
    png((20, 40, 230), (24, 48)),
    png((30, 200, 60), (50, 50)),
    png((120, 120, 120), (33, 20)),
)

# Turn 3 of a conversation with three images over its turns, and a one-image question beside it.
CHAT = (
    Turn("user", "Compare these two.", (RED, BLUE)),
    Turn("assistant", "The first is red."),
    Turn("user", "And this one?", (GREEN,)),
    Turn("assistant", "It is green."),
    Turn("user", "Which was first?"),
)
PHOTO = (Turn("user", "What is in this picture?", (GREY,)),)
TEXT_ONLY = (Turn("user", "Hello there, how are you today my friend?"),)


def request(key: str, turns: tuple[Turn, ...]) -> UnderstandRequest:
    return UnderstandRequest(key, turns, GREEDY)


def images_of(turns: Sequence[Turn]) -> list[bytes]:
    return [data for turn in turns for data in turn.images]


def inputs_for(runtime, requests: Sequence[UnderstandRequest]):
    """Prompts, decoded images and their bytes, through the runtime's own request path."""
    jobs = [runtime.prepare_understand(r) for r in requests]
    return (
        [job.prompt for job in jobs],
        [list(job.images) for job in jobs],
        [images_of(r.turns) for r in requests],
    )


def embed(runtime, requests, cache=None, conversations=None, *, with_bytes: bool = True) -> PromptEmbeddings:
    prompts, images, data = inputs_for(runtime, requests)
    return prompt_embeddings(
        runtime.model, runtime.processor, prompts, images, data if with_bytes else None, cache, conversations
    )


@contextmanager
def vision_calls(runtime) -> Iterator[list[int]]:
    """The batch size of every vision-tower forward while the block runs (a hook: measured, not mocked)."""
    calls: list[int] = []

    def count(module, args, kwargs, output) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        calls.append(int(pixels.shape[0]))

    handle = runtime.model.model.vision_model.register_forward_hook(count, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@torch.inference_mode()
def model_path(runtime, requests):
    """The processor's batch, what JanusForConditionalGeneration itself merges (captured at the language
    model's input) and the prefill's logits, from ``model(input_ids=..., pixel_values=...)`` called as
    generate_text calls it."""
    prompts, images, _ = inputs_for(runtime, requests)
    flat = [im for row in images for im in row]
    batch = runtime.processor(text=prompts, images=flat or None, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs) -> None:
        captured["inputs_embeds"] = kwargs["inputs_embeds"].clone()

    handle = runtime.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        extra = {"pixel_values": batch["pixel_values"]} if "pixel_values" in batch else {}
        out = runtime.model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
            **extra,
        )
    finally:
        handle.remove()
    return batch, captured["inputs_embeds"], out.logits.float()


@torch.inference_mode()
def prefill_logits(runtime, emb: PromptEmbeddings) -> torch.Tensor:
    out = runtime.model(
        inputs_embeds=emb.inputs_embeds, attention_mask=emb.attention_mask, position_ids=emb.position_ids
    )
    return out.logits.float()


@torch.inference_mode()
def greedy_tokens(runtime, emb: PromptEmbeddings, steps: int) -> list[list[int]]:
    """A prefill from ``inputs_embeds`` then ``steps`` greedy tokens per row (no stop at end-of-sentence),
    the way the continuous decoder will use these embeddings."""
    model = runtime.model
    rows, width = emb.attention_mask.shape
    cache = preallocated_cache(model.config.text_config.num_hidden_layers, width + steps)
    kw = {cache_keyword(model): cache}
    out = model(
        inputs_embeds=emb.inputs_embeds,
        attention_mask=emb.attention_mask,
        position_ids=emb.position_ids,
        use_cache=True,
        logits_to_keep=1,
        **kw,
    )
    full_mask = torch.ones((rows, width + steps), dtype=torch.long)
    full_mask[:, :width] = emb.attention_mask
    next_pos = emb.attention_mask.sum(-1)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    for step in range(steps):
        token = out.logits[:, -1].float().argmax(-1)
        for row, t in enumerate(token.tolist()):
            tokens[row].append(t)
        out = model(
            input_ids=token[:, None],
            attention_mask=full_mask[:, : width + step + 1],
            position_ids=(next_pos + step)[:, None],
            use_cache=True,
            logits_to_keep=1,
            **kw,
        )
    return tokens


def test_tokens_are_the_processors(runtime) -> None:
    requests = [request("chat", CHAT), request("text", TEXT_ONLY), request("photo", PHOTO)]
    batch, _, _ = model_path(runtime, requests)
    emb = embed(runtime, requests)
    assert torch.equal(emb.input_ids, batch["input_ids"])
    assert torch.equal(emb.attention_mask, batch["attention_mask"])
    assert emb.attention_mask[1, 0] == 0  # the text-only row really is left-padded
    image_token = runtime.model.config.image_token_id
    assert int((emb.input_ids == image_token).sum()) == 4 * runtime.num_image_tokens


@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "cold-cache"])
def test_embeddings_equal_the_models_own_merge(runtime, use_cache: bool) -> None:
    requests = [request("chat", CHAT), request("text", TEXT_ONLY), request("photo", PHOTO)]
    _, theirs, logits = model_path(runtime, requests)
    cache = ImageFeatureCache() if use_cache else None
    with vision_calls(runtime) as calls:
        ours = embed(runtime, requests, cache)
    assert calls == [4]  # one batched vision call for the four images
    assert ours.inputs_embeds.dtype == theirs.dtype
    assert torch.equal(ours.inputs_embeds, theirs)
    assert torch.equal(prefill_logits(runtime, ours), logits)
    # and the images matter: a different image changes the embeddings
    swapped = (Turn("user", "Compare these two.", (BLUE, RED)), *CHAT[1:])
    other = embed(runtime, [request("chat", swapped), request("text", TEXT_ONLY), request("photo", PHOTO)])
    assert not torch.equal(other.inputs_embeds, theirs)


def test_second_call_is_all_hits_and_runs_no_vision(runtime) -> None:
    cache = ImageFeatureCache()
    requests = [request("chat", CHAT)]
    with vision_calls(runtime) as calls:
        first = embed(runtime, requests, cache, ["conv"])
    assert calls == [3]
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    with vision_calls(runtime) as calls:
        second = embed(runtime, requests, cache, ["conv"])
    assert calls == []
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.equal(second.inputs_embeds, first.inputs_embeds)
    # the next turn adds one image: only that one goes through the tower
    more = (*CHAT, Turn("assistant", "The red one."), Turn("user", "And now?", (GREY,)))
    with vision_calls(runtime) as calls:
        embed(runtime, [request("chat", more)], cache, ["conv"])
    assert calls == [1]
    assert (cache.hits, cache.misses, len(cache)) == (6, 4, 4)


def test_warm_cache_gives_the_same_logits_and_greedy_tokens(runtime) -> None:
    """Turn by turn, as a chat grows: each turn's features were computed in an earlier, smaller batch."""
    cache = ImageFeatureCache()
    for n_turns in (1, 3, 5):  # turn 1 caches RED and BLUE, turn 3 adds GREEN, turn 5 is all hits
        requests = [request("chat", CHAT[:n_turns]), request("photo", PHOTO)]
        _, _, logits = model_path(runtime, requests)
        warm = embed(runtime, requests, cache, ["conv", "other"])
        assert torch.equal(prefill_logits(runtime, warm), logits)
    assert (cache.hits, cache.misses) == (3 + 4, 3 + 1)  # turn 3 adds GREEN; turn 5 is all hits
    requests = [request("chat", CHAT), request("photo", PHOTO)]
    cold = embed(runtime, requests)
    warm = embed(runtime, requests, cache, ["conv", "other"])
    steps = 8
    ours = greedy_tokens(runtime, warm, steps)
    assert ours == greedy_tokens(runtime, cold, steps)
    # ... and equal to the existing understanding loop (which stops at end-of-sentence)
    jobs = [runtime.prepare_understand(r) for r in requests]
    outputs = generate_text(runtime.model, runtime.processor, jobs, eos_id=runtime.eos_id)
    for row, job in enumerate(jobs):
        reference = outputs[job.key].tokens
        n = min(len(reference), steps)
        assert n > 0 and ours[row][:n] == reference[:n]
    assert ours[0] != ours[1]  # the rows really differ


def test_lru_evicts_the_least_recently_used() -> None:
    cache = ImageFeatureCache(max_images=2, max_bytes=None)
    a, b, c = (torch.full((4, 2), float(i)) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recently used
    cache.put("c", c)
    assert cache.keys() == ["a", "c"]
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (1, 1)

    by_bytes = ImageFeatureCache(max_images=10, max_bytes=2 * a.numel() * a.element_size())
    by_bytes.put("a", a)
    by_bytes.put("b", b)
    by_bytes.get("a")
    by_bytes.put("c", c)
    assert by_bytes.keys() == ["a", "c"]
    assert by_bytes.nbytes == 2 * a.numel() * a.element_size()
    by_bytes.put("huge", torch.zeros(100, 100))  # larger than the whole bound: not stored, nothing lost
    assert by_bytes.keys() == ["a", "c"]


def test_lru_bound_through_prompt_embeddings(runtime) -> None:
    cache = ImageFeatureCache(max_images=2)
    red, blue, green = (
        request(k, (Turn("user", "What is it?", (d,)),)) for k, d in (("r", RED), ("b", BLUE), ("g", GREEN))
    )
    embed(runtime, [red, blue], cache)
    embed(runtime, [red], cache)  # red is now more recent than blue
    embed(runtime, [green], cache)  # evicts blue
    assert cache.keys() == [image_key(RED), image_key(GREEN)]
    with vision_calls(runtime) as calls:
        embed(runtime, [red], cache)
        embed(runtime, [blue], cache)
    assert calls == [1]  # red was kept, blue was recomputed


def test_more_images_than_the_bound_in_one_call_still_merge_right(runtime) -> None:
    cache = ImageFeatureCache(max_images=1)
    requests = [request("chat", CHAT), request("photo", PHOTO)]
    _, theirs, _ = model_path(runtime, requests)
    assert torch.equal(embed(runtime, requests, cache).inputs_embeds, theirs)
    assert len(cache) == 1


def test_forget_drops_only_what_no_other_conversation_uses(runtime) -> None:
    cache = ImageFeatureCache()
    one = request("one", (Turn("user", "Compare.", (RED, BLUE)),))
    two = request("two", (Turn("user", "Compare.", (BLUE, GREEN)),))
    nobody = request("anon", PHOTO)
    embed(runtime, [one], cache, ["conv-1"])
    embed(runtime, [two], cache, ["conv-2"])
    embed(runtime, [nobody], cache)
    assert cache.conversations(image_key(BLUE)) == {"conv-1", "conv-2"}
    assert cache.forget("conv-1") == 1
    assert set(cache.keys()) == {image_key(BLUE), image_key(GREEN), image_key(GREY)}
    assert cache.conversations(image_key(BLUE)) == {"conv-2"}
    assert cache.forget("conv-1") == 0
    assert cache.forget("conv-2") == 2
    assert cache.keys() == [image_key(GREY)]  # used by no conversation: only the LRU removes it
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_one_batch_links_every_conversation_that_shows_an_image(runtime) -> None:
    cache = ImageFeatureCache()
    a = request("a", (Turn("user", "What is it?", (RED,)),))
    b = request("b", (Turn("user", "And this?", (RED, BLUE)),))
    with vision_calls(runtime) as calls:
        emb = embed(runtime, [a, b], cache, ["conv-a", "conv-b"])
    assert calls == [2]  # RED is computed once for both rows
    assert (cache.hits, cache.misses) == (0, 2)
    _, theirs, _ = model_path(runtime, [a, b])
    assert torch.equal(emb.inputs_embeds, theirs)
    cache.forget("conv-a")
    assert image_key(RED) in cache
    cache.forget("conv-b")
    assert len(cache) == 0


def test_keys_without_bytes_come_from_the_pixels(runtime) -> None:
    assert image_key(RED) == image_key(bytes(RED)) != image_key(BLUE)
    red = decode_user_image(RED)
    assert pixel_key(red) == pixel_key(decode_user_image(RED)) != pixel_key(decode_user_image(BLUE))
    assert pixel_key(red) != image_key(red.tobytes())
    cache = ImageFeatureCache()
    requests = [request("chat", CHAT)]
    first = embed(runtime, requests, cache, with_bytes=False)
    with vision_calls(runtime) as calls:
        second = embed(runtime, requests, cache, with_bytes=False)
    assert calls == []
    assert torch.equal(first.inputs_embeds, second.inputs_embeds)
    assert pixel_key(red) in cache


def test_mismatched_inputs_are_refused(runtime) -> None:
    prompts, images, data = inputs_for(runtime, [request("chat", CHAT)])
    m, p = runtime.model, runtime.processor
    with pytest.raises(ValueError, match="placeholders"):
        prompt_embeddings(m, p, prompts, [images[0][:2]])
    with pytest.raises(ValueError, match="image lists"):
        prompt_embeddings(m, p, prompts, [])
    with pytest.raises(ValueError, match="one bytes object per image"):
        prompt_embeddings(m, p, prompts, images, [data[0][:1]], ImageFeatureCache())
    with pytest.raises(ValueError, match="conversation ids"):
        prompt_embeddings(m, p, prompts, images, data, ImageFeatureCache(), ["a", "b"])
    with pytest.raises(ValueError):
        ImageFeatureCache(max_images=0)
