"""A worker's two continuous decoders and the conversions between protocol requests and their rows.

The worker loop (:mod:`janus_engine.worker_loop`, torch-free) drives one :class:`DecodeSession`: it admits
requests when rows are free, calls :meth:`DecodeSession.step_images` and :meth:`DecodeSession.step_texts`
in turn (so chat never waits for an image batch to end), and hands finished image tokens and due previews
to :meth:`DecodeSession.decode_pixels` in ONE batched VQ call per step. PNG encoding (:func:`png_jobs`)
runs on the loop's thread pool, never between two decode steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from janus_engine.images import compose_grid, encode_png
from janus_engine.protocol import (
    GenerateRequest,
    TextSampling,
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.runtime.continuous_images import ImageDecoder, StepReport
from janus_engine.runtime.continuous_text import TextDecoder, TextStepReport
from janus_engine.runtime.generation import ImageTokenJob
from janus_engine.runtime.image_features import ImageFeatureCache
from janus_engine.runtime.static_step import capture_graphs
from janus_engine.runtime.understanding import TextOutput

log = logging.getLogger(__name__)

_PREVIEW_GREY = 128


@dataclass(frozen=True)
class PixelBatch:
    """The pixels of one step's VQ call, cut back per request: finished images and previews."""

    finished: dict[str, np.ndarray]  # key -> (n_images, H, W, 3) uint8
    previews: dict[str, np.ndarray]  # key -> (n_images, H, W, 3) uint8, grey below the rows done


