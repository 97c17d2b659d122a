"""Continuous (iteration-level) batching for text-to-image: requests join and leave a running decode.

:func:`generation.generate_image_tokens` runs a batch to its end; a request that arrives one step later
waits for all 576 steps. :class:`ImageDecoder` keeps the decode running instead: :meth:`ImageDecoder.admit`
prefills a new request (each distinct prompt once, then one (cond, uncond) row pair per image, as in the
batch loop) and its rows join at the next :meth:`ImageDecoder.step`; a request whose rows reach the last
token leaves with its tokens, and the others go on.

Rows at different steps share one forward through :mod:`slot_cache`: row pair ``p`` is cache rows
``2p`` (conditional) and ``2p + 1`` (unconditional), each with its own length, position and mask. A
request's random stream and guidance are its own (``sampling``), so a seeded request gives the same tokens
alone, inside a batch, or joining one late (tested against the batch loop).

Two step modes, same tokens:

* eager: the forward runs over the live rows and the filled columns only (no padding work on a CPU);
* static: the forward always runs over a fixed bucket of rows (1, 2, 4, 8, ... image pairs) and the whole
  capacity, with every per-row quantity in a device tensor and no Python branch on the data: the step has
  the same shapes every time, so it can be captured once per bucket as a CUDA graph and replayed, or
  compiled with ``torch.compile`` (see :mod:`static_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from janus_engine.runtime.generation import (
    ImageTokenJob,
    SpecialIds,
    _left_pad,
    cache_keyword,
)
from janus_engine.runtime.kv_cache import preallocated_cache
from janus_engine.runtime.sampling import choose_tokens, uniform_stream
from janus_engine.runtime.slot_cache import SlotCache, SlotTable, attention_mask

PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # image pairs per static step (rows = 2 x pairs)
PROMPT_ROOM = 128  # prompt columns the cache holds at first; a longer prompt grows it (eager only)


def bucket_for(pairs: int, buckets: Sequence[int] = PAIR_BUCKETS) -> int:
    """The smallest bucket holding ``pairs`` image pairs (the largest one if none does)."""
    return next((b for b in buckets if b >= pairs), buckets[-1])


@dataclass
class _Request:
    job: ImageTokenJob
    pairs: list[int]  # the request's row pairs, in image order (renumbered when rows move)
    step: int = 0


@dataclass
class StepReport:
    """What one step did: each live request's step count, and the requests that finished in it."""

    progressed: list[tuple[str, int]] = field(default_factory=list)  # (key, steps done)
    finished: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (n_images, T) tokens, CPU
    previews: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (n_images, done) tokens, CPU


StepFn = Callable[[int], torch.Tensor]  # bucket rows -> logits of the rows (float32)


