"""A per-request system prompt (a server's persona) in both text loops: its answer equals transformers'
own generate on the persona's text, beside requests without one, which keep the model's default."""

from __future__ import annotations

import copy

import torch

from janus_engine.protocol import TextSampling, Turn, UnderstandRequest
from janus_engine.runtime.continuous_text import TextDecoder, run_text_jobs
from janus_engine.runtime.understanding import generate_text

PERSONA = "You are Captain Hook, a pirate. Answer every question as a pirate would, in one sentence."
GREEDY = TextSampling(temperature=0.0, max_new_tokens=10)


def ask(key: str, persona: str = "") -> UnderstandRequest:
    return UnderstandRequest(
        key, (Turn("user", "Who are you and what do you like?"),), GREEDY, system_prompt=persona
    )


@torch.inference_mode()
def transformers_answer(runtime, system_text: str) -> list[int]:
    """generate() on the rendered conversation with ``system_text`` in front (processor's own off)."""
    p = copy.copy(runtime.processor)
    p.use_default_system_prompt = False
    messages = [{"role": "user", "content": [{"type": "text", "text": "Who are you and what do you like?"}]}]
    prompt = system_text + p.apply_chat_template(messages, add_generation_prompt=True)
    inputs = p(text=prompt, return_tensors="pt")
    out = runtime.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return new[: new.index(runtime.eos_id)] if runtime.eos_id in new else new


def test_a_persona_answer_equals_generate_on_its_text_in_both_loops(runtime) -> None:
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    expected_persona = transformers_answer(runtime, PERSONA + "\n\n")
    expected_default = transformers_answer(runtime, DEFAULT_SYSTEM_PROMPT)
    assert expected_persona != expected_default  # the persona reaches the model
    jobs = [runtime.prepare_understand(ask("pirate", PERSONA)), runtime.prepare_understand(ask("plain"))]
    batch = generate_text(runtime.model, runtime.processor, jobs, eos_id=runtime.eos_id)
    decoder = TextDecoder(runtime.model, runtime.processor, eos_id=runtime.eos_id, max_rows=2)
    continuous = run_text_jobs(decoder, jobs)
    for outputs in (batch, continuous):
        assert outputs["pirate"].tokens == expected_persona
        assert outputs["plain"].tokens == expected_default
    assert runtime.processor.use_default_system_prompt  # the loops switch it off only while they call it
    (result,) = runtime.understand([ask("count", PERSONA)])
    with_persona = runtime.processor.tokenizer(PERSONA + "\n\n" + jobs[0].prompt)["input_ids"]
    assert result.prompt_tokens == len(with_persona)
