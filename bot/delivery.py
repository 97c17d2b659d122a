"""Where a job's progress and answer go, and how they survive Discord's rules.

An :class:`InteractionOutlet` edits the interaction's original response while its token lives (15
minutes), then falls back to the bot's own channel messages: a job that outlives its token still
delivers, and no edit is ever attempted with a dead token twice. Expiry is detected both from the clock
(``Interaction.expires_at`` minus a margin) and from the 401 Discord answers, because clocks drift.
A :class:`MessageOutlet` answers a plain message (an @mention or a reply) with a reply it then edits.

Files travel as ``(filename, bytes)`` pairs and become ``discord.File`` objects per attempt, because a
File is consumed by the request that sends it. Every message goes out with AllowedMentions.none() (or
only the requester), so an echoed prompt can never ping @everyone or a role.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.formatting import split_message
from bot.store.records import JobStatus
from janus_engine.protocol import (
    Cancelled,
    Done,
    Failed,
    GenerateResult,
    Progress,
    Queued,
    Started,
    TextDelta,
    UnderstandResult,
)

if TYPE_CHECKING:
    from bot.metrics import BotMetrics
    from bot.store import Store
    from janus_engine.engine import JobHandle

log = logging.getLogger(__name__)

NamedFile = tuple[str, bytes]
NO_PINGS = discord.AllowedMentions.none()
TOKEN_MARGIN = timedelta(seconds=30)  # stop using a token this long before it dies
_DEAD_TOKEN_CODES = {50027, 10015, 10062}  # invalid webhook token, unknown webhook, unknown interaction
MessageHook = Callable[[int], Awaitable[Any]]


class Outlet(Protocol):
    """Where one job's progress and answer go: :class:`InteractionOutlet` or :class:`MessageOutlet`."""

    on_new_message: MessageHook | None

    async def show(self, content: str, *, file: NamedFile | None = ..., view: Any = ...) -> None: ...

    async def final(
        self, text: str, *, files: Sequence[NamedFile] = ..., view: Any = ..., ping: bool = ...
    ) -> list[int]: ...

    async def fail(self, text: str) -> None: ...


class _MessageIdRecorder:
    """Tells the job's owner (``on_new_message``) the id of each message that starts showing the job.

    The job record keeps those ids, so that after a crash or restart the bot can find the progress
    message and say what happened, instead of leaving a bar that never moves and a dead Cancel button."""

    def __init__(self, on_new_message: MessageHook | None = None) -> None:
        self.on_new_message = on_new_message
        self._announced: set[int] = set()

    async def _announce(self, message_id: int) -> None:
        if message_id in self._announced or self.on_new_message is None:
            return
        self._announced.add(message_id)
        try:
            await self.on_new_message(message_id)
        except Exception:  # bookkeeping must never end the job it describes
            log.exception("could not record message %s of a job", message_id)


def to_files(named: Sequence[NamedFile]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in named]


def fit_to_limit(named: Sequence[NamedFile], limit: int) -> tuple[list[NamedFile], list[str]]:
    """Keep files within the upload limit: re-encode an oversized PNG as JPEG, drop what still does not fit.

    Returns the files and notes for the user about anything changed.
    """
    out: list[NamedFile] = []
    notes: list[str] = []
    for name, data in named:
        if len(data) <= limit:
            out.append((name, data))
            continue
        from PIL import Image  # only on this rare path; PIL is a light dependency of the bot too

        with Image.open(io.BytesIO(data)) as img:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=85)
        if buf.tell() <= limit:
            out.append((name.rsplit(".", 1)[0] + ".jpg", buf.getvalue()))
            notes.append(f"{name} was sent as JPEG to fit this server's upload limit.")
        else:
            notes.append(f"{name} is larger than this server's upload limit and was not sent.")
    return out, notes


def is_dead_token(exc: discord.HTTPException) -> bool:
    return exc.status == 401 or getattr(exc, "code", 0) in _DEAD_TOKEN_CODES


@dataclass
class _Update:
    content: str
    file: NamedFile | None
    view: Any


class LatestProgress:
    """A progress message shown at most once per ``interval`` that never stays stale.

    An update that arrives too soon is not dropped: it waits until the interval ends and is then shown,
    unless a newer one replaced it first (a preview image rides along until some update shows it). So a
    queue position that changes twice in a second ends up right, and Discord sees at most one edit per
    interval. :meth:`close` must run before the final answer, so that no late progress edit lands on it."""

    def __init__(self, outlet: Outlet, interval: float) -> None:
        self.outlet = outlet
        self.interval = interval
        self._last = float("-inf")
        self._pending: _Update | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def update(
        self, content: str, *, file: NamedFile | None = None, view: Any = discord.utils.MISSING
    ) -> None:
        if file is None and self._pending is not None:
            file = self._pending.file
        self._pending = _Update(content, file, view)
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0 and self._timer is None:
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later(max(wait, 0.0)))

    async def _flush_later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            update, self._pending = self._pending, None
            if update is None:
                return
            self._last = time.monotonic()
            await self.outlet.show(update.content, file=update.file, view=update.view)

    async def close(self) -> None:
        """Drop what is pending and wait for an edit in flight: the caller's next message is the last."""
        self._pending = None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        async with self._lock:
            pass


