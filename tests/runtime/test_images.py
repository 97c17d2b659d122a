"""User image decoding with real files made here: every accepted format and mode, every rejection."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from janus_engine.errors import ImageTooLarge, InvalidImage
from janus_engine.images import compose_grid, decode_user_image, encode_png, normalize_upload


def save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def sample(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Left half red, right half blue: orientation and colour survive or not."""
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return im.convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    im = decode_user_image(save(sample(), fmt))
    assert (im.mode, im.size) == ("RGB", (64, 48))
    r, _, b = im.getpixel((5, 20))
    assert r > 200 and b < 60  # red stays red (lossy formats drift a little)
    r, _, b = im.getpixel((60, 20))
    assert b > 200 and r < 60


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((0, 255, 0), (255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    im = decode_user_image(data)
    assert im.getpixel((10, 10))[1] > 200


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = save(sample(), "JPEG", exif=exif.tobytes())
    im = decode_user_image(data)
    assert im.size == (48, 64)
    assert im.getpixel((20, 5))[0] > 200 and im.getpixel((20, 60))[2] > 200  # red on top, blue below


def test_transparency_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 32))
    im = decode_user_image(save(rgba, "PNG"))
    assert im.getpixel((4, 4)) == (255, 0, 0) and im.getpixel((28, 4)) == (255, 255, 255)
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    im = decode_user_image(save(pal, "PNG", transparency=0))
    assert im.getpixel((4, 4)) == (0, 255, 0) and im.getpixel((28, 4)) == (255, 255, 255)
    la = Image.new("LA", (32, 32), (90, 255))
    assert decode_user_image(save(la, "PNG")).getpixel((3, 3)) == (90, 90, 90)


def test_cmyk_greyscale_and_bilevel_become_rgb() -> None:
    cmyk = decode_user_image(save(sample("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((5, 5))[0] > 200
    grey = decode_user_image(save(Image.new("L", (32, 32), 77), "PNG"))
    assert grey.getpixel((1, 1)) == (77, 77, 77)
    bilevel = decode_user_image(save(Image.new("1", (32, 32), 1), "BMP"))
    assert bilevel.getpixel((1, 1)) == (255, 255, 255)


def test_16_bit_greyscale_keeps_its_range() -> None:
    row = struct.pack("<16H", *[65535] * 8, *[32768] * 8)  # 16 pixels: white, then mid-grey
    im16 = Image.frombytes("I;16", (16, 16), row * 16)
    im = decode_user_image(save(im16, "PNG"))
    assert im.getpixel((2, 2)) == (255, 255, 255)
    assert abs(im.getpixel((12, 2))[0] - 128) <= 1  # not clipped to white as a plain convert would do


def test_not_an_image_is_rejected_readably() -> None:
    with pytest.raises(InvalidImage, match="not an image I can read"):
        decode_user_image(b"%PDF-1.7 definitely not a picture")
    with pytest.raises(InvalidImage, match="empty"):
        decode_user_image(b"")


def test_unsupported_format_is_rejected() -> None:
    with pytest.raises(InvalidImage, match="PNG, JPEG, WebP, GIF or BMP"):
        decode_user_image(save(sample(), "TIFF"))


def test_truncated_and_corrupt_files_are_rejected() -> None:
    data = save(Image.effect_noise((128, 128), 64).convert("RGB"), "PNG")
    with pytest.raises(InvalidImage, match=r"truncated|corrupt") as info:
        decode_user_image(data[: len(data) // 2])
    assert "Traceback" not in info.value.user_message
    jpeg = bytearray(save(Image.effect_noise((128, 128), 64).convert("RGB"), "JPEG"))
    jpeg[200:600] = b"\x00" * 400
    with pytest.raises(InvalidImage):
        decode_user_image(bytes(jpeg[: len(jpeg) // 3]))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; decoding would need width*height pixels of memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_rejected_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match="too large"):
        decode_user_image(_png_header_only(60_000, 60_000))  # 3.6 gigapixels, a few dozen bytes
    small_limit = save(sample(size=(200, 200)), "PNG")
    with pytest.raises(ImageTooLarge, match="200x200"):
        decode_user_image(small_limit, max_pixels=10_000)


def test_tiny_and_thin_images_become_grey_squares_and_the_byte_limit_holds() -> None:
    for size, side in (((300, 4), 300), ((2000, 40), 1024), ((3, 2), 8)):
        out = Image.open(io.BytesIO(normalize_upload(save(Image.new("RGB", size, (255, 0, 0)), "PNG"))))
        assert out.size == (side, side), size
        assert out.getpixel((side // 2, side // 2)) == (255, 0, 0)  # the picture sits in the centre
        assert out.getpixel((0, 0)) == (127, 127, 127)  # the padding is the processor's grey
    with pytest.raises(ImageTooLarge, match="MB"):
        decode_user_image(save(sample(), "PNG"), max_bytes=100)


def test_normalize_upload_gives_bounded_rgb_png() -> None:
    big = sample(size=(2000, 1000))
    out = Image.open(io.BytesIO(normalize_upload(save(big, "JPEG"), max_side=512)))
    assert (out.format, out.mode, out.size) == ("PNG", "RGB", (512, 256))
    same = Image.open(io.BytesIO(normalize_upload(save(sample("RGBA"), "WEBP", lossless=True))))
    assert same.size == (64, 48) and same.getpixel((60, 5)) == (0, 0, 255)


def test_compose_grid_tiles_two_by_two() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    tiles = [encode_png(Image.new("RGB", (32, 32), c)) for c in colours]
    grid = Image.open(io.BytesIO(compose_grid(tiles)))
    assert grid.size == (68, 68)
    assert [grid.getpixel(xy) for xy in ((5, 5), (50, 5), (5, 50), (50, 50))] == colours
    three = Image.open(io.BytesIO(compose_grid(tiles[:3])))
    assert three.size == (68, 68) and three.getpixel((50, 50)) == (255, 255, 255)
    one = Image.open(io.BytesIO(compose_grid(tiles[:1])))
    assert one.size == (32, 32)
