"""Text shown in Discord: progress bars, queue lines, ETAs, safe echoes of user text.

Kept free of discord.py objects so it is trivially testable and so every message respects Discord's
2000-character limit in one place.
"""

from __future__ import annotations

MAX_CONTENT = 2000


def progress_bar(step: int, total: int, width: int = 20) -> str:
    """``[#########-----------]  45%`` - a bar that renders the same on every client (no emoji widths)."""
    total = max(total, 1)
    step = min(max(step, 0), total)
    filled = round(width * step / total)
    return f"`[{'#' * filled}{'-' * (width - filled)}]` {round(100 * step / total):3d}%"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"~{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"~{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"~{hours}h {minutes:02d}m"


def queue_line(position: int, eta_s: float | None) -> str:
    ahead = position - 1
    who = "you are next" if ahead <= 0 else f"{ahead} job{'s' if ahead != 1 else ''} ahead"
    return f"Queued: position {position} ({who}), ETA {format_eta(eta_s)}"


def quote_prompt(prompt: str, limit: int = 300) -> str:
    """A user's prompt echoed back, shortened and with backticks neutralised so it cannot break out.

    Mentions inside it cannot ping because every message is sent with AllowedMentions.none(); this only
    keeps the formatting intact.
    """
    text = " ".join(prompt.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "`" + text.replace("`", "'") + "`"


def clip(text: str, limit: int = MAX_CONTENT) -> str:
    """Fit text into one message, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def split_message(text: str, limit: int = MAX_CONTENT) -> list[str]:
    """Split a long answer into message-sized chunks, preferring line then word boundaries."""
    text = text.strip() or "(empty answer)"
    chunks: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    chunks.append(text)
    return chunks


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