async def quietly(work: Awaitable[Any], what: str) -> None:
    """Await bookkeeping whose failure must not end the job it describes: log it instead."""
    try:
        await work
    except Exception:
        log.exception("could not %s", what)


async def finish_if_open(store: Store, job_id: str, reason: str) -> None:
    """Mark a job failed unless it already ended (or was forgotten meanwhile)."""
    job = await store.get_job(job_id)
    if job is not None and not job.status.is_terminal:
        await store.finish_job(job_id, JobStatus.FAILED, error=reason)


class JobRender(Protocol):
    """What one flow (images, or a streamed answer) does with each event of its job.

    :func:`follow_job` closes the progress message before ``done``/``failed``/``cancelled``, and calls
    ``crashed`` when anything raised; ``delivered`` is set once the result is posted (it then stays)."""

    outlet: Outlet
    progress: LatestProgress
    delivered: bool

    async def queued(self, event: Queued) -> None: ...
    async def started(self, event: Started) -> None: ...
    async def step(self, event: Progress | TextDelta) -> None: ...
    async def done(self, result: GenerateResult | UnderstandResult) -> None: ...
    async def failed(self, reason: str) -> None: ...
    async def cancelled(self) -> None: ...
    async def crashed(self) -> str: ...  # bookkeeping; returns the apology shown unless delivered


async def follow_job(
    handle: JobHandle, render: JobRender, what: str, metrics: BotMetrics | None = None
) -> None:
    """Turn a job's events into its message, through ``render``; the endings are handled here once.

    Once the result is posted it stays: a bookkeeping error after that (the job forgotten with /forget
    meanwhile, a busy database) is logged, never shown in place of the result. ``metrics`` counts the
    job's end by outcome (done, failed, cancelled; crashed = our own error while following it)."""
    started = time.monotonic()
    outcome = "crashed"
    try:
        async for event in handle:
            match event:
                case Queued():
                    await render.queued(event)
                case Started():
                    await render.started(event)
                case Progress() | TextDelta():
                    await render.step(event)
                case Done(result=result):
                    outcome = "done"
                    await render.progress.close()
                    await render.done(result)
                case Failed(reason=reason):
                    outcome = "failed"
                    await render.progress.close()
                    await render.failed(reason)
                case Cancelled():
                    outcome = "cancelled"
                    await render.progress.close()
                    await render.cancelled()
    except Exception:
        log.exception("following %s failed", what)
        if not render.delivered:
            outcome = "crashed"
        await render.progress.close()
        apology = await render.crashed()
        if not render.delivered:
            await render.outlet.fail(apology)
    finally:
        if metrics is not None:
            metrics.job_ended(handle.kind, outcome, time.monotonic() - started)


