"""Our batched classifier-free-guidance loop for text-to-image, over transformers' Janus modules.

Upstream, one call serves one prompt (DeepSeek's script) or one guidance/temperature for all rows
(transformers' ``generate(generation_mode="image")``), with no progress hook. Here one loop serves many
requests, each with its own prompt, image count, guidance, temperature and seed:

* Rows are ``[cond rows of every image..., uncond rows in the same order]`` (the layout transformers
  uses), prompts left-padded with correct attention masks and position ids.
* Each distinct prompt is prefilled once (one conditional and one unconditional row); the KV cache is
  then fanned out to one row pair per image, so 16 images cost one prefill, not 16.
* The KV cache is preallocated for prompt + image tokens and written in place (see ``kv_cache``).
* Guidance and temperature are per-row tensors; sampling draws from per-request random streams, so a
  seeded request gives the same tokens alone and in a batch (see ``sampling``).
* A step never waits for the device: no ``.item()``, no host-side checks of device tensors. Progress
  callbacks run every step; cancellation is checked between steps and a cancelled request's rows are
  removed from the batch and the cache while the others go on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from janus_engine.runtime.kv_cache import preallocated_cache, select_cache_rows
from janus_engine.runtime.sampling import choose_tokens, guided_logits, uniform_stream


@dataclass(frozen=True)
class ImageTokenJob:
    """One request as the loop sees it: token ids of the conditional prompt (BOS ... <begin_of_image>)."""

    key: str
    prompt_ids: tuple[int, ...]
    n_images: int
    guidance: float
    temperature: float  # 0 = greedy
    seed: int | None  # used when temperature > 0
    preview_every: int = 0
    # The unconditional row's prompt when the request has a negative prompt (same template, its text);
    # None = DeepSeek's unconditional prompt (:func:`unconditional_ids`).
    negative_ids: tuple[int, ...] | None = None

    def uncond_ids(self, ids: SpecialIds) -> tuple[int, ...]:
        """The prompt of this job's unconditional (guidance) row."""
        if self.negative_ids is not None:
            return self.negative_ids
        return tuple(unconditional_ids(self.prompt_ids, ids))

    @property
    def longest_prompt(self) -> int:
        return max(len(self.prompt_ids), len(self.negative_ids or ()))


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    pad: int
    boi: int


ProgressFn = Callable[[str, int, int], None]
TokensFn = Callable[[str, int, torch.Tensor], None]
CancelFn = Callable[[str], bool]


def cache_keyword(module: torch.nn.Module) -> str:
    """The name this transformers version gives the KV-cache argument ("cache" since 5.2x)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def unconditional_ids(prompt_ids: Sequence[int], ids: SpecialIds) -> list[int]:
    """DeepSeek's unconditional prompt: every token but BOS and <begin_of_image> becomes the pad token."""
    return [t if t in (ids.bos, ids.boi) else ids.pad for t in prompt_ids]


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


