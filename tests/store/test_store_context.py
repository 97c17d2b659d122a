"""Context budgeting: which turns and images reach the model, checked at the exact budget edges.

Token costs use the word counter of conftest (one token per word), a per-turn overhead of 2 and the tiny
model's per-image cost (16 + 2 markers), so every expected number below can be recomputed by hand.
The dropped-image marker "[image no longer in memory]" is 5 words.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.store import IMAGE_DROPPED_MARKER, ContextBudget, ConversationKey, ConversationScope, Store
from bot.store.context import TurnCost, plan_context
from bot.store.errors import TurnNotFound
from janus_engine.errors import InvalidRequest, PromptTooLong

MARKER_TOKENS = 5
TINY_IMAGE = 18


def budget(total: int) -> ContextBudget:
    return ContextBudget(total_tokens=total, tokens_per_image=TINY_IMAGE, tokens_per_turn=2)


async def new_conversation(store: Store, user_id: int = 1):
    key = ConversationKey.for_scope(ConversationScope.USER, guild_id=10, channel_id=20, user_id=user_id)
    return await store.resolve_conversation(key)


async def test_text_turns_exactly_at_budget_and_one_over(store: Store) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "a b c", author_id=1)  # 3 + 2 = 5
    await store.append_turn(conv.id, "assistant", "d e")  # 2 + 2 = 4
    current = await store.append_turn(conv.id, "user", "f g h i", author_id=1)  # 4 + 2 = 6

    full = await store.build_context(conv.id, budget(15))
    assert [t.text for t in full.turns] == ["a b c", "d e", "f g h i"]
    assert [t.role for t in full.turns] == ["user", "assistant", "user"]
    assert (full.token_count, full.omitted_turns) == (15, 0)

    one_short = await store.build_context(conv.id, budget(14))
    assert [t.text for t in one_short.turns] == ["d e", "f g h i"]
    assert (one_short.token_count, one_short.omitted_turns) == (10, 1)
    assert one_short.turn_ids[-1] == current.id


async def test_current_turn_exactly_fits_or_fails_with_a_typed_error(store: Store) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "older words here", author_id=1)
    await store.append_turn(conv.id, "user", "f g h i", author_id=1)  # costs 6

    alone = await store.build_context(conv.id, budget(6))
    assert [t.text for t in alone.turns] == ["f g h i"]
    assert alone.token_count == 6
    with pytest.raises(PromptTooLong) as err:
        await store.build_context(conv.id, budget(5))
    assert "6 tokens" in err.value.user_message and "5" in err.value.user_message


async def test_current_turn_images_count_in_full(store: Store, make_png) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "x", author_id=1, images=[make_png(1)])  # 1 + 2 + 18 = 21
    ctx = await store.build_context(conv.id, budget(21))
    assert ctx.turns[0].images == (make_png(1),)
    assert ctx.token_count == 21
    with pytest.raises(PromptTooLong) as err:
        await store.build_context(conv.id, budget(20))
    assert "image" in err.value.user_message


async def test_older_image_becomes_a_marker_before_its_text_goes(store: Store, make_png) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "look", author_id=1, images=[make_png(1)])  # 21, as marker 8
    await store.append_turn(conv.id, "assistant", "nice cat")  # 4
    await store.append_turn(conv.id, "user", "what color", author_id=1)  # 4

    with_image = await store.build_context(conv.id, budget(29))
    assert with_image.turns[0].images == (make_png(1),) and with_image.turns[0].text == "look"
    assert (with_image.token_count, with_image.omitted_images) == (29, 0)

    for total in (28, 16):
        marked = await store.build_context(conv.id, budget(total))
        assert marked.turns[0].images == ()
        assert marked.turns[0].text == f"{IMAGE_DROPPED_MARKER}\nlook"
        assert (marked.token_count, marked.omitted_images, marked.omitted_turns) == (16, 1, 0)

    dropped = await store.build_context(conv.id, budget(15))
    assert [t.text for t in dropped.turns] == ["nice cat", "what color"]
    assert (dropped.token_count, dropped.omitted_turns) == (8, 1)


async def test_images_give_way_oldest_first_and_before_any_text(store: Store, make_png) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "one", author_id=1, images=[make_png(1)])  # 21 / 8
    await store.append_turn(conv.id, "assistant", "two")  # 3
    await store.append_turn(conv.id, "user", "three", author_id=1, images=[make_png(2)])  # 21 / 8
    await store.append_turn(conv.id, "assistant", "four")  # 3
    await store.append_turn(conv.id, "user", "five", author_id=1)  # 3

    both = await store.build_context(conv.id, budget(51))
    assert [len(t.images) for t in both.turns] == [1, 0, 1, 0, 0] and both.token_count == 51

    newest_only = await store.build_context(conv.id, budget(38))  # 25 of text + 13 to upgrade one marker
    assert [t.images for t in newest_only.turns] == [(), (), (make_png(2),), (), ()]
    assert newest_only.turns[0].text.startswith(IMAGE_DROPPED_MARKER)
    assert newest_only.token_count == 38 and newest_only.omitted_images == 1

    text_wins = await store.build_context(conv.id, budget(37))
    assert [t.images for t in text_wins.turns] == [()] * 5
    assert len(text_wins.turns) == 5 and text_wins.token_count == 25 and text_wins.omitted_images == 2


async def test_no_holes_a_turn_that_does_not_fit_ends_the_history(store: Store) -> None:
    conv = await new_conversation(store)
    await store.append_turn(conv.id, "user", "a", author_id=1)  # 3: would fit on its own
    await store.append_turn(conv.id, "assistant", " ".join(["w"] * 10))  # 12: does not fit
    await store.append_turn(conv.id, "user", "b", author_id=1)  # 3
    ctx = await store.build_context(conv.id, budget(6))
    assert [t.text for t in ctx.turns] == ["b"]
    assert ctx.omitted_turns == 2


async def test_context_ends_at_the_given_turn(store: Store) -> None:
    conv = await new_conversation(store)
    first = await store.append_turn(conv.id, "user", "first question", author_id=1)
    await store.append_turn(conv.id, "user", "someone else later", author_id=2)
    ctx = await store.build_context(conv.id, budget(100), up_to_turn_id=first.id)
    assert [t.text for t in ctx.turns] == ["first question"]
    with pytest.raises(TurnNotFound):
        await store.build_context(conv.id, budget(100), up_to_turn_id=first.id + 1000)
    other = await new_conversation(store, user_id=2)
    with pytest.raises(TurnNotFound):  # a turn of another conversation is never pulled in
        await store.build_context(other.id, budget(100), up_to_turn_id=first.id)
    with pytest.raises(InvalidRequest):
        await store.build_context(other.id, budget(100))


async def test_long_histories_are_read_beyond_one_page(store: Store) -> None:
    conv = await new_conversation(store)
    for i in range(150):
        await store.append_turn(conv.id, "user" if i % 2 == 0 else "assistant", f"w{i}", author_id=1)
    per_turn_0 = ContextBudget(total_tokens=150, tokens_per_image=TINY_IMAGE, tokens_per_turn=0)
    everything = await store.build_context(conv.id, per_turn_0)
    assert [t.text for t in everything.turns] == [f"w{i}" for i in range(150)]
    one_less = await store.build_context(conv.id, ContextBudget(149, TINY_IMAGE, 0))
    assert one_less.turns[0].text == "w1" and one_less.omitted_turns == 1


def test_planner_image_cost_is_a_parameter() -> None:
    turns = [TurnCost(2, "user", "q", 1), TurnCost(1, "user", "img", 1, ("h",))]  # newest first
    janus = plan_context(turns, ContextBudget(total_tokens=579, tokens_per_image=578), MARKER_TOKENS)
    assert janus.turns[0].kept_images == () and janus.token_count == 1 + 1 + MARKER_TOKENS
    janus_fits = plan_context(turns, ContextBudget(total_tokens=580, tokens_per_image=578), MARKER_TOKENS)
    assert janus_fits.turns[0].kept_images == ("h",) and janus_fits.token_count == 580
    tiny = plan_context(turns, ContextBudget(total_tokens=600, tokens_per_image=18), MARKER_TOKENS)
    assert tiny.turns[0].kept_images == ("h",) and tiny.token_count == 20


def test_planner_rejects_an_empty_budget() -> None:
    with pytest.raises(PromptTooLong):
        plan_context([TurnCost(1, "user", "", 0)], ContextBudget(total_tokens=0), MARKER_TOKENS)


async def test_an_exchange_is_stored_whole_and_two_at_once_never_interleave(store: Store, make_png) -> None:
    conv = await new_conversation(store, user_id=77)
    # Two answers for the same user finish at the same moment (a user may have two jobs running).
    first, second = await asyncio.gather(
        store.append_exchange(conv.id, "what is one", "one is one", author_id=77, images=[make_png(1)]),
        store.append_exchange(conv.id, "what is two", "two is two", author_id=77, message_ids=[901]),
    )
    turns = await store.list_turns(conv.id)
    one = [("user", "what is one"), ("assistant", "one is one")]
    two = [("user", "what is two"), ("assistant", "two is two")]
    assert [(t.role, t.text) for t in turns] in (one + two, two + one)
    for question, answer in (first, second):
        assert answer.reply_to_turn_id == question.id and answer.id == question.id + 1
        assert answer.role == "assistant" and answer.author_id is None
    assert first[0].image_hashes and second[0].message_ids == (901,)
    # A conversation forgotten meanwhile: nothing of the exchange is kept, and the error says why.
    await store.forget_user(77, include_jobs=True)
    with pytest.raises(Exception, match="forgotten"):
        await store.append_exchange(conv.id, "still there?", "no", author_id=77)
