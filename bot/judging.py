"""Janus judging images with its own understanding half: the probability of "Yes" to a question.

No other bot can do this: the model that drew the picture is asked about it (one decoding step, through
the engine's fixed-answer questions, :attr:`janus_engine.protocol.UnderstandRequest.choices`). Used by
``/imagine best_of:N`` (rank N candidates by "Does this image show: <prompt>?") and by the output
moderation (a fixed question from the config, before an image is posted in a channel that is not NSFW).

The questions go to the engine one image at a time, as the user who asked: each is one step (tens of
milliseconds on a GPU), they take one queue place at a time (so a user's judging never trips their own
``max_queued_per_user``), and the fair scheduler weighs them with the user's other work.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from janus_engine.protocol import TextSampling, Turn, UnderstandRequest, UnderstandResult

if TYPE_CHECKING:
    from bot.app import JanusBot

YES_NO = ("Yes", "No")
MATCH_QUESTION = "Does this image show: {prompt}? Answer yes or no."


def match_question(prompt: str) -> str:
    return MATCH_QUESTION.format(prompt=prompt.strip())


async def yes_probabilities(
    bot: JanusBot, images: Sequence[bytes], question: str, *, user_id: int
) -> list[float]:
    """P("Yes") for each image (renormalised over Yes/No). Raises the engine's JanusError if a question
    is refused or fails; the caller decides what an unjudged image means."""
    scores = []
    for image in images:
        request = UnderstandRequest(
            f"judge-{uuid.uuid4().hex}",
            (Turn("user", question, (image,)),),
            TextSampling(temperature=0.0, max_new_tokens=1),
            choices=YES_NO,
        )
        handle = await bot.engine.submit(request, user_id=str(user_id))
        result = await handle.result()
        assert isinstance(result, UnderstandResult) and len(result.choice_probs) == 2
        scores.append(result.choice_probs[0])
    return scores
