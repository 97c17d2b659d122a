"""Continuous batching for understanding (chat, /describe): conversations join and leave a running decode.

:func:`understanding.generate_text` answers a batch to its end, so a /describe that arrives one token later
waits for the longest answer of the batch. :class:`TextDecoder` keeps the decode running instead:
:meth:`TextDecoder.admit` prefills new conversations (one left-padded batch, image features from the
worker's :class:`~janus_engine.runtime.image_features.ImageFeatureCache`, so a follow-up in a conversation
does not run SigLIP again on its earlier images), copies each prompt into a row of a slotted KV cache
(:mod:`slot_cache`), and from the next :meth:`TextDecoder.step` on it decodes together with the rows
already running. A row that reaches end-of-sentence or its token budget leaves at once.

The worker interleaves these steps with the image decoder's (``worker_loop``), so a /describe arriving in
the middle of a 16-image batch is answered in about its own decode time, not after the batch.

Per-row temperature, top-p and random stream (``sampling``): a conversation's answer does not depend on
which other rows share its steps or when it joined (tested against ``generate_text`` alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from janus_engine.runtime.generation import cache_keyword
from janus_engine.runtime.image_features import ImageFeatureCache, prompt_embeddings
from janus_engine.runtime.kv_cache import preallocated_cache
from janus_engine.runtime.sampling import choose_tokens, uniform_stream
from janus_engine.runtime.slot_cache import SlotCache, SlotTable, attention_mask
from janus_engine.runtime.understanding import (
    TextJob,
    TextOutput,
    _Detokenizer,
    judge_first_step,
    text_output,
    with_system,
)

_COLUMN_ROUNDING = 64  # the cache grows in steps of this many columns, not one prompt at a time


@dataclass
class _Row:
    job: TextJob
    prompt_len: int
    stream: torch.Tensor  # (max_new_tokens,) uniforms, CPU
    detokenizer: _Detokenizer
    tokens: list[int] = field(default_factory=list)
    choice_probs: tuple[float, ...] = ()


@dataclass
class TextStepReport:
    """What one step did: text deltas, in row order, and the conversations that ended in it."""

    pieces: list[tuple[str, str]] = field(default_factory=list)  # (key, delta)
    finished: dict[str, TextOutput] = field(default_factory=dict)


class TextDecoder:
    """The live understanding rows of one worker. Not thread-safe; one per runtime."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        *,
        eos_id: int,
        max_rows: int,
        feature_cache: ImageFeatureCache | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.eos_id = eos_id
        self.max_rows = max_rows
        self.features = feature_cache
        weight = model.get_input_embeddings().weight
        self.device = weight.device
        self.dtype = weight.dtype
        self.cache_kw = cache_keyword(model)
        self.attn = model.config.text_config._attn_implementation
        self._rows: list[_Row] = []  # row i of the batch is slot i
        self.cache: SlotCache | None = None
        self.table: SlotTable | None = None
        self._logits: torch.Tensor | None = None

    # ---- state -------------------------------------------------------------------------------------

    @property
    def rows_in_use(self) -> int:
        return len(self._rows)

    @property
    def free_rows(self) -> int:
        return self.max_rows - len(self._rows)

    def keys(self) -> list[str]:
        return [row.job.key for row in self._rows]

    def __bool__(self) -> bool:
        return bool(self._rows)

    def _ensure_capacity(self, columns: int) -> None:
        """Slots wide enough for ``columns``; allocated on first use, grown (copied) when too narrow."""
        columns = -(-columns // _COLUMN_ROUNDING) * _COLUMN_ROUNDING
        if self.cache is None or self.table is None:
            config = self.model.config.text_config
            self.table = SlotTable(self.max_rows, columns, self.device)
            self.cache = SlotCache(config.num_hidden_layers, self.table)
            heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            self.cache.allocate(heads, head_dim, head_dim, self.dtype, zeroed=False)
        elif columns > self.table.capacity:
            self.cache.grow(columns)

    def release(self) -> None:
        """Free the cache buffers (the decoder is empty): a text burst must not pin memory for good."""
        if not self._rows:
            self.cache = None
            self.table = None
            self._logits = None

    # ---- joining -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, jobs: Sequence[TextJob]) -> None:
        """Prefill ``jobs`` (one left-padded batch) and give each a row; they decode from the next step.

        The caller keeps within ``free_rows``; a ValueError says it did not."""
        jobs = [job for job in jobs if job.key not in self.keys()]
        if not jobs:
            return
        if len(jobs) > self.free_rows:
            raise ValueError(f"{len(jobs)} conversations do not fit in {self.free_rows} free rows")
        embeds = prompt_embeddings(
            self.model,
            self.processor,
            [with_system(self.processor, job) for job in jobs],
            [job.images for job in jobs],
            [job.image_bytes for job in jobs] if all(job.image_bytes for job in jobs if job.images) else None,
            self.features,
            [job.conversation_id for job in jobs],
            system_prefixed=True,
        )
        mask = embeds.attention_mask
        width = mask.shape[1]
        prefill = preallocated_cache(self.model.config.text_config.num_hidden_layers, width)
        out = self.model(
            inputs_embeds=embeds.inputs_embeds,
            attention_mask=mask,
            position_ids=embeds.position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: prefill},
        )
        logits = out.logits[:, -1].float()
        lengths = mask.sum(-1).tolist()
        needed = max(
            [row.prompt_len + row.job.max_new_tokens for row in self._rows]
            + [int(n) + job.max_new_tokens for n, job in zip(lengths, jobs, strict=True)]
        )
        self._ensure_capacity(needed)
        assert self.cache is not None and self.table is not None
        if self._logits is None:
            self._logits = logits.new_zeros((self.max_rows, logits.shape[-1]))
        for i, job in enumerate(jobs):
            slot = len(self._rows)
            length = int(lengths[i])
            self.cache.load_prefix(slot, prefill, i, width - length, width)
            self.table.valid[slot] = False
            self.table.valid[slot, :length] = True
            self.table.write_at[slot] = length
            self._logits[slot] = logits[i]
            stream = uniform_stream(job.seed, 1, job.max_new_tokens)[0]
            self._rows.append(_Row(job, length, stream, _Detokenizer(self.processor.tokenizer)))

    # ---- leaving -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def drop(self, keys: set[str]) -> None:
        """Remove conversations (cancelled or finished); the rows after them move up into their places."""
        if not any(row.job.key in keys for row in self._rows):
            return
        keep = [i for i, row in enumerate(self._rows) if row.job.key not in keys]
        self._rows = [self._rows[i] for i in keep]
        moves = [(src, dst) for dst, src in enumerate(keep) if src != dst]
        if moves and self.cache is not None and self._logits is not None:
            src = [s for s, _ in moves]
            dst = [d for _, d in moves]
            self.cache.move_rows(src, dst)
            index_src = torch.tensor(src, dtype=torch.long, device=self.device)
            index_dst = torch.tensor(dst, dtype=torch.long, device=self.device)
            self._logits[index_dst] = self._logits[index_src]
        if not self._rows:
            self.release()

    def reset(self) -> None:
        """Forget every conversation (after a failed step) and free the buffers."""
        self._rows = []
        self.release()

    # ---- stepping ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> TextStepReport:
        """Choose one token for every live row, let finished conversations leave, and run the forward
        for the rest (each row attends to its own prompt and answer only)."""
        report = TextStepReport()
        n = len(self._rows)
        if n == 0:
            return report
        assert self._logits is not None and self.table is not None
        rows = self._rows
        temps = [row.job.temperature for row in rows]
        all_greedy = all(t <= 0 for t in temps)
        any_greedy = any(t <= 0 for t in temps)
        uniforms = torch.tensor([float(row.stream[len(row.tokens)]) for row in rows], dtype=torch.float32)
        token = choose_tokens(
            self._logits[:n],
            torch.tensor(temps, dtype=torch.float32, device=self.device),
            uniforms.to(self.device),
            greedy=torch.tensor([t <= 0 for t in temps], device=self.device) if any_greedy else None,
            all_greedy=all_greedy,
            top_p=torch.tensor([row.job.top_p for row in rows], dtype=torch.float32, device=self.device),
        )
        first = [i for i, row in enumerate(rows) if row.job.choice_ids and not row.tokens]
        if first:  # fixed answers: judged on the logits of the row's first step
            judged = judge_first_step(self._logits[:n], [row.job for row in rows], token)
            for i in first:
                rows[i].choice_probs = judged[i]
        chosen = token.tolist()  # the host needs the tokens anyway: streaming and end-of-sentence
        finished: set[str] = set()
        for row, tok in zip(rows, chosen, strict=True):
            key = row.job.key
            if tok == self.eos_id:
                finished.add(key)
            else:
                row.tokens.append(tok)
                piece = row.detokenizer.delta(row.tokens)
                if piece:
                    report.pieces.append((key, piece))
                if len(row.tokens) >= row.job.max_new_tokens:
                    finished.add(key)
            if key in finished:
                piece = row.detokenizer.delta(row.tokens, final=True)
                if piece:
                    report.pieces.append((key, piece))
                report.finished[key] = text_output(
                    row.job, list(row.tokens), row.prompt_len, row.choice_probs
                )
        if finished:
            survivors = [i for i, row in enumerate(rows) if row.job.key not in finished]
            token = token.index_select(0, torch.tensor(survivors, dtype=torch.long, device=self.device))
            self.drop(finished)
        if self._rows:
            self._forward(token)
        return report

    def _forward(self, token: torch.Tensor) -> None:
        assert self.table is not None and self.cache is not None and self._logits is not None
        n = len(self._rows)
        table = self.table
        write_at = [row.prompt_len + len(row.tokens) - 1 for row in self._rows]
        table.write_at[:n] = torch.tensor(write_at, dtype=torch.long, device=self.device)
        table.width = max(write_at) + 1
        table.active = n
        uniform = min(write_at) == table.width - 1  # every row equally long: no mask needed
        table.uniform_column = table.width - 1 if uniform else None
        if uniform:
            table.valid[:n, table.width - 1] = True
            mask = None
        else:
            table.valid[table.row_index[:n], table.write_at[:n]] = True
            mask = attention_mask(table.valid[:n, : table.width], self.attn, self.dtype)
        positions = table.write_at[:n, None]  # a row's position is its column: prompts are left-aligned
        out = self.model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
        )
        self._logits[:n] = out.logits[:, -1].float()


def run_text_jobs(decoder: TextDecoder, jobs: Sequence[TextJob]) -> dict[str, TextOutput]:
    """Every job through the decoder at once until all finish (tests and benchmarks)."""
    decoder.admit(jobs)
    results: dict[str, TextOutput] = {}
    while decoder:
        results.update(decoder.step().finished)
    return results
