"""`janus-bot demo` works from a clean state, offline, through the real CLI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_plays_the_scripted_session_and_writes_images(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("DISCORD_TOKEN", None)  # no token needed
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", "-o", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    transcript = (out / "transcript.txt").read_text()
    for step in ("/imagine", "presses [Re-roll]", "/describe image:hill.png", "/chat message:", "notes.txt"):
        assert step in transcript, step
    assert "%" in transcript and "preview.png" in transcript  # the progress bar with a preview was shown
    assert "Re-roll, Edit prompt, Delete, Info, U1, U2, V1, V2, Describe 1, Describe 2" in transcript
    assert "holds 4 turns with 1 image" in transcript  # the follow-up found the describe exchange
    assert "is not a supported image" in transcript and "not an image I can read" in transcript
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert (out / "janus-demo.db").is_file()
    assert "Traceback" not in proc.stderr
