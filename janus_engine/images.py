"""User image decoding and validation, PNG encoding and grids. PIL only: the bot imports this module.

Uploads come from strangers, so decoding is defensive: only PNG, JPEG, WebP, GIF and BMP are opened, the
pixel count is checked from the header before any pixel is decoded (decompression bombs), an image of
any size down to 1x1 and any aspect ratio is accepted (only an empty one is not), every failure
becomes an ``InvalidImage`` / ``ImageTooLarge`` whose message a Discord user can act on, and whatever the
source mode (palette, RGBA, CMYK, 16-bit, greyscale, EXIF-rotated) the result is plain upright RGB.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError

from janus_engine.errors import ImageTooLarge, InvalidImage

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # Discord's own attachment limit for most servers
MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; Janus sees 384x384 anyway
MAX_SIDE = 16_384
MIN_SIDE = 8  # smaller, or thinner than MAX_ASPECT, and an upload is padded to a square (normalize_upload)
MAX_ASPECT = 20.0  # a 20:1 strip would be a ~19-pixel band at 384x384: padded to a square, it is all there
STORE_MAX_SIDE = 1024  # normalized uploads are downscaled to this (the model needs 384)
_WHITE = (255, 255, 255)
PAD_COLOUR = (127, 127, 127)  # Janus's processor pads to a square with its image mean, this grey

# The first bytes of each accepted format, so an upload whose type nobody declared can be recognised
# from its content alone (nothing is decoded).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, WebP, GIF or BMP bytes, from their signature; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def _check_geometry(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise ImageTooLarge(
            f"That image is {width}x{height} pixels, too large to process "
            f"(limit {max_pixels // 1_000_000} megapixels, {MAX_SIDE} pixels a side)."
        )
    if width < 1 or height < 1:
        raise InvalidImage(f"That image is {width}x{height} pixels: there is nothing in it to look at.")


def _extrema(im: Image.Image) -> tuple[float, float]:
    """(lowest, highest) value of a single-band image (``getextrema`` is typed for multi-band ones too)."""
    return cast(tuple[float, float], im.getextrema())


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is flattened onto white (how Discord shows it)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's convert("L") clips 16-bit values at 255; scale the full range down instead.
        peak = 65535 if im.mode.startswith("I;16") else max(_extrema(im)[1], 1)
        im = im.convert("I").point(lambda v: v * (255.0 / peak)).convert("L")
    elif im.mode == "F":
        low, high = _extrema(im)
        span = (high - low) or 1.0
        im = im.point(lambda v: (v - low) * (255.0 / span)).convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_user_image(
    data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_UPLOAD_BYTES
) -> Image.Image:
    """Decode an uploaded file into an upright RGB image, or raise InvalidImage / ImageTooLarge."""
    if not data:
        raise InvalidImage("That file is empty.")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"That file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            _check_geometry(im.width, im.height, max_pixels)
            im.seek(0)  # animated GIF/WebP: the first frame
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("That image is too large to process (decompression bomb protection).") from None
    except UnidentifiedImageError:
        if sniff_image_type(data) is not None:  # it starts like an image PIL reads: a broken or empty one
            raise InvalidImage(
                "That file is not an image I can read: it starts like one, but it is corrupt or has no "
                "pixels. Try saving it again."
            ) from None
        raise InvalidImage(
            "That file is not an image I can read. Send a PNG, JPEG, WebP, GIF or BMP."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        detail = "it is truncated" if "truncated" in str(exc).lower() else "it is corrupt"
        raise InvalidImage(f"That image could not be decoded: {detail}. Try saving it again.") from None
    # A broken EXIF block should not reject an otherwise fine image.
    with contextlib.suppress(OSError, ValueError, SyntaxError):
        im = ImageOps.exif_transpose(im) or im
    try:
        return _to_rgb(im)
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"That image uses a pixel format I cannot convert ({im.mode}): {exc}.") from None


def encode_png(image: Image.Image, *, compress_level: int = 3) -> bytes:
    """PNG bytes. Level 3 is ~3x faster than PIL's default 6 for a few percent more bytes, which matters
    when 16 generated images are encoded after every batch."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def normalize_upload(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_side: int = STORE_MAX_SIDE,
) -> bytes:
    """Validate an upload and return it as RGB PNG bytes, downscaled to ``max_side`` (what we store and
    send to the engine: one format, bounded size, no EXIF or metadata)."""
    im = decode_user_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return encode_png(pad_to_square_if_degenerate(im))  # after the downscale: a bounded square


def pad_to_square_if_degenerate(im: Image.Image) -> Image.Image:
    """A tiny (under MIN_SIDE) or very thin (beyond MAX_ASPECT) image centred on a grey square.

    Janus's processor resizes anything (it fits the long side to 384 and pads to a square itself), so
    such images are accepted; padding them here first keeps what is stored and sent a plain square that
    any processor handles, and a 1x1 dot or a 4000x3 line stays visible as what it is."""
    w, h = im.size
    if min(w, h) >= MIN_SIDE and max(w, h) / min(w, h) <= MAX_ASPECT:
        return im
    side = max(w, h, MIN_SIDE)
    square = Image.new("RGB", (side, side), PAD_COLOUR)
    square.paste(im, ((side - w) // 2, (side - h) // 2))
    return square


def compose_grid(pngs: Sequence[bytes], *, gap: int = 4) -> bytes:
    """Tile images (PNG bytes, same size) into one PNG: 2x2 for four, near-square for other counts."""
    if not pngs:
        raise ValueError("compose_grid needs at least one image")
    tiles = []
    for data in pngs:
        with Image.open(io.BytesIO(data)) as im:
            tiles.append(im.convert("RGB"))
    if len(tiles) == 1:
        return encode_png(tiles[0])
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    w, h = tiles[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), _WHITE)
    for i, tile in enumerate(tiles):
        if tile.size != (w, h):
            tile = tile.resize((w, h))
        grid.paste(tile, ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return encode_png(grid)
