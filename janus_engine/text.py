"""Model text made safe to print and store: no terminal escapes, no control characters.

Lives in the engine's torch-free front so every consumer (the bot, the ``describe`` command) strips the
same way.
"""

from __future__ import annotations

import re

# An escape sequence goes as a whole, so no "[31m" is left behind: OSC ("ESC ] ... BEL" or "... ESC \\"),
# CSI ("ESC [ params final"), and the short ones ("ESC (B", "ESC 7"); then every other C0/C1 control
# character but newline and tab.
_ANSI_ESCAPE = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    """Model text without terminal escapes and control characters (``\\n`` and ``\\t`` stay).

    A model (the tiny random one in tests and demos, or a real one off the rails) can emit ESC, NUL, BEL
    and the like: they would colour or scramble the operator's terminal and sit invisibly in Discord
    messages and in the stored conversation. ``\\r\\n`` becomes ``\\n``."""
    text = _ANSI_ESCAPE.sub("", text.replace("\r\n", "\n"))
    return _CONTROL.sub("", text)
