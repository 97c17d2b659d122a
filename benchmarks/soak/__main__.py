"""The reliability soak (issue 12): the real bot against the emulator, real workers, the tiny model.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.soak            # the full soak (~15 min on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.soak --quick    # a few seconds of each part (CI)
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.soak --parts load,crash

Prints one Markdown table (README's reliability section and docs/reliability.md quote it) and exits 1 if
any figure that must hold (lost 0, misrouted 0, leaks 0, ...) does not. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.soak.figures import table, violations
from benchmarks.soak.runner import SoakPlan, quick_plan, replace_parts, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds of each part (what CI runs)")
    parser.add_argument("--parts", help="comma-separated: load,faults,crash,isolation,hostile,secrets")
    parser.add_argument("--keep", type=Path, help="keep the bot's database and logs in this folder")
    args = parser.parse_args(argv)
    plan = quick_plan() if args.quick else SoakPlan()
    if args.parts:
        plan = replace_parts(plan, tuple(p.strip() for p in args.parts.split(",") if p.strip()))
    with tempfile.TemporaryDirectory(prefix="janus-soak-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        from janus_engine.tiny import build_tiny_checkpoint

        model = build_tiny_checkpoint(tmp / "tiny-model")
        figures = asyncio.run(run_soak(plan, model, tmp, log=lambda line: print(line, flush=True)))
    print(table(figures))
    bad = violations(figures)
    for line in bad:
        print("FAILED:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
