"""Buttons that keep working after restarts: DynamicItems whose custom_id carries the job id.

A plain ``ui.View`` dies after 180 s or with the process ("This interaction failed"). Here every button's
custom_id is ``janus:<action>:<job id>[:<image index>]``; the cog that owns a button registers its class
with ``add_dynamic_items`` in ``cog_load``, and discord.py rebuilds the button from any message's
custom_id, after any restart. The job's prompt, parameters and owner live in the database, so the button
needs nothing else. The callbacks only route to their cog (found by name, through the small Protocols
below, so this module imports no cog), which holds the behaviour; errors go to the bot's single reporter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias, runtime_checkable

import discord
from discord import ui

if TYPE_CHECKING:
    from bot.app import JanusBot

_JOB = r"(?P<job>[A-Za-z0-9_-]{1,64})"


Interaction: TypeAlias = "discord.Interaction[JanusBot]"


@runtime_checkable
class ImagineActions(Protocol):
    """What the image buttons need from ``ImagineCog``."""

    async def reroll(self, interaction: Interaction, job_id: str) -> None: ...
    async def open_edit_modal(self, interaction: Interaction, job_id: str) -> None: ...
    async def submit_edited(self, interaction: Interaction, job_id: str, prompt: str) -> None: ...
    async def delete_result(self, interaction: Interaction, job_id: str) -> None: ...
    async def show_info(self, interaction: Interaction, job_id: str) -> None: ...
    async def imagine_proposed(self, interaction: Interaction, job_id: str, index: int) -> None: ...
    async def vary(self, interaction: Interaction, job_id: str, index: int) -> None: ...
    async def upscale(self, interaction: Interaction, job_id: str, index: int) -> None: ...


@runtime_checkable
class DescribeActions(Protocol):
    """What the Describe button needs from ``DescribeCog``."""

    async def describe_generated(self, interaction: Interaction, job_id: str, index: int) -> None: ...


@runtime_checkable
class JobActions(Protocol):
    """What the Cancel button needs from ``JobsCog``."""

    async def cancel_from_button(self, interaction: Interaction, job_id: str) -> None: ...


def _cog(interaction: Interaction, name: str) -> object:
    cog = interaction.client.get_cog(name)
    if cog is None:
        raise RuntimeError(f"the {name} cog is not loaded")
    return cog


def imagine_actions(interaction: Interaction) -> ImagineActions:
    cog = _cog(interaction, "ImagineCog")
    assert isinstance(cog, ImagineActions)
    return cog


def describe_actions(interaction: Interaction) -> DescribeActions:
    cog = _cog(interaction, "DescribeCog")
    assert isinstance(cog, DescribeActions)
    return cog


def job_actions(interaction: Interaction) -> JobActions:
    cog = _cog(interaction, "JobsCog")
    assert isinstance(cog, JobActions)
    return cog


class _Routed:
    """What every button of ours does when pressed: its ``run``, with errors to the bot's reporter.

    (Plain mixins, because discord.py requires a template on every DynamicItem subclass.)"""

    action = ""
    label = ""
    style = discord.ButtonStyle.secondary

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        itx: Interaction = interaction  # the client is the JanusBot (these items are its own)
        try:
            await self.run(itx)
        except Exception as exc:
            await itx.client.report_error(itx, exc)

    async def run(self, interaction: Interaction) -> None:
        raise NotImplementedError


class _JobButton(_Routed):
    """Mixin for the job buttons, ``janus:<action>:<job id>``: build the custom_id and parse it back."""

    def __init__(self, job_id: str, *, row: int | None = None) -> None:
        super().__init__(  # type: ignore[call-arg]  # DynamicItem.__init__, next in the MRO
            ui.Button(label=self.label, style=self.style, custom_id=f"janus:{self.action}:{job_id}", row=row)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["job"])


class CancelButton(_JobButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:cancel:{_JOB}"):
    action, label, style = "cancel", "Cancel", discord.ButtonStyle.danger

    async def run(self, interaction: Interaction) -> None:
        await job_actions(interaction).cancel_from_button(interaction, self.job_id)


class RerollButton(_JobButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:reroll:{_JOB}"):
    action, label, style = "reroll", "Re-roll", discord.ButtonStyle.primary

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).reroll(interaction, self.job_id)


class EditPromptButton(_JobButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:edit:{_JOB}"):
    action, label = "edit", "Edit prompt"

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).open_edit_modal(interaction, self.job_id)


class DeleteButton(_JobButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:delete:{_JOB}"):
    action, label = "delete", "Delete"

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).delete_result(interaction, self.job_id)


class InfoButton(_JobButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:info:{_JOB}"):
    action, label = "info", "Info"

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).show_info(interaction, self.job_id)


class _ImageButton(_Routed):
    """Mixin for the per-image buttons: ``janus:<action>:<job id>:<image index>``."""

    def __init__(self, job_id: str, index: int, *, label: str | None = None, row: int | None = None) -> None:
        super().__init__(  # type: ignore[call-arg]  # DynamicItem.__init__, next in the MRO
            ui.Button(
                label=label or self.label,
                style=self.style,
                custom_id=f"janus:{self.action}:{job_id}:{index}",
                row=row,
            )
        )
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["job"], int(match["index"]))


class VaryButton(
    _ImageButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:vary:{_JOB}:(?P<index>\d{{1,2}})"
):
    """A new single image from the same prompt and settings, with a seed next to that image's."""

    action, label = "vary", "Vary"

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).vary(interaction, self.job_id, self.index)


