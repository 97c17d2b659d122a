"""Fitting a conversation into the model's context: which turns and which images go in.

Pure planning over token counts, separate from SQL so that the budget rules are easy to read and test.
The rules, in order of priority:

1. The current turn (the newest one given) always goes in whole, images included, or the request fails
   with ``PromptTooLong``: answering a message without the message itself would be wrong.
2. Older turns go in newest first and never split: a turn's text is in whole or the turn is out, and
   once one turn is out every older one is out too (no holes in the conversation).
3. Images of older turns give way before text: first as many turns as fit are chosen counting each of
   their images as a short marker, then the images are put back, newest first, while they fit. An image
   that does not fit is replaced by ``IMAGE_DROPPED_MARKER`` in its turn's text.

Costs are additive: a turn costs ``tokens_per_turn`` + its stored text count + ``tokens_per_image`` for each
kept image + the marker's count for each dropped one. ``token_count`` of the result is that sum and is
never above ``total_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.store.records import IMAGE_DROPPED_MARKER, ContextBudget
from janus_engine.errors import InvalidRequest, PromptTooLong


@dataclass(frozen=True)
class TurnCost:
    """What the planner needs to know of a stored turn."""

    id: int
    role: str
    text: str
    token_count: int
    image_hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedTurn:
    turn: TurnCost
    kept_images: tuple[str, ...]
    dropped_images: int

    @property
    def text(self) -> str:
        """The turn's text with one marker per dropped image in front, where the images were."""
        return "\n".join(
            [IMAGE_DROPPED_MARKER] * self.dropped_images + ([self.turn.text] if self.turn.text else [])
        )


@dataclass(frozen=True)
class ContextPlan:
    turns: tuple[PlannedTurn, ...]  # oldest first
    token_count: int
    omitted_turns: int  # of the older turns given, those left out
    omitted_images: int

    @property
    def used_all_given(self) -> bool:
        """True when every turn given went in: older turns not given yet might fit too."""
        return self.omitted_turns == 0


def plan_context(newest_first: Sequence[TurnCost], budget: ContextBudget, marker_tokens: int) -> ContextPlan:
    """Choose turns and images of ``newest_first`` (the current turn first) that fit ``budget``."""
    if not newest_first:
        raise InvalidRequest("There is nothing in this conversation to answer yet.")
    if budget.total_tokens <= 0:
        raise PromptTooLong("The reply length leaves no room for the conversation; ask for a shorter reply.")
    current, older = newest_first[0], newest_first[1:]
    current_cost = (
        budget.tokens_per_turn + current.token_count + len(current.image_hashes) * budget.tokens_per_image
    )
    if current_cost > budget.total_tokens:
        raise PromptTooLong(_too_long_message(current, current_cost, budget))

    # Phase 1: as many older turns as fit with every image counted as a marker.
    used = current_cost
    chosen: list[TurnCost] = []
    for turn in older:
        cost = budget.tokens_per_turn + turn.token_count + len(turn.image_hashes) * marker_tokens
        if used + cost > budget.total_tokens:
            break
        used += cost
        chosen.append(turn)

    # Phase 2: put images back, newest turn first, while they fit. Every image costs the same, so the
    # first one that does not fit means none older does.
    upgrade = budget.tokens_per_image - marker_tokens
    planned_newest_first: list[PlannedTurn] = []
    room = True
    omitted_images = 0
    for turn in chosen:
        kept: list[str] = []
        for sha in turn.image_hashes:
            if room and used + upgrade <= budget.total_tokens:
                used += upgrade
                kept.append(sha)
            else:
                room = False
        dropped = len(turn.image_hashes) - len(kept)
        omitted_images += dropped
        planned_newest_first.append(PlannedTurn(turn, tuple(kept), dropped))

    planned = [*reversed(planned_newest_first), PlannedTurn(current, current.image_hashes, 0)]
    return ContextPlan(
        turns=tuple(planned),
        token_count=used,
        omitted_turns=len(older) - len(chosen),
        omitted_images=omitted_images,
    )


def _too_long_message(current: TurnCost, cost: int, budget: ContextBudget) -> str:
    images = len(current.image_hashes)
    what = "Your message" + (f" and its {images} image{'s' if images != 1 else ''}" if images else "")
    fewer = " or send fewer images" if images else ""
    return (
        f"{what} need{'s' if not images else ''} about {cost} tokens, but only {budget.total_tokens} fit in "
        f"the model's context. Please shorten it{fewer}."
    )
