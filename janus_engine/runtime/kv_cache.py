"""A KV cache that is allocated once and grows in place, for our own decoding loops.

transformers' DynamicCache concatenates every step, so each step copies the whole cache (for 16 images on
7B that is ~9 GB of memory traffic per step at the end); its StaticCache writes in place but makes every
step attend over the full preallocated length, padding included. This layer does both things right:
one buffer sized for prompt + new tokens, written in place, and attention sees only the filled prefix (a
view, no copy). Rows can be selected or repeated (cancelled requests leave, a prompt's prefill fans out to
its images) with one index_select per layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys/values in a fixed-capacity buffer; ``update`` returns the filled prefix."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        self._k = key_states.new_empty((batch, heads, self.capacity, k_dim))
        self._v = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self.length + new
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({end} tokens)")
        self._k[:, :, self.length : end].copy_(key_states)
        self._v[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys = self._k[:, :, :end]
        self.values = self._v[:, :, :end]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows ``rows``, in that order."""
        if self.is_initialized:
            self._k = self._k.index_select(0, rows)
            self._v = self._v.index_select(0, rows)
            self.keys = self._k[:, :, : self.length]
            self.values = self._v[:, :, : self.length]

    batch_select_indices = select_rows
    reorder_cache = select_rows

    def reset(self) -> None:
        self.length = 0


def preallocated_cache(num_layers: int, capacity: int) -> Cache:
    """A transformers ``Cache`` of ``num_layers`` preallocated layers holding up to ``capacity`` tokens."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


def select_cache_rows(cache: Cache, rows: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.select_rows(rows)
