"""`janus-bot imagine` / `janus-bot describe` end to end in a subprocess, through the engine and a real
worker on the tiny checkpoint; bad input ends with one readable line and exit status 2."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image


def janus_bot(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], command: str, needle: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"janus-bot {command}:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr


def test_imagine_writes_the_requested_images(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    done = janus_bot(
        "imagine", "a red cube", "-n", "2", "--seed", "5", "--guidance", "2",
        "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["a-red-cube-s5-1.png", "a-red-cube-s5-2.png"]
    assert [str(p) for p in written] == done.stdout.split()
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width == image.height > 0


def test_describe_answers_each_image(tiny_model_dir, tmp_path):
    paths = []
    for name, colour in (("red.png", (255, 0, 0)), ("blue.jpg", (0, 0, 255))):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), colour).save(buffer, format="PNG" if name.endswith("png") else "JPEG")
        (tmp_path / name).write_bytes(buffer.getvalue())
        paths.append(str(tmp_path / name))
    done = janus_bot(
        "describe", *paths, "--prompt", "What colour?", "--max-new-tokens", "3", "--temperature", "0",
        "--model", str(tiny_model_dir), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    headers = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert headers == [f"== {p}" for p in paths]


def test_describe_prints_no_control_characters(tiny_model_dir, tmp_path):
    """At seed 3 the tiny model answers with \\x18, \\x1f and \\x7f: none may reach the terminal."""
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(image)
    done = janus_bot(
        "describe", str(image), "--prompt", "hi", "--temperature", "1.0", "--seed", "3",
        "--max-new-tokens", "60", "--model", str(tiny_model_dir), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the model said nothing, so this checks nothing"
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", done.stdout), repr(done.stdout)


def test_bad_inputs_end_with_one_line_and_status_2(tiny_model_dir, tmp_path):
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert_one_line_error(janus_bot("imagine", "a cat", "-n", "0", *model), "imagine", "1")
    assert_one_line_error(janus_bot("imagine", "a cat", "--guidance", "1", *model), "imagine", "uidance")
    missing = janus_bot("describe", str(tmp_path / "missing.png"), *model)
    assert_one_line_error(missing, "describe", "no such file")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert_one_line_error(janus_bot("describe", str(not_an_image), *model), "describe", "notes.png")


def test_a_missing_model_is_reported_without_a_traceback(tmp_path):
    missing = Path(tmp_path / "no-such-model")
    done = janus_bot("imagine", "a cat", "--model", str(missing), "--device", "cpu")
    assert_one_line_error(done, "imagine", "")
