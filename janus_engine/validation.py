"""Cheap request checks, run by the engine front before a job is queued (no torch, no tokenizer).

Catching bad parameters here means a user hears about them at once, not after waiting in the queue, and
a bad request never reaches a batch it could fail. The runtime repeats the checks that need the tokenizer
(token counts against the context) when the request is prepared.

Validation happens three times on purpose; do not remove one: the bot's cog (friendly messages, the
configured bounds), the engine front here (protects the library from any caller), and the worker (screens
each batch so one bad request fails alone).
"""

from __future__ import annotations

import math

from janus_engine.errors import InvalidRequest, PromptTooLong
from janus_engine.protocol import (
    MAX_IMAGES_PER_REQUEST,
    MAX_PROMPT_CHARS,
    MIN_IMAGES_PER_REQUEST,
    GenerateRequest,
    UnderstandRequest,
)

MAX_GUIDANCE = 20.0
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**63 - 1
MAX_PREVIEW_EVERY = 10_000
MAX_NEW_TOKENS = 4096
MAX_IMAGES_PER_CONVERSATION = 6  # each image costs 578 tokens of Janus-Pro's 4096-token context
MAX_CONVERSATION_CHARS = 60_000
MAX_CHOICES = 8
MAX_SYSTEM_PROMPT_CHARS = 2000


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _check_seed(seed: object) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"The seed must be a whole number from 0 to {MAX_SEED}.")


def _check_temperature(temperature: object) -> None:
    t = _number(temperature)
    if t is None or not 0.0 <= t <= MAX_TEMPERATURE:
        raise InvalidRequest(f"Temperature must be between 0 and {MAX_TEMPERATURE:g} (0 means greedy).")


def validate_generate_request(req: GenerateRequest) -> None:
    """Raise InvalidRequest / PromptTooLong if ``req`` cannot be run; return None if it can."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InvalidRequest("The prompt is empty: describe the image you want.")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise PromptTooLong(
            f"The prompt is {len(req.prompt)} characters long; the limit is {MAX_PROMPT_CHARS}."
        )
    if not isinstance(req.negative_prompt, str):
        raise InvalidRequest("The negative prompt must be text.")
    if len(req.negative_prompt) > MAX_PROMPT_CHARS:
        raise PromptTooLong(
            f"The negative prompt is {len(req.negative_prompt)} characters long; the limit is "
            f"{MAX_PROMPT_CHARS}."
        )
    n = req.n_images
    whole = isinstance(n, int) and not isinstance(n, bool)
    if not whole or not MIN_IMAGES_PER_REQUEST <= n <= MAX_IMAGES_PER_REQUEST:
        raise InvalidRequest(
            f"The number of images must be from {MIN_IMAGES_PER_REQUEST} to {MAX_IMAGES_PER_REQUEST}."
        )
    g = _number(req.guidance)
    if g is None or not 1.0 < g <= MAX_GUIDANCE:
        raise InvalidRequest(f"Guidance must be above 1 and at most {MAX_GUIDANCE:g} (5 is a good start).")
    _check_temperature(req.temperature)
    _check_seed(req.seed)
    k = req.preview_every
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_PREVIEW_EVERY:
        raise InvalidRequest("preview_every must be a whole number of steps, 0 for no previews.")


def validate_understand_request(req: UnderstandRequest) -> None:
    """Raise InvalidRequest / PromptTooLong if ``req`` cannot be run; return None if it can."""
    turns = req.turns
    if not turns:
        raise InvalidRequest("There is nothing to answer: the conversation is empty.")
    if turns[-1].role != "user":
        raise InvalidRequest("The conversation must end with a user message.")
    chars = 0
    images = 0
    for turn in turns:
        if turn.role not in ("user", "assistant"):
            raise InvalidRequest(f"Unknown conversation role {turn.role!r}.")
        if not isinstance(turn.text, str):
            raise InvalidRequest("Every message must be text.")
        if turn.role == "assistant" and turn.images:
            raise InvalidRequest("Assistant messages cannot carry images.")
        if any(not isinstance(im, bytes | bytearray) or not im for im in turn.images):
            raise InvalidRequest("An attached image is empty or not image data.")
        chars += len(turn.text)
        images += len(turn.images)
    last = turns[-1]
    if not last.text.strip() and not last.images:
        raise InvalidRequest("The message is empty: ask something or attach an image.")
    if images > MAX_IMAGES_PER_CONVERSATION:
        raise PromptTooLong(
            f"The conversation holds {images} images; "
            f"at most {MAX_IMAGES_PER_CONVERSATION} fit the model's context."
        )
    if chars > MAX_CONVERSATION_CHARS:
        raise PromptTooLong(
            f"The conversation is {chars} characters long; the limit is {MAX_CONVERSATION_CHARS}."
        )
    if not isinstance(req.system_prompt, str) or len(req.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise InvalidRequest(
            f"The system prompt must be text of at most {MAX_SYSTEM_PROMPT_CHARS} characters."
        )
    choices = req.choices
    if not isinstance(choices, tuple) or (choices and not 2 <= len(choices) <= MAX_CHOICES):
        raise InvalidRequest(f"A question with fixed answers needs 2 to {MAX_CHOICES} choices.")
    if any(not isinstance(c, str) or not c.strip() or len(c) > 40 for c in choices):
        raise InvalidRequest("Each choice must be a short non-empty text (at most 40 characters).")
    s = req.sampling
    _check_temperature(s.temperature)
    p = _number(s.top_p)
    if p is None or not 0.0 < p <= 1.0:
        raise InvalidRequest("top_p must be above 0 and at most 1.")
    m = s.max_new_tokens
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_NEW_TOKENS:
        raise InvalidRequest(f"max_new_tokens must be from 1 to {MAX_NEW_TOKENS}.")
    _check_seed(s.seed)
