"""The fair queue's rules on their own: admission limits, round-robin order, batch picking."""

from __future__ import annotations

import pytest

from janus_engine.errors import InvalidRequest, QueueFull, UserLimitReached
from janus_engine.protocol import GenerateRequest, Turn, UnderstandRequest
from janus_engine.scheduler import FairScheduler, QueuedJob


def gen(job_id: str, user: str, n: int = 1, at: float = 0.0) -> QueuedJob:
    return QueuedJob(job_id, user, GenerateRequest(request_id=job_id, prompt="a cat", n_images=n), at)


def chat(job_id: str, user: str, at: float = 0.0) -> QueuedJob:
    request = UnderstandRequest(request_id=job_id, turns=(Turn("user", "hello"),))
    return QueuedJob(job_id, user, request, at)


def make(max_queue: int = 64, per_user: int = 10, running: int = 10) -> FairScheduler:
    return FairScheduler(max_queue=max_queue, max_queued_per_user=per_user, max_running_per_user=running)


def ids(jobs: list[QueuedJob]) -> list[str]:
    return [job.job_id for job in jobs]


def test_one_users_many_jobs_do_not_starve_anothers_one() -> None:
    s = make()
    for i in range(1, 6):
        s.add(gen(f"a{i}", "alice"))
    s.add(gen("b1", "bob"))
    # Alice came first, so she starts; Bob's only job is next, not after all of Alice's.
    assert ids(s.fair_order()) == ["a1", "b1", "a2", "a3", "a4", "a5"]
    assert s.position("b1") == 2
    assert ids(s.next_batch(max_images=1, max_understand=1)) == ["a1"]
    assert ids(s.next_batch(max_images=1, max_understand=1)) == ["b1"]
    assert ids(s.next_batch(max_images=1, max_understand=1)) == ["a2"]


def test_newcomer_goes_before_a_user_who_was_just_served() -> None:
    s = make()
    for i in range(1, 4):
        s.add(gen(f"a{i}", "alice"))
    assert ids(s.next_batch(max_images=1, max_understand=1)) == ["a1"]
    s.add(gen("c1", "carol"))  # arrives after Alice was served: Carol has waited less but was served less
    assert ids(s.fair_order()) == ["c1", "a2", "a3"]


def test_round_robin_over_three_users_keeps_each_users_own_order() -> None:
    s = make()
    for user, count in (("u1", 3), ("u2", 2), ("u3", 1)):
        for i in range(1, count + 1):
            s.add(gen(f"{user}-{i}", user))
    order = []
    while len(s):
        order += ids(s.next_batch(max_images=1, max_understand=1))
    assert order == ["u1-1", "u2-1", "u3-1", "u1-2", "u2-2", "u1-3"]


def test_queue_bound_and_per_user_cap_raise_typed_errors_at_once() -> None:
    s = make(max_queue=3, per_user=2)
    s.add(gen("a1", "alice"))
    s.add(gen("a2", "alice"))
    with pytest.raises(UserLimitReached) as info:
        s.add(gen("a3", "alice"))
    assert "limit is 2" in info.value.user_message
    s.add(gen("b1", "bob"))
    with pytest.raises(QueueFull):
        s.add(gen("c1", "carol"))
    assert len(s) == 3
    with pytest.raises(InvalidRequest):
        s.add(gen("b1", "bob"))  # an id already in use


def test_running_cap_skips_the_user_until_a_job_finishes() -> None:
    s = make(running=1)
    s.add(gen("a1", "alice"))
    s.add(gen("a2", "alice"))
    s.add(gen("b1", "bob"))
    first = s.next_batch(max_images=16, max_understand=8)
    assert ids(first) == ["a1", "b1"]  # at most one of Alice's jobs may run at a time
    assert s.next_batch(max_images=16, max_understand=8) == []  # a2 must wait for a1
    s.finish("a1")
    assert ids(s.next_batch(max_images=16, max_understand=8)) == ["a2"]


