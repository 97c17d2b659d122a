"""strip_control: what model text loses before it is posted or stored (the end-to-end check is in
test_bot_operator_details.py)."""

from __future__ import annotations

from janus_engine.text import strip_control


def test_strip_control_drops_escapes_and_controls_but_keeps_newlines_and_tabs() -> None:
    assert strip_control("\x1b[31mred\x1b[0m\x00 and\tthen\r\nmore\x07\x7f\x9b") == "red and\tthen\nmore"
    assert strip_control("plain text\n") == "plain text\n"
    assert strip_control("a\x1b(Bb\x1b7c") == "abc"  # the short escapes go whole too
    assert strip_control("\x1b]0;a title\x07text\x1b]8;;http://x\x1b\\link") == "textlink"  # OSC
