"""The reliability soak's short version (``python -m benchmarks.soak --quick``): a few seconds of each
part against the real bot process, real workers and the tiny model. Every figure that must hold (lost 0,
misrouted 0, leaks 0, token found 0, ...) is asserted; the table is printed for CI's log. The figures in
README and docs/reliability.md come from the full soak (``python -m benchmarks.soak``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak.figures import table, violations
from benchmarks.soak.runner import quick_plan, run_soak

pytestmark = pytest.mark.soak


@pytest.mark.timeout(1200)
async def test_the_quick_soak_holds_every_promise(tiny_model_dir: Path, tmp_path: Path) -> None:
    figures = await run_soak(quick_plan(), tiny_model_dir, tmp_path)
    print(table(figures))
    parts = {f.part for f in figures}
    assert parts == {"load", "worker faults", "bot crash", "isolation", "hostile input", "secrets"}, parts
    assert violations(figures) == []