class InteractionOutlet(_MessageIdRecorder):
    """Progress and results of one interaction: its original response, then the channel after expiry."""

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        upload_limit: int | None = None,
        on_new_message: MessageHook | None = None,
    ) -> None:
        super().__init__(on_new_message)
        self.interaction = interaction
        self.user_id = interaction.user.id
        self.channel: Any = interaction.channel
        self.upload_limit = upload_limit or interaction.filesize_limit
        self.expired = False
        self._original_id: int | None = None  # the interaction's response, once it exists
        self._original_editable = True  # by the bot as its own message, after the token died
        self._channel_message: discord.Message | None = None  # progress message posted after expiry

    def token_alive(self) -> bool:
        if self.expired:
            return False
        if discord.utils.utcnow() >= self.interaction.expires_at - TOKEN_MARGIN:
            self.expired = True
        return not self.expired

    async def show(
        self,
        content: str,
        *,
        file: NamedFile | None = None,
        view: Any = discord.utils.MISSING,
        clear_files: bool = False,
    ) -> None:
        """Update the progress/stream message (best effort: a failed progress edit never ends a job).

        ``file`` replaces the attached preview; ``clear_files`` removes it (a failed job keeps no preview).
        """
        if file and len(file[1]) > self.upload_limit:
            file = None  # a preview is optional: skip one that this server's upload limit would refuse
        attachments: Any = to_files([file]) if file else ([] if clear_files else discord.utils.MISSING)
        try:
            if self.token_alive():
                try:
                    msg = await self.interaction.edit_original_response(
                        content=content, attachments=attachments, view=view, allowed_mentions=NO_PINGS
                    )
                    self._original_id = msg.id
                    await self._announce(msg.id)
                    return
                except discord.HTTPException as exc:
                    if not is_dead_token(exc):
                        raise
                    self.expired = True
            # The token is dead: the same message goes on as the bot's own (no new message to look for),
            # or, where Discord refuses that, a new channel message takes over.
            if self._channel_message is None and await self._edit_original(
                content=content, attachments=attachments, view=view
            ):
                return
            if self._channel_message is None:
                kwargs: dict[str, Any] = {"content": content, "allowed_mentions": NO_PINGS}
                if file:
                    kwargs["files"] = to_files([file])
                if view is not discord.utils.MISSING and view is not None:
                    kwargs["view"] = view
                self._channel_message = await self.channel.send(**kwargs)
                await self._announce(self._channel_message.id)
            else:
                await self._channel_message.edit(content=content, attachments=attachments, view=view)
        except discord.HTTPException as exc:
            log.warning("progress update failed: %s", exc)

    async def final(
        self, text: str, *, files: Sequence[NamedFile] = (), view: Any = None, ping: bool = False
    ) -> list[int]:
        """Post the result; returns the ids of the messages that hold it.

        With a live token the original response becomes the result. After expiry the result is a new
        channel message that mentions the requester (the only ping allowed), since nobody is watching a
        message that stopped updating.
        """
        files, notes = fit_to_limit(files, self.upload_limit)
        chunks = split_message("\n".join([text, *notes]) if notes else text)
        ids: list[int] = []
        if self.token_alive():
            try:
                msg = await self.interaction.edit_original_response(
                    content=chunks[0], attachments=to_files(files), view=view, allowed_mentions=NO_PINGS
                )
                self._original_id = msg.id
                ids.append(msg.id)
                for chunk in chunks[1:]:
                    extra = await self.interaction.followup.send(chunk, allowed_mentions=NO_PINGS, wait=True)
                    ids.append(extra.id)
                return ids
            except discord.HTTPException as exc:
                if not is_dead_token(exc):
                    raise
                self.expired = True
                ids.clear()
        # A new message nobody is watching names its requester, once: an image result's header already
        # starts with the mention, an answer does not.
        body = "\n".join([text, *notes]) if notes else text
        mention = f"<@{self.user_id}>"
        chunks = split_message(body if body.startswith(mention) else f"{mention} {body}")
        first: dict[str, Any] = {
            "content": chunks[0],
            "files": to_files(files),
            "allowed_mentions": discord.AllowedMentions(users=[discord.Object(self.user_id)])
            if ping
            else NO_PINGS,
        }
        if view is not None:
            first["view"] = view
        msg = await self.channel.send(**first)
        ids.append(msg.id)
        for chunk in chunks[1:]:
            ids.append((await self.channel.send(chunk, allowed_mentions=NO_PINGS)).id)
        if self._channel_message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self._channel_message.delete()
        else:  # the progress message must not stay behind with a bar and a Cancel button
            await self._edit_original(content="Done: the result is in a new message below.", attachments=[])
        return ids

    async def _edit_original(self, **fields: Any) -> bool:
        """Edit the original response through the channel (the bot's own message), not the dead token."""
        if self._original_id is None or not self._original_editable or self.channel is None:
            return False
        try:
            await self.channel.get_partial_message(self._original_id).edit(
                allowed_mentions=NO_PINGS, **{"view": None, **fields}
            )
            return True
        except discord.HTTPException as exc:
            log.info("cannot edit the original response as a bot message (%s); posting anew", exc)
            self._original_editable = False
            return False

    async def fail(self, text: str) -> None:
        """End the job's message with an explanation (failure, timeout, cancellation), buttons removed."""
        await self.show(text, view=None, clear_files=True)


class MessageOutlet(_MessageIdRecorder):
    """Answers a plain message (an @mention or a reply) with a reply that is then edited as text streams."""

    def __init__(self, message: discord.Message, *, on_new_message: MessageHook | None = None) -> None:
        super().__init__(on_new_message)
        self.message = message
        self.user_id = message.author.id
        self.channel: Any = message.channel
        guild = message.guild
        self.upload_limit = guild.filesize_limit if guild else 10 * 1024 * 1024
        self._reply: discord.Message | None = None

    async def show(
        self, content: str, *, file: NamedFile | None = None, view: Any = discord.utils.MISSING
    ) -> None:
        try:
            if self._reply is None:
                self._reply = await self.message.reply(
                    content, mention_author=False, allowed_mentions=NO_PINGS
                )
                await self._announce(self._reply.id)
            else:
                await self._reply.edit(content=content, view=view)
        except discord.HTTPException as exc:
            log.warning("stream update failed: %s", exc)

    async def final(
        self, text: str, *, files: Sequence[NamedFile] = (), view: Any = None, ping: bool = False
    ) -> list[int]:
        files, notes = fit_to_limit(files, self.upload_limit)
        chunks = split_message("\n".join([text, *notes]) if notes else text)
        if self._reply is None:
            kwargs: dict[str, Any] = {
                "mention_author": False,
                "allowed_mentions": NO_PINGS,
                "files": to_files(files),
            }
            if view is not None:
                kwargs["view"] = view
            self._reply = await self.message.reply(chunks[0], **kwargs)
        else:
            await self._reply.edit(content=chunks[0], attachments=to_files(files), view=view)
        ids = [self._reply.id]
        for chunk in chunks[1:]:
            ids.append((await self.channel.send(chunk, allowed_mentions=NO_PINGS)).id)
        return ids

    async def fail(self, text: str) -> None:
        await self.show(text, view=None)
