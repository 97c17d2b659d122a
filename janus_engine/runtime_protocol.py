"""The contract the worker process drives: what a model runtime must offer (pattern: LitServe's LitAPI).

:class:`janus_engine.runtime.JanusRuntime` is the real one; tests drive the worker loop with stand-ins
that satisfy the same Protocol. This module imports no torch, so the front (which imports
:mod:`janus_engine.worker` to name the spawn target) stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from janus_engine.protocol import GenerateRequest, GenerateResult, UnderstandRequest, UnderstandResult

OnProgress = Callable[[str, int, int], None]  # (job id, step, total steps)
OnPreview = Callable[[str, int, bytes], None]  # (job id, step, PNG of the partial image)
OnText = Callable[[str, str], None]  # (job id, text delta)
ShouldCancel = Callable[[str], bool]  # asked once per job and decoding step


class Runtime(Protocol):
    """A loaded model as the worker uses it. Each call runs a whole batch; a None result = cancelled."""

    device: str
    dtype_name: str
    num_image_tokens: int

    def validate(self, request: GenerateRequest | UnderstandRequest) -> None:
        """Every check a request gets before it runs (token limits included); raises JanusError types."""
        ...

    def generate(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: OnProgress | None = None,
        on_preview: OnPreview | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> list[GenerateResult | None]: ...

    def generate_tokens(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: OnProgress | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> object:
        """Image tokens only (no decoding): what the warm-up times."""
        ...

    def understand(
        self,
        requests: Sequence[UnderstandRequest],
        on_text: OnText | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> list[UnderstandResult | None]: ...
