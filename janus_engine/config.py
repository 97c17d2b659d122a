"""Engine configuration: one frozen object, built once (by the bot's config loader, the CLI or a test)
and passed down. Nothing in the engine reads environment variables or files on its own.

Each tunable is declared once, here, with its default and its bounds (:func:`setting`). The bounds live in
the field's metadata, where :class:`EngineSettings` checks them and where a reader of a config file (the
bot's ``[engine]`` table) finds them: the bot parses its table straight into :class:`EngineSettings`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, get_args

from janus_engine.devices import parse_device
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import ModelSpec

T = TypeVar("T")

# "continuous": a worker takes new jobs into its running decode (rows join and leave every step);
# "run_to_completion": a worker runs one batch to its end before the next (what every other Janus server
# does; kept as the baseline the benchmarks compare against, and as a fallback).
Batching = Literal["continuous", "run_to_completion"]

# Where the workers run: "local" = one child process per device on this machine; "ray" = one Ray actor per
# device entry, placed by Ray on any node of a cluster (janus_engine.ray_transport; `pip install .[ray]`).
Backend = Literal["local", "ray"]
# With the Ray backend Ray picks the GPU (an actor with num_gpus=1 sees only its own card), so a device
# entry says only what kind of actor to start.
RAY_DEVICES = ("cpu", "cuda")
SERVICE_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?")


def not_ray_devices(devices: tuple[str, ...]) -> list[str]:
    """The canonical device names that cannot be a Ray worker actor's (anything but cuda and cpu)."""
    return [d for d in devices if d not in RAY_DEVICES]


def setting(default: T, *, lo: float | None = None, hi: float | None = None) -> T:
    """A dataclass field whose default and bounds (inclusive, ``None`` = unbounded) are declared together.

    The bounds go in ``field.metadata`` as ``{"lo": ..., "hi": ...}`` (only those given)."""
    bounds = {name: value for name, value in (("lo", lo), ("hi", hi)) if value is not None}
    result: Any = field(default=default, metadata=bounds)
    return result  # typed as the default, so `max_queue: int = setting(64, lo=1)` reads as a plain default


def check_bounds(obj: object) -> None:
    """Every dataclass field of ``obj`` lies within the bounds its :func:`setting` declared."""
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if isinstance(value, float) and not math.isfinite(value):
            # NaN passes both comparisons below; infinity is no setting either
            raise InvalidRequest(f"Engine setting {f.name} must be a finite number (got {value}).")
        if lo is not None and value < lo:
            raise InvalidRequest(f"Engine setting {f.name} must be at least {lo} (got {value}).")
        if hi is not None and value > hi:
            raise InvalidRequest(f"Engine setting {f.name} must be at most {hi} (got {value}).")


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """The engine's operator tunables: how big the queue, how jobs are batched and when they give up.

    This is the bot's ``[engine]`` table, key for key."""

    max_queue: int = setting(64, lo=1, hi=100_000)  # QueueFull past this many queued (not running) jobs
    max_queued_per_user: int = setting(4, lo=1, hi=1000)  # UserLimitReached
    max_running_per_user: int = setting(2, lo=1, hi=1000)  # a user at this cap is skipped, not refused
    max_images_per_batch: int = setting(16, lo=1, hi=64)  # generation batch bound (sum of n_images)
    max_understand_batch: int = setting(8, lo=1, hi=64)  # understanding batch bound (requests)
    batch_window_s: float = setting(0.05, lo=0.0, hi=10.0)  # how long a fresh job waits for companions
    job_timeout_s: float = setting(
        600.0, lo=1.0, hi=86_400.0
    )  # a batch running longer fails; worker recycled
    worker_start_timeout_s: float = setting(600.0, lo=1.0, hi=86_400.0)
    # Decoding steps between preview images, applied to generate requests that ask for none (0 = none).
    preview_every: int = setting(96, lo=0, hi=10_000)
    batching: Batching = "continuous"
    # Static-shape image steps captured as CUDA graphs at worker start (CUDA devices only; ignored on CPU).
    cuda_graphs: bool = True
    backend: Backend = "local"
    # The Ray cluster to join (backend = "ray"): "" starts a Ray instance on this machine, "auto" joins the
    # cluster this machine is a node of (`ray start` ran here), "ray://head:10001" connects a client.
    ray_address: str = ""
    # "" = this bot process runs its own engine. A name = connect to the engine service of that name that
    # `janus-bot engine serve` runs on the Ray cluster at ray_address (janus_engine.service); the queue,
    # the per-user caps and the workers are then the service's, shared by every bot process.
    service: str = ""

    def __post_init__(self) -> None:
        check_bounds(self)
        for name, allowed in (("batching", get_args(Batching)), ("backend", get_args(Backend))):
            value = getattr(self, name)
            if value not in allowed:
                choices = ", ".join(repr(c) for c in allowed)
                raise InvalidRequest(f"Engine setting {name} must be one of {choices} (got {value!r}).")
        if not isinstance(self.ray_address, str) or len(self.ray_address) > 500 or "\n" in self.ray_address:
            raise InvalidRequest("Engine setting ray_address must be one line of text (a Ray address).")
        if not isinstance(self.service, str) or not SERVICE_NAME.fullmatch(self.service):
            raise InvalidRequest(
                "Engine setting service must be empty or a name of up to 64 letters, digits, '.', '_' "
                f"and '-' (got {self.service!r})."
            )


@dataclass(frozen=True, kw_only=True)
class EngineConfig(EngineSettings):
    """The settings plus what to run them on: the model and one worker process per device.

    ``model.device`` is ignored: ``devices`` decides, one worker process per entry ("cuda:0", "cuda:1",
    "cpu", "mps", or "auto" = cuda when the worker sees a GPU, else cpu). A name of another form is refused
    here, when the config is built (:func:`janus_engine.devices.parse_device`); whether the device exists
    in the workers' torch is checked by each worker before it loads the model.
    """

    model: ModelSpec
    devices: tuple[str, ...] = ("cpu",)
    restart_backoff_max_s: float = setting(30.0, lo=0.0)  # cap of the delay between failed worker restarts
    # Testing / benchmark aid: the worker sleeps this long once per decoding step, so that "mid-job"
    # and "timeout" are deterministic with a tiny model whose whole job takes milliseconds.
    step_delay_s: float = setting(0.0, lo=0.0)

    def __post_init__(self) -> None:
        if not self.devices:
            raise InvalidRequest("The engine needs at least one device.")
        object.__setattr__(self, "devices", tuple(parse_device(d) for d in self.devices))
        super().__post_init__()
        if self.backend == "ray":
            wrong = not_ray_devices(self.devices)
            if wrong:
                raise InvalidRequest(
                    f'With backend = "ray" each device is "cuda" (an actor on one GPU that Ray picks) or '
                    f'"cpu"; got {", ".join(map(repr, wrong))}.'
                )

    @classmethod
    def from_settings(
        cls, settings: EngineSettings, *, model: ModelSpec, devices: tuple[str, ...]
    ) -> EngineConfig:
        """An engine config that runs ``settings`` on ``model`` with one worker per device."""
        tunables = {f.name: getattr(settings, f.name) for f in fields(EngineSettings)}
        return cls(model=model, devices=devices, **tunables)

    @property
    def settings(self) -> EngineSettings:
        """The tunables alone (what the bot's ``[engine]`` table holds)."""
        return EngineSettings(**{f.name: getattr(self, f.name) for f in fields(EngineSettings)})
