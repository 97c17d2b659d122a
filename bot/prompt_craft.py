"""Prompt enhancement: Janus rewrites a short /imagine prompt into a detailed one before drawing it.

The rewrite is an ordinary understanding job (greedy, so the same prompt gives the same rewrite), asked
as the user. Its answer is cleaned (control characters, quotes, a "Prompt:" label, line breaks), cut to
the configured prompt length at a word boundary, and then checked like any typed prompt: the blocked and
NSFW patterns apply to what will actually be drawn. The job keeps the original beside the new prompt
(``enhanced_from``), shows both, and Re-roll reuses the rewrite instead of asking again.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from bot.errors import Refusal
from janus_engine.protocol import TextSampling, Turn, UnderstandRequest, UnderstandResult
from janus_engine.text import strip_control

if TYPE_CHECKING:
    from bot.app import JanusBot

ENHANCE_QUESTION = (
    "Rewrite this image prompt as one detailed, vivid description for an image generator: the subject, "
    "the setting, the style, the lighting and the colours. Answer with the new prompt only, in one "
    "sentence.\n\nPrompt: {prompt}"
)
ENHANCE_TOKENS = 120
_LABEL = re.compile(r"^\s*(new\s+)?prompt\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str, max_chars: int) -> str:
    """The model's answer as a prompt: one line, no label, no wrapping quotes, at most ``max_chars``."""
    text = " ".join(strip_control(text).split())
    text = _LABEL.sub("", text).strip().strip("\"'“”‘’").strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return text


async def enhance_prompt(bot: JanusBot, prompt: str, *, user_id: int) -> str:
    """Janus' detailed version of ``prompt``; Refusal if it gave nothing usable."""
    request = UnderstandRequest(
        f"enhance-{uuid.uuid4().hex}",
        (Turn("user", ENHANCE_QUESTION.format(prompt=prompt)),),
        TextSampling(temperature=0.0, max_new_tokens=ENHANCE_TOKENS),
    )
    result = await (await bot.engine.submit(request, user_id=str(user_id))).result()
    assert isinstance(result, UnderstandResult)
    rewrite = clean_rewrite(result.text, bot.config.generation.max_prompt_chars)
    if len(rewrite) < 3:
        raise Refusal("Janus could not improve this prompt; try again without enhance.")
    return rewrite


IMAGE_PROMPT_QUESTION = (
    "Write one prompt an image generator could use to draw this picture: the subject, the setting and "
    "the style, in one sentence. Answer with the prompt only."
)
CANDIDATES = 4


async def prompts_for_image(bot: JanusBot, image: bytes, *, user_id: int, n: int = CANDIDATES) -> list[str]:
    """Up to ``n`` different prompts Janus proposes for ``image`` (Midjourney's /describe): the same
    question sampled with ``n`` seeds, cleaned like a rewrite, duplicates dropped."""
    found: list[str] = []
    for seed in range(1, n + 1):
        request = UnderstandRequest(
            f"prompts-{uuid.uuid4().hex}",
            (Turn("user", IMAGE_PROMPT_QUESTION, (image,)),),
            TextSampling(temperature=0.9, top_p=0.95, max_new_tokens=ENHANCE_TOKENS, seed=seed),
        )
        result = await (await bot.engine.submit(request, user_id=str(user_id))).result()
        assert isinstance(result, UnderstandResult)
        text = clean_rewrite(result.text, bot.config.generation.max_prompt_chars)
        if len(text) >= 3 and text.casefold() not in {f.casefold() for f in found}:
            found.append(text)
    if not found:
        raise Refusal("Janus could not put this image into words; try /describe without prompts.")
    return found
