"""What became of each interaction the soak sent, judged from what the user saw and what the bot stored.

Every request carries a text no other request has, so its database rows (a job's prompt, a turn's text)
are found without trusting the bot's bookkeeping, and checked against the interaction: the job's user,
the messages the job or answer names (they must be this interaction's), what the user was told.

- completed: a job done and its result delivered in this interaction's messages; a chat answer stored
  as a question-answer pair whose answer names this interaction's message.
- refused: told why at once (queue full, caps, cooldown, a bad input); the reason is the first words.
- failed: accepted, then ended with a reason the user was shown (a killed worker, a timeout).
- lost: accepted and never closed (a job row still queued or running, an answer still "thinking", no
  answer at all): must be 0.
- misrouted: a result or stored answer that names another user or another interaction's message.
- unclear: a refusal or failure the user saw without a sentence, or with a traceback or file path in it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from discord_emulator import Interaction, User

REFUSAL_REASONS = (
    ("queue full", re.compile(r"queue is full", re.I)),
    ("user queue cap", re.compile(r"jobs waiting \(the limit", re.I)),
    ("user running cap", re.compile(r"running \(the limit|at a time", re.I)),
    ("cooldown", re.compile(r"slow down", re.I)),
    ("daily cap", re.compile(r"daily|per day|today", re.I)),
)
ERROR_TEXT = re.compile(r"^(Sorry|Something went wrong|The job|This job|The engine|Your )", re.I)
LEAKY = re.compile(r"Traceback|File \"|/work/|/tmp/|/home/|site-packages|\.py\b|line \d+, in ")


def leaks_internals(text: str) -> bool:
    """A message a user sees must not carry a stack frame or a file path."""
    return bool(LEAKY.search(text))


@dataclass
class Sent:
    """One request: what kind, by whom, its unique text and the interaction that carried it."""

    kind: str  # "imagine", "describe" or "chat"
    user: User
    text: str
    itx: Interaction


@dataclass
class Outcome:
    sent: Sent
    status: str  # completed, refused, failed, cancelled, lost
    reason: str = ""
    answered_3s: bool = True
    misrouted: str = ""  # what was wrong, if anything
    unclear: str = ""
    stored: bool = False  # a done job row, or a question stored with its answer
    delivered: bool = False  # what the user saw: images posted, or a final answer that is not an error


def interaction_messages(itx: Interaction) -> list[Any]:
    return [m for m in (itx.original, *itx.followups) if m is not None and not m.deleted]


def _shown_text(itx: Interaction) -> str:
    return "\n".join(str(m.content or "") for m in interaction_messages(itx))


def refusal_reason(text: str) -> str:
    for name, pattern in REFUSAL_REASONS:
        if pattern.search(text):
            return name
    return "other: " + text.strip().splitlines()[0][:60] if text.strip() else "no text"


def _still_pending(itx: Interaction) -> bool:
    msg = itx.original
    return msg is None or msg.loading or "▌" in (msg.content or "") or "queue" in (msg.content or "").lower()


def _delivered(sent: Sent, shown: str) -> bool:
    """Judged from Discord alone: images posted for /imagine; a finished answer that is no refusal or
    error sentence for /describe and /chat."""
    messages = interaction_messages(sent.itx)
    if sent.kind == "imagine":  # a result carries its images and a Re-roll button, without an error
        return any(
            m.attachments
            and any(c.startswith("janus:reroll:") for c in m.custom_ids())
            and not ERROR_TEXT.search(str(m.content or "").split("\n")[-1])
            for m in messages
        )
    if _still_pending(sent.itx) or sent.itx.failed:
        return False
    first = str(sent.itx.original.content or "") if sent.itx.original else ""
    return bool(first.strip()) and not ERROR_TEXT.search(first) and refusal_reason(first).startswith("other")


def classify(sent: Sent, rows: Rows) -> Outcome:
    itx = sent.itx
    shown = _shown_text(itx)
    mine = {m.id for m in interaction_messages(itx)}
    out = Outcome(sent, "lost", answered_3s=bool(itx.responses) and not itx.failed)
    # A chat's job row keeps no text (its words are in the turns): it is found by its messages.
    job = rows.jobs.get(sent.text) if sent.kind != "chat" else rows.job_of_messages(mine)
    turn = rows.turns.get(sent.text) if sent.kind == "chat" else None
    if turn is not None:
        out.status = "completed"
        if turn["author_id"] != sent.user.id:
            out.misrouted = f"question stored for author {turn['author_id']}"
        elif turn["answer_id"] is None:
            out.status, out.misrouted = "lost", "question stored without its answer"
        elif not rows.answer_messages.get(turn["answer_id"], set()) <= mine:
            out.misrouted = "answer stored against another interaction's message"
    elif job is None:
        if sent.kind == "chat" and _still_pending(itx):
            out.status = "lost"
        elif shown.strip():
            reason = refusal_reason(shown)
            out.status = "refused" if not reason.startswith("other") else "failed"
            out.reason = reason if out.status == "refused" else shown[:80]
    elif job["user_id"] != sent.user.id:
        out.status, out.misrouted = "completed", f"job of user {job['user_id']}"
    elif job["status"] in ("queued", "running"):
        out.status = "lost"
    elif job["status"] == "done":
        out.status = "completed"
        ids = set(job["message_ids"])
        if not ids or not ids <= mine:
            out.misrouted = f"result in messages {sorted(ids - mine)} not of this interaction"
    else:
        error = str(job["error"] or "")
        reason = refusal_reason(error)
        interrupted = "interrupted" in shown.lower()  # the restart's clean-up edits the message so
        if job["status"] == "cancelled":
            out.status = "cancelled"
        elif not reason.startswith("other"):
            out.status, out.reason = "refused", reason
        else:
            out.status, out.reason = "failed", "interrupted by a restart" if interrupted else error[:80]
        if job["status"] == "failed" and not interrupted and error[:40] not in shown:
            out.unclear = f"not shown the job's error ({error[:60]!r}), saw {shown[:120]!r}"
    out.stored = (
        job is not None and job["status"] == "done" and not out.misrouted
        if sent.kind != "chat"
        else out.status == "completed" and not out.misrouted
    )
    out.delivered = _delivered(sent, shown)
    if out.status in ("refused", "failed", "cancelled") and not out.unclear:
        if not shown.strip():
            out.unclear = "no sentence shown"
        elif leaks_internals(shown):
            out.unclear = f"internals shown: {shown[:80]!r}"
    return out


@dataclass
class Rows:
    """The database's jobs (by prompt), user turns (by text, with the answer turn's id) and the message
    ids stored for each answer turn, read once for a whole judgement."""

    jobs: dict[str, Any]
    turns: dict[str, Any]
    answer_messages: dict[int, set[int]]
    by_message: dict[int, Any]

    def job_of_messages(self, ids: set[int]) -> Any:
        return next((self.by_message[i] for i in ids if i in self.by_message), None)


def read_rows(world: Any) -> Rows:
    jobs, by_message = {}, {}
    for row in world.query("SELECT id, kind, user_id, prompt, status, error, message_ids FROM jobs"):
        item = dict(row)
        item["message_ids"] = json.loads(item["message_ids"] or "[]")
        if item["prompt"]:
            jobs[item["prompt"]] = item
        for message_id in item["message_ids"]:
            by_message[message_id] = item
    turns = {}
    sql = (
        "SELECT q.id, q.text, q.author_id, a.id AS answer_id FROM turns q "
        "LEFT JOIN turns a ON a.reply_to_turn_id = q.id AND a.role = 'assistant' WHERE q.role = 'user'"
    )
    for row in world.query(sql):
        turns[row["text"]] = dict(row)
    answers: dict[int, set[int]] = {}
    for row in world.query("SELECT turn_id, message_id FROM turn_messages"):
        answers.setdefault(row["turn_id"], set()).add(row["message_id"])
    return Rows(jobs, turns, answers, by_message)


@dataclass
class Tally:
    """Counts over outcomes, for the table."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def answered_3s(self) -> int:
        return sum(1 for o in self.outcomes if o.answered_3s)

    @property
    def misrouted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.misrouted]

    @property
    def unclear(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.unclear]

    def reasons(self, status: str) -> Counter[str]:
        return Counter(o.reason for o in self.outcomes if o.status == status)
