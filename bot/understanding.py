"""Answering questions about text and images with conversation memory (/chat, /describe, @mentions).

The order of steps is what keeps the database clean: the model context is built from the stored history
plus the new turn held in memory, and the user's turn is written together with the answer, only once
the model has produced it. A refused, failed or cancelled request therefore leaves no half conversation
behind (a describe job still gets its finished record with the reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.delivery import InteractionOutlet, LatestProgress, Outlet, finish_if_open, follow_job, quietly
from bot.errors import Refusal
from bot.formatting import clip, queue_line
from bot.limits import CHAT
from bot.policy import Requester, check_prompt, is_blank
from bot.store import (
    INTERACTION_ID,
    REPLY_TO,
    ContextBudget,
    ConversationRef,
    JobKind,
    JobStatus,
    ServerSettings,
)
from bot.tokens import TOKENS_PER_TURN
from bot.uploads import check_attachments, read_images
from bot.views import progress_view
from janus_engine.errors import InvalidRequest, JanusError, PromptTooLong
from janus_engine.protocol import (
    GenerateResult,
    Progress,
    Queued,
    Started,
    TextDelta,
    TextSampling,
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.text import strip_control

if TYPE_CHECKING:
    from bot.app import JanusBot
    from janus_engine.engine import JobHandle

log = logging.getLogger(__name__)

DOWNLOAD_WINDOW_S = 1.5  # of Discord's 3 s to answer, how long attachments may take before we defer


@dataclass
class Question:
    """One user turn on its way to the model."""

    who: Requester
    settings: ServerSettings
    text: str
    images: list[bytes]
    # Every question is a recorded job (with a Cancel button while it runs): a restart then finds its
    # message and says the answer was interrupted, instead of leaving "thinking..." there for good.
    kind: JobKind = JobKind.CHAT
    user_message_ids: tuple[int, ...] = ()  # an @mention: the user's message (the answer replies to it)
    interaction_id: int | None = None  # a slash command or button: the interaction it came with
    conversation: ConversationRef | None = None  # a reply continues the conversation it replied to


def check_question(bot: JanusBot, who: Requester, settings: ServerSettings, text: str) -> str:
    """Cheap checks before deferring: length and blocked patterns (the caller then reserves a use).
    Returns the text, or "" when nothing in it is visible (the caller asks for a question)."""
    text = text.strip()
    limit = bot.config.understanding.max_message_chars
    if len(text) > limit:
        raise Refusal(f"Your message is {len(text)} characters long; the limit is {limit}.")
    check_prompt(bot.config.access, who, settings, text)
    return "" if is_blank(text) else text  # zero-width characters alone say nothing: no question


@dataclass
class Submitted:
    """A question the engine accepted; :meth:`follow` streams it into an outlet in the background."""

    handle: JobHandle
    conversation: ConversationRef
    job_id: str

    def follow(self, bot: JanusBot, outlet: Outlet, q: Question) -> None:
        job_id = self.job_id
        outlet.on_new_message = lambda message_id: bot.store.add_job_messages(job_id, [message_id])
        bot.run_in_background(_stream_answer(bot, outlet, self.handle, q, self.conversation, self.job_id))


async def submit(bot: JanusBot, q: Question) -> Submitted:
    """Build the model context and hand the question to the engine (refusals raise here, synchronously)."""
    key = bot.access.conversation_key(q.who, q.settings)
    conv = q.conversation or await bot.store.resolve_conversation(key)
    turns = await _model_turns(bot, conv.id, q.text, q.images)
    u = bot.config.understanding
    job = await bot.store.create_job(
        q.kind,
        user_id=q.who.user_id,
        guild_id=q.who.guild_id,
        channel_id=q.who.channel_id,
        # A chat's words live in the conversation's turns, which /forget removes; its job row keeps
        # none of them (a described image's question is kept, like an /imagine prompt).
        prompt="" if q.kind == JobKind.CHAT else q.text,
        params={"images": len(q.images), "conversation_id": conv.id, **_answer_place(q)},
    )
    job_id = job.id
    request = UnderstandRequest(
        request_id=job_id,
        turns=turns,
        sampling=TextSampling(temperature=u.temperature, top_p=u.top_p, max_new_tokens=u.max_new_tokens),
        conversation_id=str(conv.id),
        system_prompt=q.settings.persona if q.settings.persona is not None else u.system_prompt,
    )
    try:
        handle = await bot.engine.submit(request, user_id=str(q.who.user_id))
    except JanusError as exc:
        await bot.store.finish_job(job_id, JobStatus.FAILED, error=exc.user_message)
        raise
    return Submitted(handle, conv, job_id)


def _answer_place(q: Question) -> dict[str, int]:
    """Where the answer will appear, recorded with the job (see ``bot.store.INTERACTION_ID``)."""
    if q.interaction_id is not None:
        return {INTERACTION_ID: q.interaction_id}
    return {REPLY_TO: q.user_message_ids[0]} if q.user_message_ids else {}


async def _model_turns(
    bot: JanusBot, conversation_id: int, text: str, images: list[bytes]
) -> tuple[Turn, ...]:
    """Stored history that fits beside the new turn, then the new turn (not yet stored)."""
    facts = bot.facts
    budget = facts.history_budget(
        bot.config.memory.context_token_budget, bot.config.understanding.max_new_tokens
    )
    per_image = facts.image_tokens + 2
    cost = facts.count_tokens(text) + len(images) * per_image + TOKENS_PER_TURN
    if cost > budget:
        raise PromptTooLong(
            "Your message and its images do not fit the model's context; shorten it or send fewer images."
        )
    history: tuple[Turn, ...] = ()
    try:
        ctx = await bot.store.build_context(
            conversation_id,
            ContextBudget(budget - cost, tokens_per_image=per_image, tokens_per_turn=TOKENS_PER_TURN),
        )
        history = ctx.turns
    except InvalidRequest:  # no turns yet, or even the newest stored turn no longer fits: start fresh
        history = ()
    return (*history, Turn("user", text, tuple(images)))


async def _stream_answer(
    bot: JanusBot, outlet: Outlet, handle: JobHandle, q: Question, conv: ConversationRef, job_id: str
) -> None:
    """Stream the answer into the outlet, store the exchange, then post the answer."""
    render = _AnswerRender(bot, outlet, q, conv, job_id)
    await follow_job(handle, render, f"answering job {job_id}", bot.metrics)


class _AnswerRender:
    """How a streamed answer looks while it runs and when it ends (see :func:`bot.delivery.follow_job`)."""

    def __init__(
        self, bot: JanusBot, outlet: Outlet, q: Question, conv: ConversationRef, job_id: str
    ) -> None:
        self.bot, self.outlet, self.q, self.conv, self.job_id = bot, outlet, q, conv, job_id
        self.progress = LatestProgress(outlet, bot.config.ui.progress_interval_s)
        self.view_kw: dict[str, Any] = {"view": progress_view(job_id)}
        self.answer = ""
        self.started_at = time.monotonic()
        self.delivered = False

    async def queued(self, event: Queued) -> None:
        await self.progress.update(queue_line(event.position, event.eta_s), **self.view_kw)

    async def started(self, event: Started) -> None:
        job_id = self.job_id
        await quietly(self.bot.store.mark_job_running(job_id), f"mark job {job_id} running")

    async def step(self, event: Progress | TextDelta) -> None:
        if isinstance(event, TextDelta):
            self.answer += event.text  # raw: an escape sequence may span two deltas
            await self.progress.update(clip(strip_control(self.answer) + " ▌"), **self.view_kw)

    async def done(self, result: GenerateResult | UnderstandResult) -> None:
        if not isinstance(result, UnderstandResult):
            raise TypeError(f"a question ended with {type(result).__name__}")
        bot = self.bot
        # Posted and stored without terminal escapes or control characters (a model can emit them).
        self.answer = strip_control(result.text).strip() or "(the model gave an empty answer)"
        bot_turn_id = await _remember(bot, self.q, self.conv, self.answer)
        ids = await self.outlet.final(self.answer, view=None)
        self.delivered = True
        if bot_turn_id is not None:
            await bot.store.add_turn_messages(bot_turn_id, ids)
        await bot.store.finish_job(
            self.job_id,
            JobStatus.DONE,
            timings={"total_s": time.monotonic() - self.started_at},
            message_ids=ids,
        )

    async def failed(self, reason: str) -> None:
        await _finish_quietly(self.bot, self.job_id, reason)
        await self.outlet.fail(f"Sorry, that failed: {reason}")

    async def cancelled(self) -> None:
        await quietly(self.bot.store.finish_job(self.job_id, JobStatus.CANCELLED), "record a cancel")
        await self.outlet.fail("Cancelled.")

    async def crashed(self) -> str:
        await _finish_quietly(self.bot, self.job_id, "The bot hit an internal error while answering.")
        return "Sorry, something went wrong on our side while answering; it was logged."


async def _remember(bot: JanusBot, q: Question, conv: ConversationRef, answer: str) -> int | None:
    """Store the exchange before the answer is shown (a follow-up sent the instant it appears must
    already find it); returns the assistant turn's id. If the store fails (the conversation was forgotten
    meanwhile, a broken database), the user still gets the answer, only without memory of it."""
    try:
        _, bot_turn = await bot.store.append_exchange(
            conv.id,
            q.text,
            answer,
            author_id=q.who.user_id,
            images=q.images,
            message_ids=q.user_message_ids,
        )
    except Exception:
        log.exception("could not store an exchange in conversation %s", conv.id)
        return None
    return bot_turn.id


async def _finish_quietly(bot: JanusBot, job_id: str, reason: str) -> None:
    await quietly(finish_if_open(bot.store, job_id, reason), f"record the failure of job {job_id}")


async def answer_interaction(
    bot: JanusBot,
    interaction: Any,
    *,
    text: str,
    attachments: list[Any],
    kind: JobKind,
) -> None:
    """The interaction side of /chat, /describe, "Describe image" and the Describe button.

    Refusals should be ephemeral, and after a public defer Discord no longer allows that (the first
    follow-up inherits the defer's visibility). So everything is checked before deferring: metadata,
    then the download and decode (given DOWNLOAD_WINDOW_S of the 3 s), then the engine's acceptance.
    Only a download slower than the window is finished after deferring; its errors then replace the
    "thinking" message in public, still saying why.
    """
    who = bot.access.requester(interaction)
    settings = await bot.access.admit(who)
    text = check_question(bot, who, settings, text) or (
        bot.config.understanding.default_question if attachments else ""
    )
    if not text and not attachments:
        raise Refusal("Ask me something (or attach an image).")
    check_attachments(attachments, bot.config.understanding)
    reservation = await bot.limiter.reserve(  # atomic in the database
        who.user_id, CHAT, roles=who.role_ids, guild_id=who.guild_id
    )
    try:
        submitted, q = await _download_and_submit(bot, interaction, who, settings, text, attachments, kind)
    except BaseException:
        await bot.limiter.release(reservation)  # refused or failed before the engine took it
        raise
    interaction.extras["answered"] = True  # from here on the follower owns the message
    submitted.follow(bot, InteractionOutlet(interaction), q)


async def _download_and_submit(
    bot: JanusBot,
    interaction: Any,
    who: Requester,
    settings: ServerSettings,
    text: str,
    attachments: list[Any],
    kind: JobKind,
) -> tuple[Submitted, Question]:
    download = asyncio.ensure_future(read_images(attachments, bot.config.understanding))
    try:
        images = await asyncio.wait_for(asyncio.shield(download), DOWNLOAD_WINDOW_S)
    except TimeoutError:
        await _defer(interaction)
        images = await download
    q = Question(who, settings, text, images, kind=kind, interaction_id=interaction.id)
    submitted = await submit(bot, q)
    if not interaction.response.is_done():
        try:
            await _defer(interaction)
        except Exception:  # Discord gave up on this interaction: nobody would see the answer
            await bot.engine.cancel(submitted.job_id)
            await _finish_quietly(bot, submitted.job_id, "Discord did not accept the answer in time")
            raise
    return submitted, q


async def _defer(interaction: Any) -> None:
    await interaction.response.defer(thinking=True)
    interaction.extras["public_defer"] = True
