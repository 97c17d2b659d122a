"""Questions with fixed answers (UnderstandRequest.choices): the model judging an image in one step.

The probabilities are checked against a plain reference (the processor's own inputs, one forward of the
whole model, a softmax over the choices' first-token logits), in both text loops, alone and beside an
ordinary answer, which must not change.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from janus_engine.errors import InvalidRequest
from janus_engine.protocol import TextSampling, Turn, UnderstandRequest
from janus_engine.runtime.continuous_text import TextDecoder, run_text_jobs
from janus_engine.runtime.understanding import generate_text
from janus_engine.validation import validate_understand_request

YES_NO = ("Yes", "No")


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def judge(key: str, question: str, image: bytes, choices=YES_NO) -> UnderstandRequest:
    return UnderstandRequest(
        key, (Turn("user", question, (image,)),), TextSampling(temperature=0.0), choices=choices
    )


def chat(key: str) -> UnderstandRequest:
    return UnderstandRequest(key, (Turn("user", "hello there, who are you?"),), TextSampling(0.0, 0.9, 8, 1))


@torch.inference_mode()
def reference_probs(runtime, request: UnderstandRequest) -> list[float]:
    job = runtime.prepare_understand(request)
    inputs = runtime.processor(text=[job.prompt], images=list(job.images), return_tensors="pt")
    logits = runtime.model(**inputs).logits[0, -1].float()
    return torch.softmax(logits[list(job.choice_ids)], dim=-1).tolist()


REQUESTS = {
    "red": judge("red", "Does this image show: a red square? Answer yes or no.", png((220, 20, 20))),
    "blue": judge("blue", "Does this image show: a red square? Answer yes or no.", png((20, 20, 220))),
    "three": judge("three", "Which colour is it?", png((20, 200, 20)), ("Red", "Green", "Blue")),
}


@pytest.fixture(scope="module")
def expected(runtime):
    return {key: reference_probs(runtime, req) for key, req in REQUESTS.items()}


def _results(runtime, outputs, jobs):
    return {job.key: outputs[job.key] for job in jobs}


def test_both_text_loops_give_the_reference_probabilities(runtime, expected) -> None:
    jobs = [runtime.prepare_understand(r) for r in REQUESTS.values()]
    plain = runtime.prepare_understand(chat("plain"))
    answer_alone = generate_text(runtime.model, runtime.processor, [plain], eos_id=runtime.eos_id)["plain"]
    batch = generate_text(runtime.model, runtime.processor, [*jobs, plain], eos_id=runtime.eos_id)
    decoder = TextDecoder(runtime.model, runtime.processor, eos_id=runtime.eos_id, max_rows=4)
    continuous = run_text_jobs(decoder, [*jobs, plain])
    for outputs in (batch, continuous):
        for job in jobs:
            probs = outputs[job.key].choice_probs
            assert probs == pytest.approx(expected[job.key], abs=1e-5), job.key
            assert sum(probs) == pytest.approx(1.0)
            best = max(range(len(probs)), key=probs.__getitem__)
            assert outputs[job.key].tokens == [job.choice_ids[best]]  # one step: the likeliest choice
        assert outputs["plain"].tokens == answer_alone.tokens and outputs["plain"].choice_probs == ()
    # The judgement depends on the image (else the reference test above could pass on a constant).
    assert expected["red"] != pytest.approx(expected["blue"], abs=1e-4)


def test_the_result_carries_the_probabilities_and_the_likeliest_choice(runtime, expected) -> None:
    (result,) = runtime.understand([REQUESTS["three"]])
    assert result.choice_probs == pytest.approx(expected["three"], abs=1e-5)
    best = max(range(3), key=result.choice_probs.__getitem__)
    assert result.text == ("Red", "Green", "Blue")[best] and result.completion_tokens == 1


def test_bad_choices_are_refused(runtime) -> None:
    with pytest.raises(InvalidRequest, match="2 to 8 choices"):
        validate_understand_request(judge("one", "?", png((0, 0, 0)), ("Yes",)))
    with pytest.raises(InvalidRequest, match="short non-empty text"):
        validate_understand_request(judge("empty", "?", png((0, 0, 0)), ("Yes", " ")))
    with pytest.raises(InvalidRequest, match="begin with the same token"):
        runtime.prepare_understand(judge("same", "?", png((0, 0, 0)), ("Yes", "Yesterday")))
