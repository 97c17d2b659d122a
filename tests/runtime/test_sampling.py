"""Inverse-CDF token choice at the edge of the uniform range: a zero-probability token is never drawn."""

from __future__ import annotations

import torch

from janus_engine.runtime.sampling import choose_tokens, uniform_stream


def _choose(probs: list[float], u: float, top_p: float | None = None) -> int:
    logits = torch.tensor([probs]).log()  # log(0) = -inf: exactly zero probability after the softmax
    top = None if top_p is None else torch.tensor([top_p])
    uniforms = torch.tensor([u], dtype=torch.float64).to(torch.float32)
    return int(choose_tokens(logits, torch.tensor([1.0]), uniforms, greedy=None, top_p=top)[0])


def test_a_uniform_that_rounds_to_one_never_picks_a_zero_probability_token():
    u = 1 - 2**-26  # below 1 in float64, exactly 1.0 once cast to float32
    assert torch.tensor([u], dtype=torch.float64).to(torch.float32).item() == 1.0
    assert _choose([0.5, 0.5, 0.0, 0.0], u) == 1
    assert _choose([0.5, 0.5, 0.0, 0.0], 1.0) == 1
    assert _choose([0.2, 0.3, 0.5, 0.0], u, top_p=0.6) == 1  # nucleus {2, 1}: never the dropped 0 or 3
    assert _choose([0.5, 0.5, 0.0, 0.0], 0.0) == 0


def test_the_uniform_stream_stays_below_one_in_float32():
    uniforms = uniform_stream(seed=123, rows=4, steps=10_000)
    assert uniforms.dtype == torch.float32
    assert float(uniforms.max()) < 1.0 and float(uniforms.min()) >= 0.0
