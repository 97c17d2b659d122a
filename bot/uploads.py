"""Turning Discord attachments into validated PNG bytes for the model, refusing bad ones early.

Type, size and count are checked from the attachment's metadata BEFORE anything is downloaded, so a
100 MB video or a pile of files costs nothing. Only then are the bytes fetched and decoded by
:func:`janus_engine.images.normalize_upload` (PIL, with pixel limits against decompression bombs). An
attachment whose type neither Discord (it omits ``content_type`` for unknown extensions) nor its name
gives passes the type check on its size alone; once downloaded, its first bytes must be those of an
allowed format (PNG, JPEG, WebP, GIF, BMP) before anything decodes it. Every refusal is a
:class:`BadUpload` whose message names the file and the reason.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Sequence
from typing import Protocol

from bot.config import UnderstandingSection
from bot.errors import BadUpload
from janus_engine.errors import InvalidImage


class AttachmentLike(Protocol):
    """The part of discord.Attachment this module uses (keeps it testable without Discord)."""

    filename: str
    size: int
    content_type: str | None

    async def read(self) -> bytes: ...


UNKNOWN_TYPE = "application/octet-stream"  # what a type Discord and the file name leave open is called


def content_type_of(att: AttachmentLike) -> str:
    """The declared type, else a guess from the file name (Discord omits it for unknown extensions);
    ``application/octet-stream`` when neither says: then only the bytes can tell (:func:`read_images`)."""
    declared = (att.content_type or "").split(";")[0].strip().lower()
    if declared:
        return declared
    guessed, _ = mimetypes.guess_type(att.filename)
    return (guessed or UNKNOWN_TYPE).lower()


def type_unknown(att: AttachmentLike) -> bool:
    return content_type_of(att) == UNKNOWN_TYPE


def is_image(att: AttachmentLike) -> bool:
    """An image by its metadata, or possibly one (type unknown: its bytes are checked once downloaded)."""
    kind = content_type_of(att)
    return kind.startswith("image/") or kind == UNKNOWN_TYPE


_FORMAT_NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/gif": "GIF"}


def format_names(content_types: Sequence[str]) -> str:
    """ "image/png", "image/webp", "image/bmp" -> "PNG, WebP or BMP" (what users know the formats as)."""
    names = [_FORMAT_NAMES.get(t, t.removeprefix("image/").upper()) for t in content_types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_attachments(atts: Sequence[AttachmentLike], limits: UnderstandingSection) -> None:
    """Refuse by metadata alone: count, type and size. Nothing is downloaded here."""
    if len(atts) > limits.max_images_per_message:
        raise BadUpload(
            f"Too many images: {len(atts)} attached, at most {limits.max_images_per_message} per message."
        )
    for att in atts:
        kind = content_type_of(att)
        if kind not in limits.allowed_content_types and kind != UNKNOWN_TYPE:  # unknown: sniffed later
            raise BadUpload(
                f"`{att.filename}` is not a supported image ({kind}); "
                f"send {format_names(limits.allowed_content_types)}."
            )
        if att.size > limits.max_upload_bytes:
            raise BadUpload(
                f"`{att.filename}` is too large ({att.size / 1e6:.1f} MB); "
                f"the limit is {limits.max_upload_bytes / 1e6:.1f} MB."
            )


async def read_images(atts: Sequence[AttachmentLike], limits: UnderstandingSection) -> list[bytes]:
    """Check, then download and decode each attachment into validated RGB PNG bytes."""
    check_attachments(atts, limits)
    from janus_engine.images import normalize_upload, sniff_image_type  # PIL only; imported when needed

    out = []
    for att in atts:
        try:
            data = await att.read()
        except Exception as exc:
            raise BadUpload(f"Could not download `{att.filename}`; please try again.") from exc
        if len(data) > limits.max_upload_bytes:  # the metadata lied
            raise BadUpload(
                f"`{att.filename}` is larger than the {limits.max_upload_bytes / 1e6:.1f} MB limit."
            )
        if type_unknown(att):  # no declared type and a name that says nothing: the bytes decide
            sniffed = sniff_image_type(data)
            if sniffed not in limits.allowed_content_types:
                raise BadUpload(
                    f"`{att.filename}` is not a supported image (Discord gave no type and its content is "
                    f"not {format_names(limits.allowed_content_types)})."
                )
        try:
            # Decoding a large photo takes about half a second: off the event loop, so that other users'
            # interactions still get their answer within Discord's 3 seconds meanwhile.
            normalized = await asyncio.to_thread(
                normalize_upload, data, max_pixels=limits.max_image_pixels, max_bytes=limits.max_upload_bytes
            )
            out.append(normalized)
        except InvalidImage as exc:
            raise BadUpload(f"`{att.filename}`: {exc.user_message}") from exc
    return out
