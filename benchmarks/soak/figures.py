"""The soak's one table: a figure per row, some with the value they must have (lost and misrouted: 0)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    part: str
    name: str
    value: object
    must: object | None = None  # the value it must have; None: a measurement only
    detail: str = ""  # what went wrong, when it did

    @property
    def violated(self) -> bool:
        return self.must is not None and self.value != self.must


def table(figures: list[Figure]) -> str:
    """A Markdown table (README and docs/reliability.md take it as printed)."""
    rows = ["| part | figure | value | must be |", "|---|---|---|---|"]
    for f in figures:
        value = f"{f.value:.2f}" if isinstance(f.value, float) else str(f.value)
        must = "" if f.must is None else str(f.must)
        mark = " **FAILED**" if f.violated else ""
        rows.append(f"| {f.part} | {f.name} | {value}{mark} | {must} |")
    return "\n".join(rows)


def violations(figures: list[Figure]) -> list[str]:
    return [
        f"{f.part}: {f.name} = {f.value} (must be {f.must}){': ' + f.detail if f.detail else ''}"
        for f in figures
        if f.violated
    ]
