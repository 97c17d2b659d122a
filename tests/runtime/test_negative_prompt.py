"""A negative prompt takes the unconditional row's place in the guidance pair, per request, in both image
loops: the batch loop and the continuous decoder (joining late, eager and static steps).

The reference here is deliberately plain: no KV cache, no padding, no batching. Each step runs the
language model over the whole sequence (prompt + image tokens so far) for the conditional prompt and
for the negative prompt separately, mixes the two with classifier-free guidance and takes the argmax.
"""

from __future__ import annotations

import pytest
import torch

from janus_engine.errors import InvalidRequest, PromptTooLong
from janus_engine.protocol import MAX_PROMPT_CHARS, GenerateRequest
from janus_engine.runtime.continuous_images import ImageDecoder
from janus_engine.runtime.generation import generate_image_tokens
from janus_engine.validation import validate_generate_request

FOX, ASTRO = "a red fox", "an astronaut riding a horse on the moon, photorealistic"
NEGATIVE = "blurry, low quality, watermark, text, extra limbs, oversaturated colours"


def request(key: str, prompt: str, negative: str = "", guidance: float = 5.0) -> GenerateRequest:
    return GenerateRequest(key, prompt, guidance=guidance, temperature=0.0, negative_prompt=negative)


@torch.inference_mode()
def reference_cfg(runtime, cond_ids, uncond_ids, guidance: float) -> torch.Tensor:
    """Greedy CFG image tokens, recomputing every step from scratch (one unpadded sequence each)."""
    model = runtime.model
    lm = model.model.language_model
    embed = model.get_input_embeddings()
    tokens: list[int] = []
    for _ in range(runtime.num_image_tokens):
        logits = []
        for ids in (cond_ids, uncond_ids):
            parts = [embed(torch.tensor([list(ids)]))]
            if tokens:
                parts.append(model.prepare_embeddings_for_image_generation(torch.tensor([tokens])))
            hidden = lm(inputs_embeds=torch.cat(parts, dim=1), use_cache=False).last_hidden_state
            logits.append(model.model.generation_head(hidden[:, -1]).float())
        cond, uncond = logits
        tokens.append(int((uncond + guidance * (cond - uncond)).argmax(-1)))
    return torch.tensor([tokens])


def _reference(runtime, req: GenerateRequest) -> torch.Tensor:
    job = runtime.prepare_generate(req)
    return reference_cfg(runtime, job.prompt_ids, job.uncond_ids(runtime.special), req.guidance)


@pytest.fixture(scope="module")
def references(runtime):
    return {
        "fox-neg": _reference(runtime, request("fox-neg", FOX, NEGATIVE)),
        "fox": _reference(runtime, request("fox", FOX)),
        "astro": _reference(runtime, request("astro", ASTRO)),
    }


def test_the_negative_prompt_is_the_unconditional_row(runtime, references) -> None:
    job = runtime.prepare_generate(request("fox-neg", FOX, NEGATIVE))
    assert job.uncond_ids(runtime.special) == tuple(runtime.image_prompt_ids(NEGATIVE))
    plain = runtime.prepare_generate(request("fox", FOX))
    assert set(plain.uncond_ids(runtime.special)) == {
        runtime.special.bos,
        runtime.special.pad,
        runtime.special.boi,
    }
    # The test has teeth: with this negative prompt the image is another one.
    assert not torch.equal(references["fox-neg"], references["fox"])


def test_the_batch_loop_follows_the_reference_with_and_without_a_negative(runtime, references) -> None:
    jobs = [
        runtime.prepare_generate(request("fox-neg", FOX, NEGATIVE)),
        runtime.prepare_generate(request("fox", FOX)),
        runtime.prepare_generate(request("astro", ASTRO)),
    ]
    out = generate_image_tokens(
        runtime.model, jobs, runtime.special, num_image_tokens=runtime.num_image_tokens
    )
    for key, expected in references.items():
        assert torch.equal(out[key], expected), key


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_the_continuous_decoder_follows_the_reference_joining_late(runtime, references, static) -> None:
    decoder = ImageDecoder(
        runtime.model, runtime.special, num_image_tokens=runtime.num_image_tokens, max_pairs=4, static=static
    )
    decoder.admit([runtime.prepare_generate(request("astro", ASTRO))])
    results: dict[str, torch.Tensor] = {}
    step = 0
    while decoder or step <= 3:
        if step == 3:  # the negative-prompt request joins a running decode, beside one without
            decoder.admit(
                [
                    runtime.prepare_generate(request("fox-neg", FOX, NEGATIVE)),
                    runtime.prepare_generate(request("fox", FOX)),
                ]
            )
        results.update(decoder.step().finished)
        step += 1
    for key, expected in references.items():
        assert torch.equal(results[key], expected), key


def test_a_bad_negative_prompt_is_refused_before_any_work(runtime) -> None:
    with pytest.raises(PromptTooLong, match="negative prompt is"):
        validate_generate_request(request("long", FOX, "x" * (MAX_PROMPT_CHARS + 1)))
    with pytest.raises(InvalidRequest, match="negative prompt must be text"):
        validate_generate_request(GenerateRequest("typed", FOX, negative_prompt=None))  # type: ignore[arg-type]
    with pytest.raises(PromptTooLong, match=r"negative prompt is \d+ tokens long"):
        runtime.prepare_generate(request("many-tokens", FOX, "fox, " * 790))
