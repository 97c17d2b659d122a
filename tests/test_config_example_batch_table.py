"""The card-memory -> batch-size table in config.example.toml is what ``janus-bot check`` computes.

The table is the operator's guide to ``engine.max_images_per_batch``; if the arithmetic in
:mod:`janus_engine.memory_budget` (or the engine's cap) changes, this test says which figure went stale.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from janus_engine.config import EngineSettings
from janus_engine.memory_budget import budget_table

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
CAP = next(f for f in fields(EngineSettings) if f.name == "max_images_per_batch").metadata["hi"]


def _table_in_example() -> dict[tuple[str, int], int]:
    table = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        row = re.match(r"#\s+(Janus-Pro-\w+) \(weights ([\d.]+) GB, ([\d.]+) GB per image\):(.*)", line)
        if row:
            for gib, images in re.findall(r"(\d+) GiB -> (\d+)", row.group(4)):
                table[(row.group(1), int(gib))] = int(images)
    return table


def test_every_figure_of_the_batch_table_is_the_computed_one() -> None:
    table = _table_in_example()
    assert len(table) == 8, table  # two models x four cards
    cards = sorted({gib for _, gib in table})
    computed = {(label, gib): min(b.max_images, CAP) for label, gib, b in budget_table(cards)}
    assert {key: computed[key] for key in table} == table


def test_the_weights_and_per_image_figures_are_the_computed_ones() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for label, _, budget in budget_table((80,)):
        weights, per_image = re.search(
            rf"{label} \(weights ([\d.]+) GB, ([\d.]+) GB per image\)", text
        ).groups()
        assert float(weights) == round(budget.weights_bytes / 1e9, 1)
        assert float(per_image) == round(budget.per_image_bytes / 1e9, 2)


def test_the_default_batch_does_not_fit_the_card_the_comment_says_it_does_not() -> None:
    """The comment says the default needs more than 24 GiB for 7B: true of the default, false of 12."""
    default = next(f for f in fields(EngineSettings) if f.name == "max_images_per_batch").default
    budgets = {label: b for label, gib, b in budget_table((24,))}
    seven_b = budgets["Janus-Pro-7B"]
    assert seven_b.max_images < default <= CAP
    assert seven_b.max_images >= 12
