"""/imagine and the buttons under its images (Re-roll, Edit prompt, Delete).

The Edit-prompt modal is answered by its custom_id (``on_interaction``), like the buttons, so a form
opened before a restart, or left open for hours, still starts its job.

Flow: cheap checks (access, prompt, limits) -> the job is recorded -> the engine accepts it (or refuses at
once: queue full, user limit) -> defer within Discord's 3 s -> a background follower shows the queue
position and ETA, a progress bar edited at most once a second (with the engine's preview images), then
the images with their buttons. The job's record holds prompt and parameters, so every button works on
any old message after any restart.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random
import time
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import InteractionOutlet, LatestProgress, Outlet, finish_if_open, follow_job, quietly
from bot.errors import NotAllowed, Refusal
from bot.formatting import format_eta, plural, progress_bar, queue_line, quote_prompt
from bot.judging import match_question, yes_probabilities
from bot.limits import IMAGINE
from bot.modlog import post_modlog, where
from bot.policy import Requester, check_negative_prompt, check_prompt, is_blank
from bot.prompt_craft import enhance_prompt
from bot.store import INTERACTION_ID, ImagineParams, JobKind, JobRecord, JobStatus, ServerSettings
from bot.views import (
    DeleteButton,
    EditPromptButton,
    EditPromptModal,
    InfoButton,
    ProposedPromptButton,
    RerollButton,
    UpscaleButton,
    VaryButton,
    edit_modal_submission,
    progress_view,
    result_view,
    upscaled_view,
)
from janus_engine.errors import JanusError
from janus_engine.protocol import (
    GenerateRequest,
    GenerateResult,
    Progress,
    Queued,
    Started,
    TextDelta,
    UnderstandResult,
)

if TYPE_CHECKING:
    from bot.app import JanusBot
    from janus_engine.engine import JobHandle

log = logging.getLogger(__name__)
MAX_SEED = 2**31 - 1
_T = TypeVar("_T", int, float)


_BUTTONS = (
    RerollButton,
    EditPromptButton,
    DeleteButton,
    InfoButton,
    VaryButton,
    UpscaleButton,
    ProposedPromptButton,
)
LINEAGE_DEPTH = 5  # how far Info follows "re-rolled from"


class ImagineCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*_BUTTONS)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*_BUTTONS)

    @app_commands.command(name="imagine", description="Generate images from a text prompt with Janus-Pro")
    @app_commands.describe(
        prompt="What to draw",
        count="How many images (default from the server settings)",
        guidance="Classifier-free guidance: higher follows the prompt more closely (default 5)",
        temperature="Sampling temperature: higher is more varied (default 1.0)",
        seed="Seed for reproducible results",
        negative="What the images should not show (e.g. blurry, text, watermark)",
        best_of="Draw this many candidates and post the best ones, as Janus itself judges them",
        enhance="Let Janus rewrite your prompt into a detailed one first (shown with the images)",
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 4000],
        count: app_commands.Range[int, 1, 10] | None = None,
        guidance: app_commands.Range[float, 1.01, 100.0] | None = None,
        temperature: app_commands.Range[float, 0.0, 10.0] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        negative: app_commands.Range[str, 1, 4000] | None = None,
        best_of: app_commands.Range[int, 2, 16] | None = None,
        enhance: bool = False,
    ) -> None:
        await self.start(
            interaction,
            prompt=prompt,
            count=count,
            guidance=guidance,
            temperature=temperature,
            seed=seed,
            negative_prompt=negative or "",
            best_of=best_of or 0,
            enhance=enhance,
        )

    # ---- the shared flow (command, Re-roll, Edit prompt) ---------------------------------------------

    async def start(
        self,
        interaction: discord.Interaction,
        *,
        prompt: str,
        count: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        parent_job: str | None = None,
        negative_prompt: str = "",
        best_of: int = 0,
        enhance: bool = False,
        enhanced_from: str = "",
    ) -> None:
        bot = self.bot
        who = bot.access.requester(interaction)
        settings = await bot.access.admit(who)
        g = bot.config.generation
        prompt = prompt.strip()
        if is_blank(prompt):  # zero-width or format characters alone: nothing to draw
            raise Refusal("The prompt is empty.")
        if len(prompt) > g.max_prompt_chars:
            raise Refusal(f"The prompt is {len(prompt)} characters long; the limit is {g.max_prompt_chars}.")
        check_prompt(bot.config.access, who, settings, prompt)
        negative_prompt = negative_prompt.strip()
        if len(negative_prompt) > g.max_prompt_chars:
            raise Refusal(
                f"The negative prompt is {len(negative_prompt)} characters long; "
                f"the limit is {g.max_prompt_chars}."
            )
        check_negative_prompt(bot.config.access, negative_prompt)
        # Discord's client keeps options within the command's declared ranges, but the interaction's
        # payload is the sender's to write: each value is checked here (whole, finite, in range), so
        # nothing out of range is counted against a cap, recorded or handed to the engine.
        if count is not None and not whole_in(count, 1, g.max_count):
            raise Refusal(f"The number of images must be a whole number from 1 to {g.max_count}.")
        count = count or _or(settings.default_count, g.default_count)
        if count > g.max_count:  # a server's default above a lowered max_count
            raise Refusal(f"At most {g.max_count} images per request.")
        if guidance is None:
            guidance = _or(settings.default_guidance, g.default_guidance)
        if not number_in(guidance, g.min_guidance, g.max_guidance):
            raise Refusal(f"Guidance must be between {g.min_guidance} and {g.max_guidance}.")
        if temperature is None:
            temperature = _or(settings.default_temperature, g.default_temperature)
        if not number_in(temperature, 0.0, g.max_temperature):
            raise Refusal(f"Temperature must be between 0 and {g.max_temperature} (0 means greedy).")
        if seed is not None and not whole_in(seed, 0, MAX_SEED):
            raise Refusal(f"The seed must be a whole number from 0 to {MAX_SEED}.")
        if best_of:
            limit = min(g.max_best_of, bot.config.engine.max_images_per_batch)
            if not whole_in(best_of, count + 1, limit):
                raise Refusal(f"best_of must be more than count ({count}) and at most {limit}.")
        moderate = bool(_or(settings.moderation, bot.config.moderation.enabled)) and not who.channel_nsfw
        seed = seed if seed is not None else random.randint(0, MAX_SEED)
        params = ImagineParams(
            count, guidance, temperature, parent_job, negative_prompt, best_of, moderate, enhanced_from
        )
        # atomic in the database; every candidate counts
        reservation = await bot.limiter.reserve(
            who.user_id, IMAGINE, params.drawn, roles=who.role_ids, guild_id=who.guild_id
        )
        try:
            if enhance:
                prompt, params = await self._enhance(interaction, who, settings, prompt, params)
            await self._submit(interaction, who, prompt, params, seed)
        except BaseException:
            await bot.limiter.release(reservation)  # refused or failed before the engine took it
            raise

    async def _submit(
        self,
        interaction: discord.Interaction,
        who: Requester,
        prompt: str,
        params: ImagineParams,
        seed: int,
    ) -> None:
        """Record the job, hand it to the engine, defer, and follow it in the background."""
        bot = self.bot
        job = await bot.store.create_job(
            JobKind.IMAGINE,
            user_id=who.user_id,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            prompt=prompt,
            params={**params.as_params(), INTERACTION_ID: interaction.id},
            seed=seed,
        )
        request = GenerateRequest(
            request_id=job.id,
            prompt=prompt,
            n_images=params.drawn,
            guidance=params.guidance,
            temperature=params.temperature,
            seed=seed,
            preview_every=bot.config.engine.preview_every,
            negative_prompt=params.negative_prompt,
        )
        try:
            handle = await bot.engine.submit(request, user_id=str(who.user_id))
        except JanusError as exc:  # queue full, user limit, invalid: the record says why, nothing dangles
            await bot.store.finish_job(job.id, JobStatus.FAILED, error=exc.user_message)
            raise
        try:
            if not interaction.response.is_done():  # enhance answered (deferred) already
                await interaction.response.defer(thinking=True)
        except Exception:  # Discord gave up on this interaction (or the network did): nobody would see it
            await bot.engine.cancel(job.id)
            await bot.store.finish_job(
                job.id, JobStatus.FAILED, error="Discord did not accept the answer in time"
            )
            raise
        interaction.extras["public_defer"] = True
        interaction.extras["answered"] = True  # from here on the follower owns the message
        outlet = InteractionOutlet(
            interaction, on_new_message=lambda message_id: bot.store.add_job_messages(job.id, [message_id])
        )
        bot.run_in_background(self._deliver_images(outlet, handle, job))

    async def _deliver_images(self, outlet: InteractionOutlet, handle: JobHandle, job: JobRecord) -> None:
        """Turn the engine's events into one message: queue line, progress bar, then the images."""
        render = _ImageRender(self.bot, outlet, job)
        await follow_job(handle, render, f"imagine job {job.id}", self.bot.metrics)

    # ---- buttons -------------------------------------------------------------------------------------

    async def _job(self, job_id: str) -> JobRecord:
        job = await self.bot.store.get_job(job_id)
        if job is None or job.kind != JobKind.IMAGINE:
            raise Refusal(
                "This image's job is no longer stored (it may have been forgotten), so it cannot be reused."
            )
        return job

    async def reroll(self, interaction: discord.Interaction, job_id: str) -> None:
        job = await self._job(job_id)
        p = ImagineParams.of(job)
        await self.start(
            interaction,
            prompt=job.prompt,
            count=p.count,
            guidance=p.guidance,
            temperature=p.temperature,
            seed=None,  # a new seed is the point of a re-roll
            parent_job=job.id,
            negative_prompt=p.negative_prompt,
            best_of=p.best_of,
            enhanced_from=p.enhanced_from,  # the rewrite is reused, not asked for again
        )

    async def _enhance(
        self,
        interaction: discord.Interaction,
        who: Requester,
        settings: ServerSettings,
        prompt: str,
        params: ImagineParams,
    ) -> tuple[str, ImagineParams]:
        """Defer (the rewrite takes longer than Discord's 3 seconds), show that Janus is at work, and
        return the rewritten prompt, checked like a typed one, with the original kept in the params."""
        await interaction.response.defer(thinking=True)
        interaction.extras["public_defer"] = True
        await interaction.edit_original_response(
            content=f"<@{who.user_id}>: {quote_prompt(prompt)}\nJanus is writing a detailed prompt…",
            allowed_mentions=discord.AllowedMentions.none(),
        )
        rewrite = await enhance_prompt(self.bot, prompt, user_id=who.user_id)
        check_prompt(self.bot.config.access, who, settings, rewrite)
        return rewrite, dataclasses.replace(params, enhanced_from=prompt)

    async def imagine_proposed(self, interaction: discord.Interaction, job_id: str, index: int) -> None:
        """/imagine the ``index``-th prompt that /describe prompts:True proposed, by whoever presses."""
        job = await self.bot.store.get_job(job_id)
        prompts = job.params.get("prompts") if job is not None else None
        if not prompts or not 0 <= index < len(prompts):
            raise Refusal("These proposed prompts are no longer stored (they may have been forgotten).")
        await self.start(interaction, prompt=str(prompts[index]))

    async def vary(self, interaction: discord.Interaction, job_id: str, index: int) -> None:
        """One new image of that image's prompt and settings, with the seed next to the job's (Janus has
        no image-to-image: a variation is the same request a step away in seed)."""
        job = await self._job(job_id)
        p = ImagineParams.of(job)
        base = job.seed if job.seed is not None else 0
        await self.start(
            interaction,
            prompt=job.prompt,
            count=1,
            guidance=p.guidance,
            temperature=p.temperature,
            seed=(base + 1 + index) % (MAX_SEED + 1),
            parent_job=job.id,
            negative_prompt=p.negative_prompt,
            enhanced_from=p.enhanced_from,
        )

    async def upscale(self, interaction: discord.Interaction, job_id: str, index: int) -> None:
        """That one image of the grid as its own message (a file at full size), read back from the
        message the button sits on, so it works after a restart and needs no copy of the images."""
        job = await self._job(job_id)
        attachments = interaction.message.attachments if interaction.message is not None else []
        if not 0 <= index < len(attachments):
            raise Refusal("That image is no longer attached to this message.")
        await self.bot.access.admit(self.bot.access.requester(interaction))
        data = await attachments[index].read()
        await interaction.response.send_message(
            f"<@{interaction.user.id}>: image {index + 1} of {quote_prompt(job.prompt, 200)}",
            file=discord.File(io.BytesIO(data), filename=attachments[index].filename),
            view=upscaled_view(job.id, index),
            allowed_mentions=discord.AllowedMentions.none(),
        )

    async def show_info(self, interaction: discord.Interaction, job_id: str) -> None:
        """Everything that made these images (ephemeral): prompt, negative, seed, guidance, temperature,
        count, best-of, and the jobs it was re-rolled or varied from."""
        job = await self._job(job_id)
        p = ImagineParams.of(job)
        lines = [f"Prompt: {quote_prompt(job.prompt, 500)}"]
        if p.negative_prompt:
            lines.append(f"Negative: {quote_prompt(p.negative_prompt, 300)}")
        if p.enhanced_from:
            lines.append(f"Enhanced by Janus from: {quote_prompt(p.enhanced_from, 300)}")
        drawn = plural(p.count, "image") + (f" (best of {p.best_of})" if p.best_of else "")
        lines.append(f"Seed {job.seed} · guidance {p.guidance:g} · temperature {p.temperature:g} · {drawn}")
        lineage: list[str] = []
        parent = p.parent_job
        while parent and len(lineage) < LINEAGE_DEPTH:
            record = await self.bot.store.get_job(parent)
            if record is None:
                lineage.append(f"`{parent}` (no longer stored)")
                break
            lineage.append(f"`{record.id}` {quote_prompt(record.prompt, 60)} (seed {record.seed})")
            parent = ImagineParams.of(record).parent_job if record.kind == JobKind.IMAGINE else None
        if lineage:
            lines.append("From: " + " ← ".join(lineage))
        made = int(job.created_at.timestamp())
        lines.append(f"Job `{job.id}` by <@{job.user_id}>, <t:{made}:R> · {job.status.value}")
        await interaction.response.send_message(
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    async def open_edit_modal(self, interaction: discord.Interaction, job_id: str) -> None:
        job = await self._job(job_id)
        await self.bot.access.admit(self.bot.access.requester(interaction))
        modal = EditPromptModal(job.id, job.prompt, self.bot.config.generation.max_prompt_chars)
        await interaction.response.send_modal(modal)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """An Edit-prompt modal submitted, whenever and by whichever process it was opened: the job id and
        the prompt come from the submission (discord.py keeps no modal in memory for it)."""
        submission = edit_modal_submission(interaction)
        if submission is None:
            return
        job_id, prompt = submission
        try:
            await self.submit_edited(interaction, job_id, prompt)
        except Exception as exc:
            await self.bot.report_error(interaction, exc)

    async def submit_edited(self, interaction: discord.Interaction, job_id: str, prompt: str) -> None:
        job = await self._job(job_id)
        p = ImagineParams.of(job)
        await self.start(
            interaction,
            prompt=prompt,
            count=p.count,
            guidance=p.guidance,
            temperature=p.temperature,
            parent_job=job.id,
            negative_prompt=p.negative_prompt,
            best_of=p.best_of,
        )

    async def delete_result(self, interaction: discord.Interaction, job_id: str) -> None:
        job = await self.bot.store.get_job(job_id)
        owner_id = job.user_id if job is not None else _requester_of_message(interaction.message)
        if interaction.user.id != owner_id and not self.bot.access.is_owner(interaction.user.id):
            raise NotAllowed("Only the person who asked for these images can delete them.")
        await interaction.response.defer()
        await interaction.delete_original_response()  # for a button, "original" is the button's message


class _ImageRender:
    """How an /imagine job looks while it runs and when it ends (see :func:`bot.delivery.follow_job`)."""

    def __init__(self, bot: JanusBot, outlet: InteractionOutlet, job: JobRecord) -> None:
        self.bot, self.job = bot, job
        self.outlet: Outlet = outlet
        self.params = ImagineParams.of(job)
        drawn = plural(self.params.count, "image")
        if self.params.best_of:
            drawn += f" (best of {self.params.best_of})"
        self.header = f"<@{job.user_id}>: {quote_prompt(job.prompt)} · {drawn}"
        self.view = progress_view(job.id)
        self.progress = LatestProgress(outlet, bot.config.ui.progress_interval_s)
        self.width = bot.config.ui.progress_bar_width
        self.started_at = time.monotonic()
        self.delivered = False

    async def queued(self, event: Queued) -> None:
        line = queue_line(event.position, event.eta_s)
        await self.progress.update(f"{self.header}\n{line}", view=self.view)

    async def started(self, event: Started) -> None:
        job_id = self.job.id
        await quietly(self.bot.store.mark_job_running(job_id), f"mark job {job_id} running")
        eta = f", ETA {format_eta(event.eta_s)}" if event.eta_s is not None else ""
        await self.progress.update(f"{self.header}\nStarting{eta}…", view=self.view)

    async def step(self, event: Progress | TextDelta) -> None:
        if isinstance(event, Progress) and event.step < event.total:
            file = ("preview.png", event.preview) if event.preview else None
            bar = progress_bar(event.step, event.total, self.width)
            await self.progress.update(f"{self.header}\n{bar}", file=file, view=self.view)

    async def done(self, result: GenerateResult | UnderstandResult) -> None:
        if not isinstance(result, GenerateResult):
            raise TypeError(f"an imagine job ended with {type(result).__name__}")
        job = self.job
        p = self.params
        images = list(result.images)
        chosen, notes = list(range(len(images))), []
        if p.best_of:
            await self.outlet.show(f"{self.header}\nJanus is judging the {len(images)} candidates…")
            chosen, note = await self._rank(images)
            notes.append(note)
        if p.moderate and chosen:
            await self.outlet.show(f"{self.header}\nChecking the images…")
            chosen, note = await self._moderate(images, chosen)
            if note:
                notes.append(note)
        files = [(f"janus-{job.id[:8]}-{n + 1}.png", images[i]) for n, i in enumerate(chosen)]
        text = f"{self.header}\nseed {result.seed} · guidance {p.guidance:g} · temperature {p.temperature:g}"
        if p.negative_prompt:
            text += f"\nnegative: {quote_prompt(p.negative_prompt, 200)}"
        if p.enhanced_from:
            text += f"\nenhanced by Janus from: {quote_prompt(p.enhanced_from, 200)}"
        text += "".join(f"\n{note}" for note in notes)
        ids = await self.outlet.final(text, files=files, view=result_view(job.id, len(files)), ping=True)
        self.delivered = True
        await self.bot.store.finish_job(
            job.id,
            JobStatus.DONE,
            seed=result.seed,
            timings={"total_s": round(time.monotonic() - self.started_at, 3)},
            message_ids=ids,
        )

    async def _rank(self, images: list[bytes]) -> tuple[list[int], str]:
        """The best ``count`` candidates by Janus' own P("Yes") to "Does this image show: <prompt>?"."""
        count = self.params.count
        try:
            scores = await yes_probabilities(
                self.bot, images, match_question(self.job.prompt), user_id=self.job.user_id
            )
        except JanusError as exc:
            log.warning("job %s: could not rank its candidates: %s", self.job.id, exc.user_message)
            return list(range(count)), f"best_of: the candidates could not be judged ({exc.user_message})"
        order = sorted(range(len(images)), key=lambda i: -scores[i])[:count]
        shown = ", ".join(f"{scores[i]:.2f}" for i in order)
        return order, f"best {count} of {len(images)}, by Janus' own judgement (P(match) {shown})"

    async def _moderate(self, images: list[bytes], chosen: list[int]) -> tuple[list[int], str]:
        """Withhold the images Janus flags with the moderation question (all of them if it cannot ask:
        this channel is not NSFW, so an unchecked image is not posted). Logged and audited."""
        rules = self.bot.config.moderation
        job = self.job
        try:
            flags = await yes_probabilities(
                self.bot, [images[i] for i in chosen], rules.question, user_id=job.user_id
            )
        except JanusError as exc:
            log.warning("job %s: moderation could not run: %s", job.id, exc.user_message)
            blocked = list(chosen)
            note = "The images could not be checked by this server's image filter, so they are not shown."
            scores: list[float | None] = [None] * len(chosen)
        else:
            blocked = [i for i, flag in zip(chosen, flags, strict=True) if flag > rules.threshold]
            note = (
                f"{plural(len(blocked), 'image')} withheld by this server's image filter." if blocked else ""
            )
            scores = [round(f, 4) for f in flags]
        if blocked:
            log.info("job %s: moderation withheld %d of %d image(s)", job.id, len(blocked), len(chosen))
            await post_modlog(
                self.bot,
                job.guild_id,
                f"{where(job.user_id, job.channel_id)}: the image filter withheld {len(blocked)} of "
                f"{len(chosen)} image(s) of job `{job.id}` (P(yes) {', '.join(map(str, scores))})",
            )
            await quietly(
                self.bot.store.record_audit(
                    actor_id=job.user_id,
                    action="moderation.withheld",
                    guild_id=job.guild_id,
                    target=job.id,
                    details={"images": len(blocked), "of": len(chosen), "scores": scores},
                ),
                "record a moderation hit",
            )
        return [i for i in chosen if i not in blocked], note

    async def failed(self, reason: str) -> None:
        await quietly(
            self.bot.store.finish_job(self.job.id, JobStatus.FAILED, error=reason), "record a failure"
        )
        await self.outlet.fail(f"{self.header}\nSorry, this failed: {reason}")

    async def cancelled(self) -> None:
        await quietly(self.bot.store.finish_job(self.job.id, JobStatus.CANCELLED), "record a cancel")
        await self.outlet.fail(f"{self.header}\nCancelled.")

    async def crashed(self) -> str:
        work = finish_if_open(self.bot.store, self.job.id, "internal error while delivering")
        await quietly(work, "close the job")
        return f"{self.header}\nSorry, something went wrong on our side; it was logged."


def whole_in(value: object, lo: int, hi: int) -> bool:
    """An integer (not a bool, not a string of digits) from ``lo`` to ``hi``."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def number_in(value: object, lo: float, hi: float) -> bool:
    """A finite number from ``lo`` to ``hi`` (NaN fails every comparison but ``!=``: it is refused by
    name, like infinity, rather than by the luck of how a comparison is written)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and lo <= value <= hi


def _or(server: _T | None, config: _T) -> _T:
    """The server's setting where it has one, else the config's default."""
    return server if server is not None else config


def _requester_of_message(message: discord.Message | None) -> int | None:
    meta = getattr(message, "interaction_metadata", None)
    return meta.user.id if meta is not None else None


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(ImagineCog(bot))
