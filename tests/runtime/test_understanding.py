"""Understanding: equal to transformers' generate, batch-invariant, streamed, seeded, cancellable."""

from __future__ import annotations

import io
from collections import defaultdict

import pytest
from PIL import Image

from janus_engine.errors import ImageTooLarge, InvalidImage, InvalidRequest, PromptTooLong
from janus_engine.images import encode_png
from janus_engine.protocol import TextSampling, Turn, UnderstandRequest


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    im = Image.new("RGB", size, color)
    im.paste((255 - color[0], 40, 200), (5, 5, 20, 18))
    return encode_png(im)


RED, BLUE = png((220, 30, 30)), png((20, 40, 230), (24, 48))
GREEDY = TextSampling(temperature=0.0, max_new_tokens=12)

CONVERSATIONS = {
    "photo": (Turn("user", "What is in this picture?", (RED,)),),
    "chat": (Turn("user", "Hello there, how are you today my friend?"),),
    "multi": (
        Turn("user", "Compare these two.", (RED, BLUE)),
        Turn("assistant", "The first is red."),
        Turn("user", "And the second?"),
    ),
}


def ask(key: str, sampling: TextSampling = GREEDY) -> UnderstandRequest:
    return UnderstandRequest(key, CONVERSATIONS[key], sampling)


def answers(runtime, requests, **kwargs) -> dict[str, object]:
    return {r.request_id: r for r in runtime.understand(requests, **kwargs) if r is not None}


def test_greedy_answer_equals_transformers_generate(runtime) -> None:
    p = runtime.processor
    content = [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]
    prompt = p.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    with Image.open(io.BytesIO(RED)) as im:
        inputs = p(text=prompt, images=[im.convert("RGB")], return_tensors="pt")
    out = runtime.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    if runtime.eos_id in new:
        new = new[: new.index(runtime.eos_id)]
    [ours] = runtime.understand([ask("photo")])
    assert ours.text == p.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert ours.completion_tokens == len(new)
    assert ours.prompt_tokens == inputs["input_ids"].shape[1]


def test_batch_answers_equal_single_answers(runtime) -> None:
    alone = {k: answers(runtime, [ask(k)])[k] for k in CONVERSATIONS}
    together = answers(runtime, [ask(k) for k in CONVERSATIONS])
    assert together == alone
    assert len({a.text for a in alone.values()}) == 3  # the answers really differ


def test_prompt_token_count_matches_the_processor(runtime) -> None:
    p = runtime.processor
    [result] = runtime.understand([ask("multi")])
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare these two."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The first is red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the second?"}]},
    ]
    prompt = p.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.new("RGB", (32, 32))] * 2
    assert result.prompt_tokens == p(text=prompt, images=images, return_tensors="pt")["input_ids"].shape[1]


def test_streamed_deltas_add_up_to_the_answer(runtime) -> None:
    deltas: dict[str, list[str]] = defaultdict(list)
    results = answers(runtime, [ask("photo"), ask("chat")], on_text=lambda k, d: deltas[k].append(d))
    for key, result in results.items():
        assert len(deltas[key]) > 1
        assert "".join(deltas[key]).strip() == result.text


def test_seeded_sampling_reproducible_alone_and_in_batch(runtime) -> None:
    hot = TextSampling(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=123)
    first = answers(runtime, [ask("chat", hot)])["chat"]
    assert answers(runtime, [ask("chat", hot)])["chat"] == first
    assert answers(runtime, [ask("photo"), ask("chat", hot)])["chat"] == first
    other = TextSampling(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=124)
    assert answers(runtime, [ask("chat", other)])["chat"].text != first.text


def test_max_new_tokens_is_respected_per_request(runtime) -> None:
    short = TextSampling(temperature=0.0, max_new_tokens=3)
    results = answers(runtime, [ask("photo", short), ask("chat")])
    assert results["photo"].completion_tokens <= 3
    assert results["chat"] == answers(runtime, [ask("chat")])["chat"]


def test_cancelled_conversation_leaves_and_others_finish(runtime) -> None:
    seen: dict[str, int] = defaultdict(int)

    def on_text(key: str, _delta: str) -> None:
        seen[key] += 1

    out = runtime.understand(
        [ask("photo"), ask("chat"), ask("multi")],
        on_text=on_text,
        should_cancel=lambda k: k == "chat" and seen[k] >= 2,
    )
    assert out[1] is None
    assert out[0] == answers(runtime, [ask("photo")])["photo"]
    assert out[2] == answers(runtime, [ask("multi")])["multi"]


def test_bad_conversations_raise_typed_errors(runtime) -> None:
    with pytest.raises(InvalidRequest):
        runtime.understand([UnderstandRequest("x", (Turn("assistant", "hi"),))])
    with pytest.raises(PromptTooLong, match="tokens"):
        runtime.understand([UnderstandRequest("x", (Turn("user", "zq xv jk " * 1000),))])
    with pytest.raises(InvalidRequest):
        runtime.validate(UnderstandRequest("x", (Turn("user", ""),)))
    # Image bytes from a library caller get an upload's checks too: not an image, or a pixel bomb.
    with pytest.raises(InvalidImage):
        runtime.validate(UnderstandRequest("x", (Turn("user", "what?", (b"not an image",)),)))
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # a few KB that decode to 400 megapixels
    with pytest.raises(ImageTooLarge):
        runtime.validate(UnderstandRequest("x", (Turn("user", "what?", (bomb.getvalue(),)),)))


def test_answer_budget_is_clipped_to_the_context(runtime) -> None:
    unit = "the quick brown fox "
    repeats = (runtime.max_context_tokens - 110) // runtime.count_tokens(unit)
    req = UnderstandRequest(
        "x", (Turn("user", unit * repeats),), TextSampling(temperature=0.0, max_new_tokens=4096)
    )
    [result] = runtime.understand([req])
    assert 600 < result.prompt_tokens < runtime.max_context_tokens
    assert result.prompt_tokens + result.completion_tokens <= runtime.max_context_tokens
