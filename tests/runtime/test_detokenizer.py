"""Streamed answer text: the deltas add up to exactly the decoded answer, characters split across byte
tokens included, and each step decodes a short window rather than the whole answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from janus_engine.runtime.understanding import _Detokenizer

TEXT = "  Voilà: 世界 says 😀, naïve café ✓ " * 8


class CountingTokenizer:
    """The tiny checkpoint's tokenizer, counting how many tokens each decode call is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoded_tokens = 0

    def decode(self, tokens, **kwargs):
        self.decoded_tokens += len(tokens)
        return self.tokenizer.decode(tokens, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _stream(tokenizer, tokens: list[int]) -> list[str]:
    detok = _Detokenizer(tokenizer)
    deltas = [detok.delta(tokens[: i + 1]) for i in range(len(tokens))]
    deltas.append(detok.delta(tokens, final=True))
    return [d for d in deltas if d]


def test_streamed_deltas_concatenate_to_exactly_the_final_text(tokenizer) -> None:
    tokens = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    # The byte-level vocabulary splits these characters across tokens: a token alone decodes to U+FFFD.
    assert any("\ufffd" in tokenizer.decode([t]) for t in tokens)
    deltas = _stream(tokenizer, tokens)
    assert "".join(deltas) == tokenizer.decode(tokens, skip_special_tokens=True).lstrip()
    assert not any("\ufffd" in d for d in deltas)  # no half character is ever sent
    assert len(deltas) > 10


def test_a_partial_character_at_the_end_is_flushed_by_the_final_call(tokenizer) -> None:
    tokens = tokenizer("ok 😀", add_special_tokens=False)["input_ids"]
    cut = tokens[:-1]  # the emoji's last byte never came (the token budget ran out)
    deltas = _stream(tokenizer, cut)
    assert "".join(deltas) == tokenizer.decode(cut, skip_special_tokens=True).lstrip()


def test_each_step_decodes_a_short_window_not_the_whole_answer(tokenizer) -> None:
    tokens = tokenizer(TEXT * 3, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    _stream(counting, tokens)
    assert len(tokens) > 300
    assert counting.decoded_tokens < 20 * len(tokens)  # whole-answer decoding: ~len(tokens)**2 / 2