class DecodeSession:
    """The continuous image and text decoders of one :class:`~janus_engine.runtime.JanusRuntime`."""

    def __init__(
        self,
        runtime,
        *,
        max_images: int,
        max_texts: int,
        static: bool = False,
        cuda_graphs: bool = False,
        feature_cache: ImageFeatureCache | None = None,
    ) -> None:
        self.runtime = runtime
        self.cuda_graphs = cuda_graphs
        self.features = feature_cache if feature_cache is not None else ImageFeatureCache()
        self.images = ImageDecoder(
            runtime.model,
            runtime.special,
            num_image_tokens=runtime.num_image_tokens,
            max_pairs=max_images,
            static=static,
        )
        self.texts = TextDecoder(
            runtime.model,
            runtime.processor,
            eos_id=runtime.eos_id,
            max_rows=max_texts,
            feature_cache=self.features,
        )
        self.jobs: dict[str, ImageTokenJob] = {}  # live image jobs, for their seeds and previews

    # ---- capacity ----------------------------------------------------------------------------------

    @property
    def free_images(self) -> int:
        return self.images.free_pairs

    @property
    def free_texts(self) -> int:
        return self.texts.free_rows

    @property
    def images_in_use(self) -> int:
        return self.images.pairs_in_use

    # ---- joining -----------------------------------------------------------------------------------

    def prepare_generate(self, request: GenerateRequest) -> ImageTokenJob:
        """Validate one request and make its job (raises the runtime's typed errors)."""
        return self.runtime.prepare_generate(request)

    def admit_images(self, jobs: Sequence[ImageTokenJob]) -> None:
        """Prefill ``jobs`` together; their rows take part from the next image step."""
        self.images.admit(jobs)
        self.jobs.update({job.key: job for job in jobs})

    def prepare_understand(self, request: UnderstandRequest):
        return self.runtime.prepare_understand(request)

    def admit_texts(self, jobs: Sequence) -> None:
        self.texts.admit(jobs)

    def drop(self, keys: set[str]) -> None:
        """Cancelled requests leave both decoders (unknown keys are ignored)."""
        self.images.drop(keys)
        self.texts.drop(keys)
        for key in keys:
            self.jobs.pop(key, None)

    def reset(self) -> None:
        """Forget every live request (a step failed); the feature cache stays."""
        self.images.reset()
        self.texts.reset()
        self.jobs.clear()

    def forget(self, conversation_ids: Sequence[str]) -> int:
        """/forget: drop the cached image features only these conversations used."""
        return sum(self.features.forget(c) for c in conversation_ids)

    # ---- stepping ----------------------------------------------------------------------------------

    def step_images(self, preview_due: Callable[[str, int], bool] | None = None) -> StepReport:
        return self.images.step(preview_due)

    def warm_up(self) -> dict[str, float]:
        """Run a few steps of both decoders (buffers, kernels, allocator) and, in static mode on CUDA,
        capture the step of every bucket: all before the worker says Ready, never in a user's wait.
        Returns what it timed (seconds), for the start-up log."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        warm = GenerateRequest(request_id="warmup-continuous", prompt="a warm-up", seed=0)
        self.admit_images([self.prepare_generate(warm)])
        for _ in range(3):
            self.images.step()
        self.images.reset()
        chat = UnderstandRequest(
            request_id="warmup-chat", turns=(Turn("user", "hello"),), sampling=TextSampling(max_new_tokens=3)
        )
        self.admit_texts([self.prepare_understand(chat)])
        while self.texts:
            self.texts.step()
        self.jobs.clear()
        timings["warm_up_s"] = time.perf_counter() - started
        mode = "static shapes" if self.images.static else "eager"
        log.info("continuous decoders warmed up in %.2f s (image step: %s)", timings["warm_up_s"], mode)
        if self.cuda_graphs and self.images.static:
            captured = capture_graphs(self.images)
            if captured:
                timings["graph_capture_s"] = sum(captured.values())
                log.info(
                    "captured CUDA graphs of the image step for %d buckets (%s rows) in %.1f s",
                    len(captured),
                    ", ".join(str(r) for r in sorted(captured)),
                    timings["graph_capture_s"],
                )
        return timings

    def step_texts(self) -> TextStepReport:
        return self.texts.step()

    def text_result(self, key: str, output: TextOutput) -> UnderstandResult:
        text = (
            output.choice
            or self.runtime.processor.tokenizer.decode(output.tokens, skip_special_tokens=True).strip()
        )
        return UnderstandResult(
            request_id=key,
            text=text,
            prompt_tokens=output.prompt_tokens,
            completion_tokens=len(output.tokens),
            choice_probs=output.choice_probs,
        )

    def seed_of(self, key: str) -> int | None:
        job = self.jobs.get(key)
        return job.seed if job is not None else None

    def finish(self, key: str) -> None:
        self.jobs.pop(key, None)

    @torch.inference_mode()
    def decode_pixels(
        self, finished: dict[str, torch.Tensor], previews: dict[str, torch.Tensor]
    ) -> PixelBatch:
        """Every finished image and every due preview of a step through the VQ decoder at once."""
        total = self.runtime.num_image_tokens
        parts: list[tuple[str, str, torch.Tensor, int]] = []  # (which, key, full tokens, done)
        for key, tokens in finished.items():
            parts.append(("finished", key, tokens, total))
        for key, partial in previews.items():
            n, done = partial.shape
            filled = partial[:, -1:].expand(n, total).clone()
            filled[:, :done] = partial
            parts.append(("preview", key, filled, done))
        if not parts:
            return PixelBatch({}, {})
        pixels = self.runtime.decode_pixels(torch.cat([p[2] for p in parts]))
        out: dict[str, dict[str, np.ndarray]] = {"finished": {}, "preview": {}}
        start = 0
        side = self.runtime.grid_side
        for which, key, tokens, done in parts:
            chunk = pixels[start : start + tokens.shape[0]]
            start += tokens.shape[0]
            if which == "preview":
                rows_done = -(-done // side)  # a partly generated token row is shown
                chunk = chunk.copy()
                chunk[:, rows_done * chunk.shape[1] // side :] = _PREVIEW_GREY
            out[which][key] = chunk
        return PixelBatch(out["finished"], out["preview"])


def encode_images(pixels: np.ndarray) -> tuple[bytes, ...]:
    """PNG bytes per image (runs on the worker's encoding threads: PIL's encoder releases the GIL)."""
    return tuple(encode_png(Image.fromarray(p)) for p in pixels)


def encode_preview(pixels: np.ndarray) -> bytes:
    """One PNG grid of a request's partial images."""
    return compose_grid(list(encode_images(pixels)))
