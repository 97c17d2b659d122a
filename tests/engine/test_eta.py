"""SpeedMeter: estimates come only from measured batches, and follow the batch size."""

from __future__ import annotations

import pytest

from janus_engine.eta import RunningRows, SpeedMeter, simulate_queue, simulate_rows


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_measured_means_unknown() -> None:
    meter = SpeedMeter()
    assert meter.batch_seconds("generate", 4) is None
    assert meter.batch_seconds("understand", 1) is None
    assert meter.avg_step_seconds() is None


def test_step_time_is_fitted_on_batch_size() -> None:
    meter = SpeedMeter()
    # 0.1 s + 0.05 s per image per step, 10 steps a batch.
    for images in (1, 2, 4, 8):
        meter.record(kind="generate", size=images, steps=10, seconds=10 * (0.1 + 0.05 * images))
    assert meter.step_seconds(6) == pytest.approx(0.4)
    assert meter.batch_seconds("generate", 16) == pytest.approx(10 * (0.1 + 0.05 * 16))


def test_one_batch_size_seen_scales_in_proportion() -> None:
    meter = SpeedMeter()
    meter.record(kind="generate", size=2, steps=16, seconds=3.2)
    assert meter.batch_seconds("generate", 4) == pytest.approx(6.4)


def test_throughput_counts_only_the_last_minute() -> None:
    clock = FakeClock()
    meter = SpeedMeter(clock=clock)
    started = clock.now
    meter.record(kind="generate", size=4, steps=16, seconds=2.0)
    meter.record(kind="understand", size=2, steps=30, seconds=1.0, tokens=50)
    clock.now += 10
    images_per_s, tokens_per_s = meter.throughput(started)
    assert images_per_s == pytest.approx(0.4) and tokens_per_s == pytest.approx(5.0)
    clock.now += 120
    assert meter.throughput(started) == (0.0, 0.0)


def test_queue_simulation_batches_in_order_and_uses_the_first_free_worker() -> None:
    def seconds(kind: str, size: int) -> float:
        return 10.0 + size if kind == "generate" else 2.0

    order = [("a", "generate", 2), ("b", "generate", 2), ("c", "generate", 1), ("q", "understand", 1)]
    etas = simulate_queue(order, [0.0, 5.0], seconds, {"generate": 4, "understand": 8})
    # a+b form one 4-image batch on the idle worker (done at 14); c runs alone on the other, free at 5
    # (done at 16); q follows on the first worker again (14 + 2).
    assert etas == {"a": 14.0, "b": 14.0, "c": 16.0, "q": 16.0}


def test_queue_simulation_says_unknown_rather_than_guessing() -> None:
    order = [("a", "generate", 1)]
    assert simulate_queue(order, [0.0], lambda kind, size: None, {"generate": 4}) == {"a": None}
    assert simulate_queue(order, [None], lambda kind, size: 1.0, {"generate": 4}) == {"a": None}
    assert simulate_queue(order, [], lambda kind, size: 1.0, {"generate": 4}) == {"a": None}


def test_row_simulation_starts_a_job_when_enough_rows_free_up() -> None:
    def seconds(kind: str, occupancy: int) -> float:
        return 10.0 * occupancy if kind == "generate" else 3.0

    running = [[RunningRows("generate", 2, 4.0), RunningRows("generate", 1, 8.0)]]
    order = [("a", "generate", 1), ("b", "generate", 2), ("q", "understand", 1)]
    etas = simulate_rows(order, running, {"generate": 4, "understand": 2}, seconds)
    # a: 1 row is free now, it joins at once beside 3 (10 s x 4); b needs 2 rows: at 4 s the 2-row job
    # leaves, so b joins then, beside a and the 1-row job (4 + 40); text has its own rows.
    assert etas == {"a": 40.0, "b": 44.0, "q": 3.0}


def test_row_simulation_keeps_order_within_a_kind_and_says_unknown() -> None:
    def seconds(kind: str, occupancy: int) -> float:
        return 10.0

    running = [[RunningRows("generate", 3, 5.0)]]
    order = [("big", "generate", 4), ("small", "generate", 1)]
    etas = simulate_rows(order, running, {"generate": 4}, seconds)
    # small could fit now, but it does not overtake big, which waits for all 4 rows (at 5 s).
    assert etas == {"big": 15.0, "small": 25.0}
    assert simulate_rows(order, [], {"generate": 4}, seconds) == {"big": None, "small": None}
    assert simulate_rows(order, running, {"generate": 4}, lambda k, o: None) == {"big": None, "small": None}
