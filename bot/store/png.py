"""Just enough PNG reading to validate what the store keeps and record its size, without Pillow.

The store keeps the processed image the model sees, which the engine side has already decoded and
re-encoded as PNG; anything else reaching the store is a bug upstream, and failing loudly beats storing
bytes that the model cannot read back.
"""

from __future__ import annotations

import struct

from janus_engine.errors import InvalidImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG standard puts first."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise InvalidImage("Only processed PNG images can be stored in a conversation.")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise InvalidImage("The image has no pixels.")
    return width, height
