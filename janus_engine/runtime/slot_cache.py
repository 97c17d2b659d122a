"""A slotted KV cache for continuous batching: every batch row is a slot with its own length.

The run-to-completion loops (``kv_cache.PreallocatedLayer``) keep all rows at one length, so a request can
only start when a batch starts. Here each row (slot) owns a stretch of one preallocated buffer, holds its
prompt at columns ``[0, prompt_len)`` and writes each new token at its own column (``write_at``), so rows
at different steps share one forward pass: a new request's rows join the running decode at the next step
and a finished request's rows leave at once.

What the decoders set before each forward (all device tensors, so a step has static shapes and can be
captured as a CUDA graph):

* ``write_at[r]``: the column row ``r``'s new key/value goes to (its current length);
* ``valid[r, c]``: whether row ``r`` may attend to column ``c`` (its prompt and what it generated so far,
  including the token being written); the attention mask is a view of it;
* ``width``: how many columns attention reads (a Python int: the longest live row in eager mode, the
  whole capacity in the static mode, where it never changes).

Rows are packed at the front (``[0, rows_in_use)``); when a row leaves, the last live row moves into its
place (:meth:`SlotTable.move_rows`), copying only the rows that move. The buffers start zeroed and every
column ever written holds finite numbers, so a masked column contributes exactly nothing (0 * NaN would
not be nothing).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotTable:
    """The per-row bookkeeping every layer of one slotted cache shares."""

    def __init__(self, rows: int, capacity: int, device: torch.device) -> None:
        self.rows = rows
        self.capacity = capacity
        self.device = device
        self.write_at = torch.zeros(rows, dtype=torch.long, device=device)
        self.valid = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        self.row_index = torch.arange(rows, device=device)
        self.width = capacity
        self.active = rows  # rows the next forward runs over (set by the decoder)
        # Set by a decoder that knows (host-side, without a device sync) that every row of the next forward
        # writes at this one column and attends to exactly columns [0, column]: the write is then a plain
        # slice copy and the forward needs no mask at all (SDPA's fastest path). None = rows differ.
        self.uniform_column: int | None = None


class SlotLayer(CacheLayerMixin):
    """One layer's keys/values for every slot; ``update`` writes each row at its own column."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, table: SlotTable) -> None:
        super().__init__()
        self.table = table

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, heads, _, k_dim = key_states.shape
        shape = (self.table.rows, heads, self.table.capacity)
        self._k = key_states.new_zeros((*shape, k_dim))
        self._v = value_states.new_zeros((*shape, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def allocate(
        self, heads: int, k_dim: int, v_dim: int, dtype: torch.dtype, *, zeroed: bool = True
    ) -> None:
        """Allocate the buffers up front (the decoder knows the shapes), so the first step allocates none.

        ``zeroed=False`` skips the fill (a decoder that allocates per burst: zeroing every row costs more
        than the burst on a CPU); :meth:`load_prefix` zeroes the rest of each row it fills, which is all a
        masked column needs (finite numbers)."""
        table = self.table
        make = torch.zeros if zeroed else torch.empty
        self._k = make((table.rows, heads, table.capacity, k_dim), dtype=dtype, device=table.device)
        self._v = make((table.rows, heads, table.capacity, v_dim), dtype=dtype, device=table.device)
        self.device = table.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        table = self.table
        n = key_states.shape[0]
        column = table.uniform_column
        if column is not None:
            self._k[:n, :, column] = key_states[:, :, -1]
            self._v[:n, :, column] = value_states[:, :, -1]
        else:
            rows, cols = table.row_index[:n], table.write_at[:n]
            self._k[rows, :, cols] = key_states[:, :, -1]
            self._v[rows, :, cols] = value_states[:, :, -1]
        return self._k[:n, :, : table.width], self._v[:n, :, : table.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.table.width, 0

    def get_seq_length(self) -> int:
        return self.table.width

    def get_max_length(self) -> int:
        return self.table.capacity

    def load_prefix(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put a prefilled prompt (``(heads, length, dim)``) into ``slot`` at columns ``[0, length)``."""
        length = keys.shape[-2]
        self._k[slot, :, :length].copy_(keys)
        self._v[slot, :, :length].copy_(values)
        self._k[slot, :, length:].zero_()  # columns the row may read masked must hold finite numbers
        self._v[slot, :, length:].zero_()

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        self._k[dst] = self._k[src]
        self._v[dst] = self._v[src]

    def grow(self, capacity: int) -> None:
        """A wider buffer holding the same rows (a new request's prompt did not fit)."""
        if not self.is_initialized:
            return
        rows, heads, old, k_dim = self._k.shape
        k = self._k.new_zeros((rows, heads, capacity, k_dim))
        v = self._v.new_zeros((rows, heads, capacity, self._v.shape[-1]))
        k[:, :, :old] = self._k
        v[:, :, :old] = self._v
        self._k, self._v = k, v

    def reset(self) -> None:
        """Nothing to do: a slot is overwritten when a new row takes it."""


class SlotCache(Cache):
    """A transformers ``Cache`` of :class:`SlotLayer` layers over one :class:`SlotTable`."""

    def __init__(self, num_layers: int, table: SlotTable) -> None:
        super().__init__(layers=[SlotLayer(table) for _ in range(num_layers)])
        self.table = table

    def allocate(
        self, heads: int, k_dim: int, v_dim: int, dtype: torch.dtype, *, zeroed: bool = True
    ) -> None:
        for layer in self.layers:
            layer.allocate(heads, k_dim, v_dim, dtype, zeroed=zeroed)

    def load_prefix(self, slot: int, prefill: Cache, row: int, start: int, end: int) -> None:
        """Copy columns ``[start, end)`` of ``prefill``'s row ``row`` into ``slot`` (left-aligned)."""
        for layer, source in zip(self.layers, prefill.layers, strict=True):
            layer.load_prefix(slot, source.keys[row, :, start:end], source.values[row, :, start:end])

    def move_rows(self, src: list[int], dst: list[int]) -> None:
        """Copy rows ``src`` onto rows ``dst`` (the bookkeeping in the table moves too)."""
        if not src:
            return
        device = self.table.device
        s = torch.tensor(src, dtype=torch.long, device=device)
        d = torch.tensor(dst, dtype=torch.long, device=device)
        for layer in self.layers:
            layer.move_rows(s, d)
        self.table.write_at[d] = self.table.write_at[s]
        self.table.valid[d] = self.table.valid[s]

    def grow(self, capacity: int) -> None:
        table = self.table
        if capacity <= table.capacity:
            return
        for layer in self.layers:
            layer.grow(capacity)
        valid = torch.zeros((table.rows, capacity), dtype=torch.bool, device=table.device)
        valid[:, : table.capacity] = table.valid
        table.valid = valid
        table.capacity = capacity
        table.width = min(table.width, capacity)


def attention_mask(valid: torch.Tensor, attn: str, dtype: torch.dtype) -> torch.Tensor:
    """The decode step's mask from the rows' ``valid`` columns, in the form the attention implementation
    expects: 4D bool for SDPA, 4D additive for eager, 2D for the others (flash attention)."""
    if attn == "sdpa":
        return valid[:, None, None, :]
    if attn == "eager":
        additive = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        additive.masked_fill_(~valid, torch.finfo(dtype).min)
        return additive[:, None, None, :]
    return valid.long()
