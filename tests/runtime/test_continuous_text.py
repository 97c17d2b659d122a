"""Continuous text batching: an answer does not depend on when it joined or which rows shared its steps."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from janus_engine.protocol import TextSampling, Turn, UnderstandRequest
from janus_engine.runtime.continuous_text import TextDecoder, run_text_jobs
from janus_engine.runtime.image_features import ImageFeatureCache
from janus_engine.runtime.understanding import generate_text


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def text_job(
    runtime, key: str, text: str, *, images=(), temperature=0.0, seed=1, tokens=12, conversation=None
):
    request = UnderstandRequest(
        key,
        (Turn("user", text, tuple(images)),),
        TextSampling(temperature=temperature, top_p=0.9, max_new_tokens=tokens, seed=seed),
        conversation_id=conversation,
    )
    return runtime.prepare_understand(request)


def alone(runtime, job) -> list[int]:
    out = generate_text(runtime.model, runtime.processor, [job], eos_id=runtime.eos_id)[job.key]
    assert out is not None
    return out.tokens


def decoder(runtime, *, rows: int = 4, cache=None) -> TextDecoder:
    return TextDecoder(
        runtime.model, runtime.processor, eos_id=runtime.eos_id, max_rows=rows, feature_cache=cache
    )


@pytest.fixture
def jobs(runtime):
    return [
        text_job(runtime, "hello", "hello there, who are you?"),
        text_job(runtime, "red", "What is in this picture?", images=[png((200, 10, 10))]),
        text_job(runtime, "sampled", "Tell me a story about a fox", temperature=0.8, seed=5, tokens=20),
    ]


def test_alone_and_together_equal_the_batch_loop(runtime, jobs) -> None:
    expected = {job.key: alone(runtime, job) for job in jobs}
    for job in jobs:
        assert run_text_jobs(decoder(runtime), [job])[job.key].tokens == expected[job.key]
    together = run_text_jobs(decoder(runtime), jobs)
    assert {key: out.tokens for key, out in together.items()} == expected
    assert len(set(map(tuple, expected.values()))) == 3  # the answers differ: the test can fail


def test_joining_late_and_others_leaving_change_no_answer(runtime, jobs) -> None:
    expected = {job.key: alone(runtime, job) for job in jobs}
    dec = decoder(runtime, cache=ImageFeatureCache())
    results = {}
    schedule = {0: [jobs[2]], 3: [jobs[0]], 5: [jobs[1]]}
    step = 0
    while dec or any(s >= step for s in schedule):
        if step in schedule:
            dec.admit(schedule[step])
        results.update(dec.step().finished)
        step += 1
    assert {key: out.tokens for key, out in results.items()} == expected


def test_streamed_pieces_join_to_the_answer_and_cancel_frees_the_row(runtime, jobs) -> None:
    dec = decoder(runtime, rows=2)
    dec.admit(jobs[:2])
    assert dec.free_rows == 0
    with pytest.raises(ValueError, match="free rows"):
        dec.admit([jobs[2]])
    pieces: dict[str, str] = {}
    finished = {}
    first = True
    while dec:
        report = dec.step()
        for key, piece in report.pieces:
            pieces[key] = pieces.get(key, "") + piece
        finished.update(report.finished)
        if first:
            dec.drop({"hello"})
            first = False
            dec.admit([jobs[2]])
    assert set(finished) == {"red", "sampled"}
    tokenizer = runtime.processor.tokenizer
    for key, out in finished.items():
        assert pieces.get(key, "") == tokenizer.decode(out.tokens, skip_special_tokens=True).lstrip()
    assert finished["sampled"].tokens == alone(runtime, jobs[2])


def test_a_follow_up_reuses_the_cached_image_and_forget_drops_it(runtime) -> None:
    cache = ImageFeatureCache()
    image = png((10, 200, 10))
    first = text_job(runtime, "t1", "What colour?", images=[image], conversation="c1")
    run_text_jobs(decoder(runtime, cache=cache), [first])
    assert cache.misses == 1 and len(cache) == 1
    follow = text_job(runtime, "t2", "And the shape?", images=[image], conversation="c1")
    got = run_text_jobs(decoder(runtime, cache=cache), [follow])["t2"].tokens
    assert cache.hits == 1 and got == alone(runtime, follow)
    assert cache.forget("c1") == 1 and len(cache) == 0
