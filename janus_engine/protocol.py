"""The plain data that crosses the boundary between the bot, the engine front and the worker processes.

Everything here is a frozen dataclass of ids, strings, numbers and bytes, so it pickles cheaply and
never drags torch, PIL or Discord objects across a process boundary. Images travel as PNG bytes that
have already been decoded and validated by :mod:`janus_engine.images`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant"]

# Limits shared by the front (cheap validation before queueing) and the runtime.
MIN_IMAGES_PER_REQUEST = 1
MAX_IMAGES_PER_REQUEST = 16
MAX_PROMPT_CHARS = 4000
# Declared once here; the bot's config, the CLI and the hub helpers take them from this module.
DEFAULT_MODEL = "deepseek-community/Janus-Pro-7B"
DEFAULT_QUESTION = "Describe this image in detail."


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how.

    ``model`` is a hub id (``deepseek-community/Janus-Pro-7B``) or a local directory. ``dtype`` "auto"
    means bf16 on CUDA and fp32 on CPU. ``attn_implementation`` None lets transformers choose (sdpa).
    """

    model: str = DEFAULT_MODEL
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    local_files_only: bool = False
    cache_dir: str | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation: text plus zero or more images (PNG bytes, already validated)."""

    role: Role
    text: str
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class TextSampling:
    """Sampling options for understanding. temperature 0 means greedy decoding."""

    temperature: float = 0.1
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int | None = None


@dataclass(frozen=True)
class UnderstandRequest:
    """Answer the last user turn of ``turns`` (an understanding / chat request)."""

    request_id: str
    turns: tuple[Turn, ...]
    sampling: TextSampling = field(default_factory=TextSampling)
    # The conversation this turn belongs to (the bot's conversation id): the worker keeps the image
    # features of a conversation's earlier turns under it, and forgets them when the engine is told to.
    conversation_id: str | None = None
    # A question with fixed answers ("Yes", "No"): no answer is generated; the result's choice_probs say
    # how likely the model's answer starts with each choice (its first token's probability, renormalised
    # over the choices), and its text is the likeliest choice. One decoding step: the model judging an
    # image (best-of-N ranking, output moderation).
    choices: tuple[str, ...] = ()
    # The assistant's system prompt for this answer (a server's persona); "" = the model's default.
    system_prompt: str = ""


@dataclass(frozen=True)
class GenerateRequest:
    """Generate ``n_images`` images for one prompt with classifier-free guidance.

    temperature 0 means greedy decoding (used by the equivalence tests; real use samples at 1.0).
    ``seed`` makes a sampled request reproducible whether it runs alone or inside a batch.
    ``negative_prompt`` (optional) is what the image should not look like: it takes the place of
    DeepSeek's unconditional prompt (all pads) in the guidance pair, so guidance pushes away from it.
    """

    request_id: str
    prompt: str
    n_images: int = 1
    guidance: float = 5.0
    temperature: float = 1.0
    seed: int | None = None
    preview_every: int = 0  # 0 = no previews; K = decode the rows generated so far every K steps
    negative_prompt: str = ""  # "" = DeepSeek's unconditional prompt


@dataclass(frozen=True)
class UnderstandResult:
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    choice_probs: tuple[float, ...] = ()  # one per request choice, summing to 1 (choices only)


@dataclass(frozen=True)
class GenerateResult:
    request_id: str
    images: tuple[bytes, ...]  # PNG bytes, one per image
    seed: int | None
    steps: int


# ---- Events a job's stream yields (engine front -> caller) --------------------------------------------


@dataclass(frozen=True)
class Queued:
    """The job waits: ``position`` is 1-based in the fair order; ``eta_s`` is None while unknown."""

    job_id: str
    position: int
    eta_s: float | None


@dataclass(frozen=True)
class Started:
    job_id: str
    worker: str
    eta_s: float | None = None


@dataclass(frozen=True)
class Progress:
    """One decoding step done. ``preview`` holds PNG bytes (one grid of the rows so far) on preview steps."""

    job_id: str
    step: int
    total: int
    preview: bytes | None = None


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed understanding text (append to what came before)."""

    job_id: str
    text: str


@dataclass(frozen=True)
class Done:
    job_id: str
    result: GenerateResult | UnderstandResult


@dataclass(frozen=True)
class Failed:
    """The job ended without a result. ``reason`` is readable by a user; ``kind`` names the error class."""

    job_id: str
    reason: str
    kind: str = "JobFailed"


@dataclass(frozen=True)
class Cancelled:
    job_id: str


JobEvent = Queued | Started | Progress | TextDelta | Done | Failed | Cancelled
TERMINAL_EVENTS = (Done, Failed, Cancelled)
