"""The image decoder's static-shape step, captured as CUDA graphs (or compiled) once per bucket.

For 7B an eager decode step launches ~1,100 kernels; at 16 image pairs the GPU needs ~3.7 ms (H100) to
read the weights and the cache, and the launches alone cost about as much again. The static mode of
:class:`~janus_engine.runtime.continuous_images.ImageDecoder` runs every step over a fixed bucket of rows
and the whole cache width, reading only its own buffers, so each bucket's step can be recorded once as a
CUDA graph and replayed with one launch.

:func:`capture_graphs` records every bucket up to the decoder's size at worker start (the warm-up, before
the worker says Ready, so no user waits for it) and installs the replay as the decoder's
``graph_runner``; a capture that fails leaves the decoder on its static eager step, with a warning.
:func:`compile_step` does the same with ``torch.compile`` (any backend): what the CPU tests use to check
that the step compiles and gives the same tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from janus_engine.runtime.continuous_images import ImageDecoder

log = logging.getLogger(__name__)

_WARMUP_REPLAYS = 2  # eager runs before a capture: lazy inits and cuBLAS workspaces happen outside it


class GraphRunner:
    """Replays the captured step of a bucket; each graph writes its logits into its own static tensor."""

    def __init__(self) -> None:
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def __call__(self, rows: int) -> torch.Tensor:
        graph, logits = self.graphs[rows]
        graph.replay()
        return logits


def buckets_for(decoder: ImageDecoder) -> list[int]:
    """Row counts the decoder's static steps use (2 rows per image pair)."""
    return [2 * b for b in decoder.buckets]


@torch.inference_mode()
def capture_graphs(decoder: ImageDecoder) -> dict[int, float]:
    """Capture one CUDA graph per bucket; returns seconds each capture took (empty if not captured)."""
    if not decoder.static or decoder.device.type != "cuda":
        return {}
    decoder.prepare_static()
    runner = GraphRunner()
    pool = torch.cuda.graph_pool_handle()
    seconds: dict[int, float] = {}
    stream = torch.cuda.Stream(device=decoder.device)
    stream.wait_stream(torch.cuda.current_stream(decoder.device))
    try:
        for rows in sorted(buckets_for(decoder), reverse=True):  # largest first: the pool fits the rest
            start = time.perf_counter()
            with torch.cuda.stream(stream):
                for _ in range(_WARMUP_REPLAYS):
                    decoder.forward_rows(rows)
            torch.cuda.current_stream(decoder.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = decoder.forward_rows(rows)
            runner.graphs[rows] = (graph, logits)
            torch.cuda.synchronize(decoder.device)
            seconds[rows] = time.perf_counter() - start
    except Exception:
        log.warning("CUDA graph capture failed; image steps run eagerly (static shapes)", exc_info=True)
        return {}
    decoder.graph_runner = runner
    return seconds


def compile_step(decoder: ImageDecoder, *, backend: str = "inductor") -> Callable[[int], torch.Tensor]:
    """``torch.compile`` the decoder's static step (one graph per bucket, no dynamic shapes) and install
    it as the decoder's runner. On CUDA prefer :func:`capture_graphs`: same idea, no compiler needed."""
    decoder.prepare_static()
    compiled = torch.compile(decoder.forward_rows, backend=backend, dynamic=False, fullgraph=False)

    def run(rows: int) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(rows)

    decoder.graph_runner = run
    return run