class ImageDecoder:
    """The live image rows of one worker. Not thread-safe; one per runtime."""

    def __init__(
        self,
        model: torch.nn.Module,
        ids: SpecialIds,
        *,
        num_image_tokens: int,
        max_pairs: int,
        static: bool = False,
        prompt_room: int = PROMPT_ROOM,
    ) -> None:
        self.model = model
        self.ids = ids
        self.total = num_image_tokens
        self.static = static
        self.max_pairs = max_pairs
        # Static steps run over one of these pair counts: powers of two below the decoder's size, then
        # the size itself (a 12-pair decoder allocates 12 pairs, not 16).
        self.buckets = (*(b for b in PAIR_BUCKETS if b < max_pairs), max_pairs)
        embeddings = model.get_input_embeddings().weight
        self.device = embeddings.device
        self.dtype = embeddings.dtype
        self.language_model = model.model.language_model
        self.cache_kw = cache_keyword(self.language_model)
        self.attn = self.language_model.config._attn_implementation
        self._prompt_room = prompt_room
        self._requests: dict[str, _Request] = {}
        self._pair_owner: list[str | None] = []
        self.cache: SlotCache | None = None
        self.table: SlotTable | None = None
        self.graph_runner: Callable[[int], torch.Tensor] | None = (
            None  # set by static_step (graphs or compile)
        )

    # ---- state -------------------------------------------------------------------------------------

    @property
    def pairs_in_use(self) -> int:
        return sum(len(r.pairs) for r in self._requests.values())

    @property
    def free_pairs(self) -> int:
        return self.max_pairs - self.pairs_in_use

    def keys(self) -> list[str]:
        return list(self._requests)

    def __bool__(self) -> bool:
        return bool(self._requests)

    def _ensure_buffers(self, prompt_width: int) -> None:
        """Allocate the slots on first use; grow the prompt room when a longer prompt arrives."""
        capacity = max(self._prompt_room, prompt_width) + self.total
        if self.cache is None or self.table is None:
            rows = 2 * self.max_pairs
            self.table = SlotTable(rows, capacity, self.device)
            config = self.language_model.config
            self.cache = SlotCache(config.num_hidden_layers, self.table)
            heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            self.cache.allocate(heads, head_dim, head_dim, self.dtype)
            p = self.max_pairs
            self._guidance = torch.zeros(p, dtype=torch.float32, device=self.device)
            self._temperature = torch.ones(p, dtype=torch.float32, device=self.device)
            self._greedy = torch.zeros(p, dtype=torch.bool, device=self.device)
            self._uniforms = torch.zeros((p, self.total), dtype=torch.float32, device=self.device)
            self._tokens = torch.zeros((p, self.total), dtype=torch.long, device=self.device)
            self._steps = torch.zeros(p, dtype=torch.long, device=self.device)
            self._positions = torch.zeros(rows, dtype=torch.long, device=self.device)
            self._last = torch.zeros(p, dtype=torch.long, device=self.device)
            self._logits: torch.Tensor | None = None
            self._pair_owner = [None] * p
            self._dummy_rows()
        elif capacity > self.table.capacity:
            if self.static and self.graph_runner is not None:
                self.graph_runner = None  # captured for the old shapes: run eagerly from now on
            self.cache.grow(capacity)

    def prepare_static(self) -> None:
        """Allocate the buffers now (at the prompt room) and fix the width, so the static step can be
        captured or compiled before any request arrives."""
        self._ensure_buffers(0)
        assert self.table is not None
        self.table.width = self.table.capacity
        self.table.active = self.table.rows

    def _dummy_rows(self) -> None:
        """Rows not in use attend to one column of their own (static steps run over them too): finite
        numbers, never NaN, whatever they compute."""
        assert self.table is not None
        used = 2 * self.pairs_in_use
        last = self.table.capacity - 1
        self.table.valid[used:] = False
        self.table.valid[used:, last] = True
        self.table.write_at[used:] = last
        self._positions[used:] = 0

    # ---- joining -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, jobs: Sequence[ImageTokenJob]) -> None:
        """Prefill ``jobs`` and give their images row pairs; they take part from the next step on.

        The caller keeps within ``free_pairs``; a ValueError says it did not."""
        jobs = [job for job in jobs if job.key not in self._requests]
        if not jobs:
            return
        needed = sum(job.n_images for job in jobs)
        if needed > self.free_pairs:
            raise ValueError(f"{needed} images do not fit in {self.free_pairs} free row pairs")
        sequences: dict[tuple[int, ...], int] = {}
        cond_row = [sequences.setdefault(job.prompt_ids, len(sequences)) for job in jobs]
        uncond_row = [sequences.setdefault(job.uncond_ids(self.ids), len(sequences)) for job in jobs]
        prompt_ids, prompt_mask = _left_pad(list(sequences), self.ids.pad)
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        width = prompt_ids.shape[1]
        self._ensure_buffers(width)
        assert self.cache is not None and self.table is not None
        prefill = preallocated_cache(self.language_model.config.num_hidden_layers, width)
        out = self.language_model(
            inputs_embeds=self.model.get_input_embeddings()(prompt_ids),
            attention_mask=prompt_mask,
            position_ids=(prompt_mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            **{self.cache_kw: prefill},
        )
        prefill_logits = self.model.model.generation_head(out.last_hidden_state[:, -1]).float()
        if self._logits is None:
            self._logits = prefill_logits.new_zeros((self.table.rows, prefill_logits.shape[-1]))
        lengths = [len(seq) for seq in sequences]
        pair = self.pairs_in_use
        for j, job in enumerate(jobs):
            request = _Request(job, [])
            stream = (
                uniform_stream(job.seed or 0, job.n_images, self.total)
                if job.temperature > 0
                else torch.zeros((job.n_images, self.total))
            ).to(self.device)
            for image in range(job.n_images):
                for offset, seq_row in ((0, cond_row[j]), (1, uncond_row[j])):
                    row = 2 * pair + offset
                    length = lengths[seq_row]
                    self.cache.load_prefix(row, prefill, seq_row, width - length, width)
                    self.table.valid[row] = False
                    self.table.valid[row, :length] = True
                    self.table.write_at[row] = length
                    self._positions[row] = length
                    self._logits[row] = prefill_logits[seq_row]
                self._guidance[pair] = job.guidance
                self._temperature[pair] = job.temperature
                self._greedy[pair] = job.temperature <= 0
                self._uniforms[pair] = stream[image]
                self._steps[pair] = 0
                self._pair_owner[pair] = job.key
                request.pairs.append(pair)
                pair += 1
            self._requests[job.key] = request

    # ---- leaving -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def drop(self, keys: set[str]) -> None:
        """Remove requests (cancelled or finished): the last live pairs move into the freed places."""
        leaving = [self._requests.pop(key) for key in keys if key in self._requests]
        if not leaving:
            return
        assert self.cache is not None
        free = sorted(p for request in leaving for p in request.pairs)
        used = self.pairs_in_use + len(free)
        holes = [p for p in free if p < used - len(free)]
        movers = [p for p in range(used - len(free), used) if self._pair_owner[p] not in keys]
        src_rows, dst_rows = [], []
        moved: dict[int, int] = {}
        for hole, mover in zip(holes, movers, strict=True):
            moved[mover] = hole
            src_rows += [2 * mover, 2 * mover + 1]
            dst_rows += [2 * hole, 2 * hole + 1]
        self.cache.move_rows(src_rows, dst_rows)
        if moved:
            src = torch.tensor(list(moved), dtype=torch.long, device=self.device)
            dst = torch.tensor(list(moved.values()), dtype=torch.long, device=self.device)
            rows_src = torch.tensor(src_rows, dtype=torch.long, device=self.device)
            rows_dst = torch.tensor(dst_rows, dtype=torch.long, device=self.device)
            for name in ("_guidance", "_temperature", "_greedy", "_uniforms", "_tokens", "_steps", "_last"):
                buffer = getattr(self, name)
                buffer[dst] = buffer[src]
            self._positions[rows_dst] = self._positions[rows_src]
            assert self._logits is not None
            self._logits[rows_dst] = self._logits[rows_src]
            for mover, hole in moved.items():
                self._pair_owner[hole] = self._pair_owner[mover]
            for request in self._requests.values():
                request.pairs = [moved.get(p, p) for p in request.pairs]
        for p in range(self.pairs_in_use, used):
            self._pair_owner[p] = None
        self._dummy_rows()

    # ---- stepping ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, preview_due: Callable[[str, int], bool] | None = None) -> StepReport:
        """Choose one token for every live row pair, let finished requests leave, and run the forward
        for the rest. ``preview_due(key, steps_done)`` asks whether a request wants its partial tokens."""
        report = StepReport()
        n = self.pairs_in_use
        if n == 0:
            return report
        assert self._logits is not None and self.table is not None
        requests = list(self._requests.values())
        all_greedy = all(r.job.temperature <= 0 for r in requests)
        any_greedy = any(r.job.temperature <= 0 for r in requests)
        logits = self._logits[: 2 * n]
        guided = logits[1::2] + self._guidance[:n, None] * (logits[0::2] - logits[1::2])
        steps = self._steps[:n]
        uniforms = self._uniforms[:n].gather(1, steps[:, None]).squeeze(1)
        token = choose_tokens(
            guided,
            self._temperature[:n],
            uniforms,
            greedy=self._greedy[:n] if any_greedy else None,
            all_greedy=all_greedy,
        )
        self._tokens[torch.arange(n, device=self.device), steps] = token
        self._last[:n] = token
        self._steps[:n] += 1
        finished: set[str] = set()
        for request in requests:
            request.step += 1
            report.progressed.append((request.job.key, request.step))
            if request.step >= self.total:
                finished.add(request.job.key)
            elif preview_due is not None and preview_due(request.job.key, request.step):
                index = torch.tensor(request.pairs, device=self.device)
                report.previews[request.job.key] = self._tokens.index_select(0, index)[:, : request.step]
        for key in finished:
            request = self._requests[key]
            index = torch.tensor(request.pairs, device=self.device)
            report.finished[key] = self._tokens.index_select(0, index).cpu()
        report.previews = {k: v.cpu() for k, v in report.previews.items()}
        if finished:
            self.drop(finished)
        if self.pairs_in_use:
            self._forward()
        return report

    def _prepare_rows(self, rows: int) -> None:
        """Mark the column each live row writes now as visible (it attends to its own new token)."""
        assert self.table is not None
        live = 2 * self.pairs_in_use
        index = self.table.row_index[:live]
        self.table.valid[index, self.table.write_at[:live]] = True
        self.table.active = rows

    def _advance_rows(self) -> None:
        assert self.table is not None
        live = 2 * self.pairs_in_use
        self.table.write_at[:live] += 1
        self._positions[:live] += 1

    def _forward(self) -> None:
        assert self.table is not None and self._logits is not None
        live = 2 * self.pairs_in_use
        if self.static:
            rows = 2 * bucket_for(self.pairs_in_use, self.buckets)
            self._prepare_rows(rows)
            if self.graph_runner is not None:
                logits = self.graph_runner(rows)
            else:
                self.table.width = self.table.capacity
                logits = self.forward_rows(rows)
            self._logits[:live] = logits[:live]
        else:
            self._prepare_rows(live)
            # host-side; both rows of a pair (a negative prompt may be longer or shorter than the prompt)
            lengths = [
                length + r.step
                for r in self._requests.values()
                for length in (len(r.job.prompt_ids), len(r.job.negative_ids or r.job.prompt_ids))
            ]
            longest = max(lengths)
            self.table.width = min(self.table.capacity, longest)
            # All rows equally long (requests that joined together with prompts of one length): a slice
            # write and no mask.
            self.table.uniform_column = longest - 1 if min(lengths) == longest else None
            self._logits[:live] = self.forward_rows(live)
            self.table.uniform_column = None
        self._advance_rows()
        self._dummy_rows()

    def forward_rows(self, rows: int) -> torch.Tensor:
        """The decode forward over cache rows ``[0, rows)``: every tensor it reads is a buffer of this
        decoder (or of the slot table), so the same call can be captured and replayed."""
        assert self.table is not None and self.cache is not None
        pairs = rows // 2
        tokens = self._last[:pairs, None].expand(pairs, 2).reshape(-1)  # cond, uncond (no host sync)
        embeds = self.model.prepare_embeddings_for_image_generation(tokens[:, None])
        mask = (
            None
            if self.table.uniform_column is not None
            else attention_mask(self.table.valid[:rows, : self.table.width], self.attn, self.dtype)
        )
        out = self.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=self._positions[:rows, None],
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        return self.model.model.generation_head(out.last_hidden_state[:, -1]).float()

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget every request (after a failed step); the buffers are kept for the next ones."""
        self._requests.clear()
        if self.table is not None:
            self._pair_owner = [None] * self.max_pairs
            self._dummy_rows()


def run_image_jobs(decoder: ImageDecoder, jobs: Sequence[ImageTokenJob]) -> dict[str, torch.Tensor]:
    """Every job through the decoder at once until all finish (tests and benchmarks)."""
    decoder.admit(jobs)
    results: dict[str, torch.Tensor] = {}
    while decoder:
        results.update(decoder.step().finished)
    return results
