"""Cheap request validation (no torch): every out-of-range parameter is a typed, readable error."""

from __future__ import annotations

import dataclasses
import math

import pytest

from janus_engine.errors import InvalidRequest, PromptTooLong
from janus_engine.protocol import GenerateRequest, TextSampling, Turn, UnderstandRequest
from janus_engine.validation import validate_generate_request, validate_understand_request

GOOD = GenerateRequest("r1", "a red fox in the snow", n_images=4, guidance=5.0, temperature=1.0, seed=1)


def test_a_good_generate_request_passes() -> None:
    validate_generate_request(GOOD)
    validate_generate_request(dataclasses.replace(GOOD, temperature=0.0, seed=None, n_images=16))


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"prompt": ""}, InvalidRequest, "empty"),
        ({"prompt": "   \n\t"}, InvalidRequest, "empty"),
        ({"prompt": "x" * 4001}, PromptTooLong, "4001 characters"),
        ({"n_images": 0}, InvalidRequest, "1 to 16"),
        ({"n_images": 17}, InvalidRequest, "1 to 16"),
        ({"n_images": 2.0}, InvalidRequest, "1 to 16"),
        ({"n_images": True}, InvalidRequest, "1 to 16"),
        ({"guidance": 1.0}, InvalidRequest, "above 1"),
        ({"guidance": 0.5}, InvalidRequest, "above 1"),
        ({"guidance": 50.0}, InvalidRequest, "at most 20"),
        ({"guidance": math.nan}, InvalidRequest, "Guidance"),
        ({"temperature": -0.1}, InvalidRequest, "Temperature"),
        ({"temperature": math.inf}, InvalidRequest, "Temperature"),
        ({"seed": -1}, InvalidRequest, "seed"),
        ({"seed": 2**64}, InvalidRequest, "seed"),
        ({"preview_every": -2}, InvalidRequest, "preview_every"),
    ],
)
def test_bad_generate_requests_are_refused(changes: dict, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        validate_generate_request(dataclasses.replace(GOOD, **changes))
    assert words in info.value.user_message


def chat(*turns: Turn, **sampling) -> UnderstandRequest:
    return UnderstandRequest("u1", turns, TextSampling(**sampling))


def test_good_conversations_pass() -> None:
    validate_understand_request(chat(Turn("user", "hi")))
    validate_understand_request(chat(Turn("user", "", (b"png",))))  # an image alone is a question
    validate_understand_request(
        chat(Turn("user", "a", (b"png",)), Turn("assistant", "b"), Turn("user", "c"), temperature=0.0)
    )


@pytest.mark.parametrize(
    ("request_", "error", "words"),
    [
        (chat(), InvalidRequest, "empty"),
        (chat(Turn("user", "hi"), Turn("assistant", "hello")), InvalidRequest, "end with a user"),
        (chat(Turn("user", "  ")), InvalidRequest, "empty"),
        (chat(Turn("system", "x"), Turn("user", "hi")), InvalidRequest, "role"),
        (
            chat(Turn("user", "a"), Turn("assistant", "b", (b"x",)), Turn("user", "c")),
            InvalidRequest,
            "Assistant",
        ),
        (chat(Turn("user", "a", (b"",))), InvalidRequest, "image"),
        (chat(Turn("user", "a", (b"x",) * 7)), PromptTooLong, "7 images"),
        (chat(Turn("user", "a" * 60_001)), PromptTooLong, "characters"),
        (chat(Turn("user", "hi"), temperature=3.0), InvalidRequest, "Temperature"),
        (chat(Turn("user", "hi"), top_p=0.0), InvalidRequest, "top_p"),
        (chat(Turn("user", "hi"), max_new_tokens=0), InvalidRequest, "max_new_tokens"),
        (chat(Turn("user", "hi"), seed=-5), InvalidRequest, "seed"),
    ],
)
def test_bad_conversations_are_refused(request_: UnderstandRequest, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        validate_understand_request(request_)
    assert words in info.value.user_message


def test_validation_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, janus_engine.validation, janus_engine.images; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