class UpscaleButton(
    _ImageButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:upscale:{_JOB}:(?P<index>\d{{1,2}})"
):
    """Midjourney's U: that one image, full size, as a message of its own (read back from the grid's)."""

    action, label = "upscale", "U"

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).upscale(interaction, self.job_id, self.index)


class ProposedPromptButton(
    _ImageButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:propose:{_JOB}:(?P<index>\d{{1,2}})"
):
    """/imagine one of the prompts /describe prompts:True proposed (read back from that job's record)."""

    action, label, style = "propose", "Imagine", discord.ButtonStyle.primary

    async def run(self, interaction: Interaction) -> None:
        await imagine_actions(interaction).imagine_proposed(interaction, self.job_id, self.index)


def proposals_view(job_id: str, n: int) -> ui.View:
    view = ui.View(timeout=None)
    for i in range(n):
        view.add_item(ProposedPromptButton(job_id, i, label=f"Imagine {i + 1}"))
    return view


class DescribeButton(
    _ImageButton, ui.DynamicItem[ui.Button[Any]], template=rf"janus:describe:{_JOB}:(?P<index>\d{{1,2}})"
):
    """Ask Janus about one generated image; the image is read back from the message the button sits on."""

    action, label = "describe", "Describe"

    async def run(self, interaction: Interaction) -> None:
        await describe_actions(interaction).describe_generated(interaction, self.job_id, self.index)


def progress_view(job_id: str) -> ui.View:
    """Shown while a job is queued or running."""
    view = ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def retry_view(job_id: str) -> ui.View:
    """Shown under a job that a restart interrupted: run it again, as it was or with another prompt."""
    view = ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(EditPromptButton(job_id))
    return view


def result_view(job_id: str, n_images: int) -> ui.View:
    """Shown under finished images: Re-roll, Edit prompt, Delete, Info, then per image a Describe and a
    Vary (a nearby seed), and for a grid of 2-4 (which Discord lays out 2x2) an Upscale row first, like
    Midjourney's U/V rows: at most 5 buttons a row, 5 rows (10 images)."""
    view = ui.View(timeout=None)
    view.add_item(RerollButton(job_id, row=0))
    view.add_item(EditPromptButton(job_id, row=0))
    view.add_item(DeleteButton(job_id, row=0))
    view.add_item(InfoButton(job_id, row=0))
    if n_images == 1:
        view.add_item(DescribeButton(job_id, 0, row=0))
        view.add_item(VaryButton(job_id, 0, row=1))
        return view
    n = min(n_images, 10)
    per_row = 5
    rows_each = -(-n // per_row)
    first = 1
    if n <= 4:
        for i in range(n):
            view.add_item(UpscaleButton(job_id, i, label=f"U{i + 1}", row=1))
        first = 2
    for i in range(n):
        view.add_item(
            VaryButton(job_id, i, label=f"V{i + 1}" if n <= 4 else f"Vary {i + 1}", row=first + i // per_row)
        )
    for i in range(n):
        label = f"Describe {i + 1}"
        view.add_item(DescribeButton(job_id, i, label=label, row=first + rows_each + i // per_row))
    return view


def upscaled_view(job_id: str, index: int) -> ui.View:
    """Under one image posted on its own (Upscale): Vary that image, Describe it, Info."""
    view = ui.View(timeout=None)
    view.add_item(VaryButton(job_id, index))
    view.add_item(DescribeButton(job_id, 0))  # the image is this message's only attachment
    view.add_item(InfoButton(job_id))
    return view


EDIT_MODAL_PREFIX = "janus:editmodal:"
_EDIT_MODAL = re.compile(rf"{EDIT_MODAL_PREFIX}{_JOB}")
_PROMPT_FIELD = "prompt"


class EditPromptModal(ui.Modal, title="Edit prompt"):
    """Pre-filled with the job's prompt; submitting starts a new job with the same parameters.

    Only the form: discord.py keeps a sent modal in memory and forgets it after its timeout or with the
    process, and a submission it does not know is never answered ("This interaction failed"). So this
    modal is stopped before it is sent (discord.py then stores nothing), and the submission is handled by
    its custom_id, ``janus:editmodal:<job id>``, which :func:`edit_modal_submission` reads back: it works
    after any restart and however long the form stayed open.
    """

    prompt: ui.TextInput[Any] = ui.TextInput(
        label="Prompt", custom_id=_PROMPT_FIELD, style=discord.TextStyle.paragraph, max_length=1000
    )

    def __init__(self, job_id: str, prompt: str, max_chars: int) -> None:
        super().__init__(timeout=None, custom_id=f"{EDIT_MODAL_PREFIX}{job_id}")
        self.job_id = job_id
        self.prompt.default = prompt[:max_chars]
        self.prompt.max_length = max_chars
        self.stop()  # nothing to wait for in memory: see edit_modal_submission


def edit_modal_submission(interaction: discord.Interaction[Any]) -> tuple[str, str] | None:
    """``(job id, prompt)`` when ``interaction`` submits an Edit-prompt modal, else None.

    Read from the submission itself (``data.custom_id`` and the text input's value in
    ``data.components``, in an action row or a label), so no state from the process that opened it is
    needed."""
    if interaction.type is not discord.InteractionType.modal_submit:
        return None
    data: Any = interaction.data or {}
    match = _EDIT_MODAL.fullmatch(str(data.get("custom_id", "")))
    if match is None:
        return None
    value = _field_value(data.get("components") or [], _PROMPT_FIELD)
    return match["job"], value or ""


def _field_value(components: list[Any], custom_id: str) -> str | None:
    for component in components:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component["value"])
        nested = component.get("components") or ([component["component"]] if "component" in component else [])
        found = _field_value(nested, custom_id)
        if found is not None:
            return found
    return None