class _DecodeMask:
    """Attention masks for the one-token decode steps, cut from one buffer without allocating per step.

    None when no row is padded (the fastest SDPA path); a 4D mask in the format the attention
    implementation expects otherwise (bool for SDPA, additive for eager, the 2D mask for the rest)."""

    def __init__(self, prefix_mask: torch.Tensor, total: int, attn: str, dtype: torch.dtype) -> None:
        self.needed = bool((prefix_mask == 0).any())
        self.attn = attn
        self.prefix = prefix_mask.shape[1]
        # Row stride a multiple of 16: SDPA's memory-efficient CUDA kernel wants an aligned mask.
        padded = -(-total // 16) * 16
        full = torch.ones((prefix_mask.shape[0], padded), dtype=torch.long, device=prefix_mask.device)
        full[:, : self.prefix] = prefix_mask
        self.full2d = full
        if attn == "sdpa":
            self.full4d = full.bool()[:, None, None, :]
        elif attn == "eager":
            self.full4d = torch.zeros(full.shape, dtype=dtype, device=full.device)
            self.full4d.masked_fill_(full == 0, torch.finfo(dtype).min)
            self.full4d = self.full4d[:, None, None, :]
        else:
            self.full4d = None

    def at(self, length: int) -> torch.Tensor | None:
        if not self.needed:
            return None
        if self.full4d is not None:
            return self.full4d[..., :length]
        return self.full2d[:, :length]

    def select(self, rows: torch.Tensor) -> None:
        self.full2d = self.full2d.index_select(0, rows)
        if self.full4d is not None:
            self.full4d = self.full4d.index_select(0, rows)


def _spans(jobs: Sequence[ImageTokenJob]) -> dict[str, tuple[int, int]]:
    """Each job's [start, end) range of conditional rows, in job order."""
    spans, start = {}, 0
    for job in jobs:
        spans[job.key] = (start, start + job.n_images)
        start += job.n_images
    return spans


class _Rows:
    """Per-row state of the live batch; every tensor is indexed by conditional row (N rows)."""

    def __init__(self, jobs: list[ImageTokenJob], total: int, device: torch.device) -> None:
        self.jobs = jobs
        self.spans = _spans(jobs)
        owner = [j for j, job in enumerate(jobs) for _ in range(job.n_images)]
        self.guidance = torch.tensor([jobs[j].guidance for j in owner], dtype=torch.float32, device=device)
        temps = [jobs[j].temperature for j in owner]
        self.temperature = torch.tensor(temps, dtype=torch.float32, device=device)
        self.greedy = torch.tensor([t <= 0 for t in temps], device=device)
        streams = [
            uniform_stream(job.seed or 0, job.n_images, total)
            if job.temperature > 0
            else torch.zeros((job.n_images, total))
            for job in jobs
        ]
        self.uniforms = torch.cat(streams).to(device)
        self.tokens = torch.zeros((len(owner), total), dtype=torch.long, device=device)
        self._update_flags()

    def _update_flags(self) -> None:
        temps = [job.temperature for job in self.jobs]
        self.all_greedy = all(t <= 0 for t in temps)
        self.any_greedy = any(t <= 0 for t in temps)

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    def drop(self, keys: set[str]) -> torch.Tensor:
        """Remove the jobs ``keys``; returns the kept conditional row indices (old numbering)."""
        keep = [i for job in self.jobs if job.key not in keys for i in range(*self.spans[job.key])]
        index = torch.tensor(keep, dtype=torch.long, device=self.tokens.device)
        self.jobs = [job for job in self.jobs if job.key not in keys]
        self.spans = _spans(self.jobs)
        for name in ("guidance", "temperature", "greedy", "uniforms", "tokens"):
            setattr(self, name, getattr(self, name).index_select(0, index))
        self._update_flags()
        return index


@torch.inference_mode()
def generate_image_tokens(
    model: torch.nn.Module,
    jobs: Sequence[ImageTokenJob],
    ids: SpecialIds,
    *,
    num_image_tokens: int,
    on_progress: ProgressFn | None = None,
    on_tokens: TokensFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, torch.Tensor | None]:
    """Run the batched CFG loop; returns each job's image tokens ``(n_images, num_image_tokens)`` on the
    CPU, or None for a job cancelled before it finished. ``on_tokens(key, step, tokens_so_far)`` is called
    every ``job.preview_every`` steps (for previews)."""
    results: dict[str, torch.Tensor | None] = {job.key: None for job in jobs}
    live = [job for job in jobs if not (should_cancel and should_cancel(job.key))]
    if not live:
        return results
    device = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    language_model = model.model.language_model
    cache_kw = cache_keyword(language_model)
    total = num_image_tokens

    # Prefill each distinct sequence once: a request's conditional prompt, and the unconditional prompts,
    # which depend only on the prompt length (BOS, pads, BOI) and so are shared by same-length prompts
    # (a negative prompt is its own sequence, shared by the requests that ask for the same one).
    sequences: dict[tuple[int, ...], int] = {}
    cond_row = [sequences.setdefault(job.prompt_ids, len(sequences)) for job in live]
    uncond_row = [sequences.setdefault(job.uncond_ids(ids), len(sequences)) for job in live]
    prompt_ids, prompt_mask = _left_pad(list(sequences), ids.pad)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    width = prompt_ids.shape[1]
    cache = preallocated_cache(language_model.config.num_hidden_layers, width + total)
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
    out = language_model(
        inputs_embeds=model.get_input_embeddings()(prompt_ids),
        attention_mask=prompt_mask,
        position_ids=positions,
        use_cache=True,
        **{cache_kw: cache},
    )
    logits = model.model.generation_head(out.last_hidden_state[:, -1]).float()

    # Fan out to one (cond, uncond) row pair per image.
    fan = [j for j, job in enumerate(live) for _ in range(job.n_images)]
    fan_rows = torch.tensor([cond_row[j] for j in fan] + [uncond_row[j] for j in fan], device=device)
    select_cache_rows(cache, fan_rows)
    logits = logits.index_select(0, fan_rows)
    row_mask = prompt_mask.index_select(0, fan_rows)
    next_pos = row_mask.sum(-1)
    attn = language_model.config._attn_implementation
    masks = _DecodeMask(row_mask, width + total, attn, dtype)
    rows = _Rows(live, total, device)

    for step in range(total):
        token = choose_tokens(
            guided_logits(logits, rows.guidance),
            rows.temperature,
            rows.uniforms[:, step],
            greedy=rows.greedy if rows.any_greedy else None,
            all_greedy=rows.all_greedy,
        )
        rows.tokens[:, step] = token
        done = step + 1
        for job in rows.jobs:
            if on_progress is not None:
                on_progress(job.key, done, total)
            due = job.preview_every > 0 and done % job.preview_every == 0 and done < total
            if on_tokens is not None and due:
                start, end = rows.spans[job.key]
                on_tokens(job.key, done, rows.tokens[start:end, :done].cpu())
        if done == total:
            break
        cancelled = {job.key for job in rows.jobs if should_cancel and should_cancel(job.key)}
        if cancelled:
            kept = rows.drop(cancelled)
            if rows.n == 0:
                return results
            both = torch.cat([kept, kept + (logits.shape[0] // 2)])
            select_cache_rows(cache, both)
            masks.select(both)
            next_pos = next_pos.index_select(0, both)
            token = token.index_select(0, kept)
        embeds = model.prepare_embeddings_for_image_generation(torch.cat([token, token])[:, None])
        out = language_model(
            inputs_embeds=embeds,
            attention_mask=masks.at(width + done),
            position_ids=(next_pos + step)[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = model.model.generation_head(out.last_hidden_state[:, -1]).float()

    tokens = rows.tokens.cpu()
    for job in rows.jobs:
        start, end = rows.spans[job.key]
        results[job.key] = tokens[start:end]
    return results
