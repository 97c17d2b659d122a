"""Token choice for batched loops where every row has its own temperature, top-p and random stream.

Seeded sampling must give a request the same tokens alone and inside any batch. A shared torch generator
cannot do that (what a row draws would depend on the rows before it), and one ``torch.multinomial`` call
per request per step costs a kernel launch per request. Instead every row gets its own stream of uniform
numbers, drawn up front on the CPU from the request's seed, and a step samples all rows at once by
inverse-CDF lookup (``searchsorted`` on the cumulative probabilities). Same distribution as multinomial,
one vectorized op per step, and the random stream is independent of the device and of the batch.
"""

from __future__ import annotations

import secrets

import torch

MAX_SEED = 2**63 - 1


def fresh_seed() -> int:
    """A random seed for an unseeded request; reported back so the user can reproduce the result."""
    return secrets.randbelow(2**31)


def uniform_stream(seed: int, rows: int, steps: int) -> torch.Tensor:
    """``rows`` x ``steps`` uniforms in [0, 1) from ``seed``: row i is the same whatever ``rows`` is."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    uniforms = torch.rand((rows, steps), generator=generator, dtype=torch.float64).to(torch.float32)
    # A float64 draw within 2**-25 of 1 rounds to 1.0 in float32: keep the stream below 1 as promised.
    return uniforms.clamp_max(1.0 - 2.0**-24)


def guided_logits(logits: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance over a [cond rows; uncond rows] batch, one scale per conditional row."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + guidance[:, None] * (cond - uncond)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(dim=-1)
    # right=True picks the first index whose cumulative mass exceeds the target, so a zero-probability
    # token is never chosen as long as target < total. u < 1 is not enough on its own: u * total can round
    # up to total in float32 (and a caller's u may be 1.0), so the target is capped just below the total.
    total = cdf[:, -1:]
    below_total = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniforms[:, None].to(cdf.dtype) * total, below_total).contiguous()
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def choose_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    greedy: torch.Tensor | None,
    all_greedy: bool = False,
    top_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row.

    ``greedy`` marks the rows decoded by argmax (None when there is none); ``all_greedy`` is the same fact
    as a Python bool, so the common all-greedy or no-greedy batches need no device sync to find out.
    ``top_p`` None means no nucleus filtering.
    """
    if all_greedy:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature.clamp_min(1e-5)[:, None]
    probs = torch.softmax(scaled, dim=-1)
    if top_p is None:
        sampled = _inverse_cdf(probs, uniforms)
    else:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p[:, None], 0.0)
        sampled = order.gather(-1, _inverse_cdf(sorted_probs, uniforms)[:, None]).squeeze(-1)
    if greedy is None:
        return sampled
    return torch.where(greedy, logits.argmax(dim=-1), sampled)