def test_batch_respects_the_image_bound_and_skips_a_job_that_does_not_fit() -> None:
    s = make()
    s.add(gen("a", "alice", n=3))
    s.add(gen("b", "bob", n=4))  # would make 7 > 5: skipped for this batch
    s.add(gen("c", "carol", n=2))
    assert ids(s.next_batch(max_images=5, max_understand=8)) == ["a", "c"]
    assert ids(s.next_batch(max_images=5, max_understand=8)) == ["b"]


def test_head_job_larger_than_the_bound_still_runs_alone() -> None:
    s = make()
    s.add(gen("big", "alice", n=8))
    s.add(gen("small", "bob", n=1))
    assert ids(s.next_batch(max_images=4, max_understand=8)) == ["big"]


def test_batches_hold_one_kind_and_understanding_is_bounded_by_count() -> None:
    s = make()
    s.add(chat("q1", "alice"))
    s.add(gen("g1", "bob"))
    s.add(chat("q2", "carol"))
    s.add(chat("q3", "dave"))
    assert ids(s.next_batch(max_images=16, max_understand=2)) == ["q1", "q2"]
    assert ids(s.next_batch(max_images=16, max_understand=2)) == ["g1"]
    assert ids(s.next_batch(max_images=16, max_understand=2)) == ["q3"]


def test_remove_takes_a_queued_job_out_and_positions_close_up() -> None:
    s = make()
    s.add(gen("a1", "alice"))
    s.add(gen("b1", "bob"))
    s.add(gen("c1", "carol"))
    assert s.remove("b1") is not None
    assert s.remove("b1") is None
    assert s.position("c1") == 2
    assert s.position("b1") is None
    assert s.dispatchable_weight() == 2


# ---- continuous batching: jobs join a worker with free rows ----------------------------------------------


def test_admission_fills_free_rows_in_fair_order_and_skips_a_kind_without_room() -> None:
    s = make()
    s.add(gen("a", "alice", n=2))
    s.add(chat("q", "bob"))
    s.add(gen("c", "carol", n=1))
    picked = s.next_admission(budgets={"generate": 3, "understand": 0}, idle_kinds=set())
    assert ids(picked) == ["a", "c"]  # no room for text: the chat waits, images fill the 3 free rows
    assert ids(s.next_admission(budgets={"generate": 0, "understand": 2}, idle_kinds=set())) == ["q"]


def test_admission_lets_nobody_overtake_a_job_waiting_for_rows() -> None:
    s = make()
    s.add(gen("big", "alice", n=4))
    s.add(gen("small", "bob", n=1))
    s.add(chat("q", "carol"))
    # 2 rows free: the 4-image job does not fit, and the 1-image job must not take its rows; text may go.
    picked = s.next_admission(budgets={"generate": 2, "understand": 2}, idle_kinds=set())
    assert ids(picked) == ["q"]
    assert ids(s.next_admission(budgets={"generate": 4, "understand": 2}, idle_kinds=set())) == ["big"]
    assert ids(s.next_admission(budgets={"generate": 1, "understand": 2}, idle_kinds=set())) == ["small"]


def test_admission_of_a_job_bigger_than_a_batch_waits_for_an_idle_kind() -> None:
    s = make()
    s.add(gen("huge", "alice", n=8))
    assert s.next_admission(budgets={"generate": 3, "understand": 8}, idle_kinds={"understand"}) == []
    picked = s.next_admission(budgets={"generate": 4, "understand": 8}, idle_kinds={"generate"})
    assert ids(picked) == ["huge"]


def test_admission_counts_running_caps_and_stops_when_the_batch_is_full() -> None:
    s = make(running=1)
    s.add(gen("a1", "alice"))
    s.add(gen("a2", "alice"))
    s.add(gen("b1", "bob", n=2))
    s.add(gen("c1", "carol"))
    assert ids(s.next_admission(budgets={"generate": 2, "understand": 0}, idle_kinds=set())) == ["a1"]
    # b1 would overflow the one row left: the pick ends there, c1 does not jump ahead of it.
    assert s.next_admission(budgets={"generate": 1, "understand": 0}, idle_kinds=set()) == []
    assert ids(s.next_admission(budgets={"generate": 3, "understand": 0}, idle_kinds=set())) == ["b1", "c1"]
