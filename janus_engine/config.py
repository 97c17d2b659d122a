"""Engine configuration: one frozen object, built once (by the bot's config loader, the CLI or a test)
and passed down. Nothing in the engine reads environment variables or files on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from janus_engine.errors import InvalidRequest
from janus_engine.protocol import ModelSpec


@dataclass(frozen=True)
class EngineConfig:
    """How many workers, how big the queue, how jobs are batched and when they give up.

    ``model.device`` is ignored: ``devices`` decides, one worker process per entry ("cuda:0", "cuda:1",
    "cpu", or "auto" = cuda when the worker sees a GPU, else cpu).
    """

    model: ModelSpec
    devices: tuple[str, ...] = ("cpu",)
    max_queue: int = 64  # QueueFull past this many queued (not yet running) jobs: backpressure
    max_queued_per_user: int = 4  # UserLimitReached
    max_running_per_user: int = 2  # a user at this cap is skipped by the dispatcher, not refused
    max_images_per_batch: int = 16  # generation batch bound (sum of n_images)
    max_understand_batch: int = 8  # understanding batch bound (requests)
    batch_window_s: float = 0.05  # how long a fresh job waits for companions before it is dispatched
    job_timeout_s: float = 600.0  # a batch running longer fails and its worker is recycled
    worker_start_timeout_s: float = 600.0
    preview_every: int = 0  # applied to generate requests that ask for none (0 = no previews)
    restart_backoff_max_s: float = 30.0  # cap of the delay between failed worker restarts
    # Testing / benchmark aid: the worker sleeps this long once per decoding step, so that "mid-job"
    # and "timeout" are deterministic with a tiny model whose whole job takes milliseconds.
    step_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.devices:
            raise InvalidRequest("The engine needs at least one device.")
        positive_ints = {
            "max_queue": self.max_queue,
            "max_queued_per_user": self.max_queued_per_user,
            "max_running_per_user": self.max_running_per_user,
            "max_images_per_batch": self.max_images_per_batch,
            "max_understand_batch": self.max_understand_batch,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise InvalidRequest(f"Engine setting {name} must be at least 1 (got {value}).")
        for name, value in {
            "batch_window_s": self.batch_window_s,
            "step_delay_s": self.step_delay_s,
            "preview_every": self.preview_every,
        }.items():
            if value < 0:
                raise InvalidRequest(f"Engine setting {name} must not be negative (got {value}).")
        if self.job_timeout_s <= 0 or self.worker_start_timeout_s <= 0:
            raise InvalidRequest("Engine timeouts must be positive.")
