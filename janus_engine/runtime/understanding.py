"""Batched image understanding (image + text -> text) with per-request sampling, streaming and cancel.

``model.generate`` takes one sampling configuration per call and cannot drop a cancelled row, so this is
a small decoding loop of its own: one left-padded prefill through ``JanusForConditionalGeneration`` (which
merges the SigLIP image features into the prompt), then one token per live row per step. Rows that hit
end-of-sentence, their token budget, or are cancelled leave the batch. Greedy answers equal those of
running each conversation alone (tested), and equal transformers' own ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from janus_engine.images import decode_user_image
from janus_engine.protocol import Turn
from janus_engine.runtime.generation import cache_keyword
from janus_engine.runtime.kv_cache import preallocated_cache, select_cache_rows
from janus_engine.runtime.sampling import choose_tokens, uniform_stream


def conversation_messages(turns: Sequence[Turn]) -> list[dict]:
    """Turns in the chat-template message format; a turn's images come before its text, as DeepSeek's
    examples put them ("<image_placeholder>\\nWhat is this?")."""
    messages = []
    for turn in turns:
        content: list[dict] = [{"type": "image"} for _ in turn.images]
        content.append({"type": "text", "text": turn.text})
        messages.append({"role": turn.role, "content": content})
    return messages


def open_images(turns: Sequence[Turn]) -> list[Image.Image]:
    """The conversation's images in prompt order, as RGB PIL images.

    The bot and the CLI hand over normalized PNGs, but the engine is a library: bytes from any caller get
    the same defensive decoding as an upload (formats, pixel limits before decoding, typed errors)."""
    return [decode_user_image(data) for turn in turns for data in turn.images]


@dataclass(frozen=True)
class TextJob:
    """One conversation as the loop sees it: its rendered prompt, images and sampling options."""

    key: str
    prompt: str
    images: tuple[Image.Image, ...]
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    seed: int
    image_bytes: tuple[bytes, ...] = ()  # the bytes each image came from: keys of the feature cache
    conversation_id: str | None = None  # what /forget names, to drop the conversation's cached images
    # The first token of each fixed answer (UnderstandRequest.choices); such a job takes one step, whose
    # token is the likeliest choice, and reports the choices' probabilities.
    choice_ids: tuple[int, ...] = ()
    choices: tuple[str, ...] = ()  # the answers themselves, in the same order
    system_prompt: str = ""  # its own system prompt (a server's persona); "" = the model's default


def with_system(processor, job: TextJob) -> str:
    """The job's prompt with its system prompt in front: its own, or the one transformers' processor
    would prepend (DeepSeek's default) when it is set to. Both text loops build the model input from
    this with the processor's own prepending off, so a job with a persona sits in a batch beside jobs
    without one, and a job without one gets exactly the text the processor alone would make."""
    if job.system_prompt.strip():
        return f"{job.system_prompt.strip()}\n\n{job.prompt}"
    if getattr(processor, "use_default_system_prompt", False):
        from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

        return f"{DEFAULT_SYSTEM_PROMPT}{job.prompt}"
    return job.prompt


@contextmanager
def own_system_prompts(processor) -> Iterator[None]:
    """The processor without its automatic system prompt (the texts carry theirs: :func:`with_system`)."""
    before = getattr(processor, "use_default_system_prompt", False)
    processor.use_default_system_prompt = False
    try:
        yield
    finally:
        processor.use_default_system_prompt = before


@dataclass
class TextOutput:
    tokens: list[int]
    prompt_tokens: int
    choice_probs: tuple[float, ...] = ()
    choice: str = ""  # the likeliest of the job's choices (its text is the answer)


def text_output(job: TextJob, tokens: list[int], prompt_tokens: int, probs: tuple[float, ...]) -> TextOutput:
    choice = job.choices[max(range(len(probs)), key=probs.__getitem__)] if probs else ""
    return TextOutput(tokens, prompt_tokens, probs, choice)


def judge_first_step(
    logits: torch.Tensor, jobs: Sequence[TextJob], token: torch.Tensor
) -> dict[int, tuple[float, ...]]:
    """For the rows whose job has fixed answers: the choices' probabilities (a softmax over the choices'
    first-token logits, so they sum to 1) by row, and ``token`` set to the likeliest choice in place."""
    probs: dict[int, tuple[float, ...]] = {}
    for row, job in enumerate(jobs):
        if not job.choice_ids:
            continue
        ids = torch.tensor(job.choice_ids, dtype=torch.long, device=logits.device)
        p = torch.softmax(logits[row].index_select(0, ids).float(), dim=-1)
        token[row] = ids[int(p.argmax())]
        probs[row] = tuple(float(x) for x in p.tolist())
    return probs


class _Detokenizer:
    """Turns a growing token list into text deltas, holding back a partial UTF-8 character.

    Decoding the whole answer at every step would cost time quadratic in its length, so only a short
    window is decoded (the usual prefix-offset / read-offset method): ``tokens[prefix:read]`` were already
    sent and give the context a tokenizer needs to decode what follows them (a leading space, the other
    bytes of a character); the delta is what ``tokens[prefix:]`` decodes to beyond ``tokens[prefix:read]``.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.prefix_offset = 0
        self.read_offset = 0
        self.started = False  # lstrip until the first visible text: the answer follows "<|Assistant|>:"

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def delta(self, tokens: list[int], *, final: bool = False) -> str:
        """The text ``tokens`` add to what was sent; ``final`` flushes a held-back partial character.
        Concatenated, the deltas are ``decode(tokens).lstrip()``."""
        if self.read_offset >= len(tokens):
            return ""
        sent_text = self._decode(tokens[self.prefix_offset : self.read_offset])
        text = self._decode(tokens[self.prefix_offset :])
        if len(text) <= len(sent_text) or (text.endswith("\ufffd") and not final):
            return ""  # nothing new yet, or a character whose other bytes are still to come
        piece = text[len(sent_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(tokens)
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        return piece


@torch.inference_mode()
def generate_text(
    model: torch.nn.Module,
    processor,
    jobs: Sequence[TextJob],
    *,
    eos_id: int,
    on_text: Callable[[str, str], None] | None = None,
    should_cancel: Callable[[str], bool] | None = None,
) -> dict[str, TextOutput | None]:
    """Answer every job in one batch; returns each job's generated tokens, or None if cancelled."""
    results: dict[str, TextOutput | None] = {job.key: None for job in jobs}
    live = [job for job in jobs if not (should_cancel and should_cancel(job.key))]
    if not live:
        return results
    device = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    images = [im for job in live for im in job.images]
    texts = [with_system(processor, job) for job in live]
    with own_system_prompts(processor):
        batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    input_ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    prompt_lens = mask.sum(-1).tolist()
    width = input_ids.shape[1]
    budget = max(job.max_new_tokens for job in live)
    cache = preallocated_cache(model.config.text_config.num_hidden_layers, width + budget)
    cache_kw = cache_keyword(model)
    extra = {}
    if "pixel_values" in batch:
        extra["pixel_values"] = batch["pixel_values"].to(device=device, dtype=dtype)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
        **extra,
    )
    logits = out.logits[:, -1].float()

    keys = [job.key for job in live]
    by_key = {job.key: job for job in live}
    temperature = torch.tensor([j.temperature for j in live], dtype=torch.float32, device=device)
    top_p = torch.tensor([j.top_p for j in live], dtype=torch.float32, device=device)
    greedy = temperature <= 0
    uniforms = torch.cat([uniform_stream(j.seed, 1, budget) for j in live]).to(device)
    next_pos = mask.sum(-1)
    full_mask = torch.ones((len(live), width + budget), dtype=torch.long, device=device)
    full_mask[:, :width] = mask
    generated: dict[str, list[int]] = {k: [] for k in keys}
    streams = {k: _Detokenizer(processor.tokenizer) for k in keys}
    prompt_tokens = dict(zip(keys, prompt_lens, strict=True))

    for step in range(budget):
        all_greedy = all(by_key[k].temperature <= 0 for k in keys)
        any_greedy = any(by_key[k].temperature <= 0 for k in keys)
        token = choose_tokens(
            logits,
            temperature,
            uniforms[:, step],
            greedy=greedy if any_greedy else None,
            all_greedy=all_greedy,
            top_p=top_p,
        )
        if step == 0:
            judged = judge_first_step(logits, [by_key[k] for k in keys], token)
            choice_probs = {keys[row]: p for row, p in judged.items()}
        chosen = token.tolist()  # the host needs the tokens anyway: streaming and end-of-sentence
        finished = set()
        for key, tok in zip(keys, chosen, strict=True):
            if tok == eos_id:
                finished.add(key)
                continue
            generated[key].append(tok)
            if on_text is not None:
                piece = streams[key].delta(generated[key])
                if piece:
                    on_text(key, piece)
            if len(generated[key]) >= by_key[key].max_new_tokens:
                finished.add(key)
        for key in finished:
            results[key] = text_output(
                by_key[key], generated[key], prompt_tokens[key], choice_probs.get(key, ())
            )
            if on_text is not None:
                piece = streams[key].delta(generated[key], final=True)
                if piece:
                    on_text(key, piece)
        cancelled = {k for k in keys if k not in finished and should_cancel and should_cancel(k)}
        leaving = finished | cancelled
        if leaving:
            keep_idx = [i for i, k in enumerate(keys) if k not in leaving]
            keys = [keys[i] for i in keep_idx]
            if not keys:
                break
            index = torch.tensor(keep_idx, dtype=torch.long, device=device)
            select_cache_rows(cache, index)
            token, temperature, top_p, greedy, uniforms, next_pos, full_mask = (
                t.index_select(0, index)
                for t in (token, temperature, top_p, greedy, uniforms, next_pos, full_mask)
            )
        out = model(
            input_ids=token[:, None],
            attention_mask=full_mask[:, : width + step + 1],
            position_ids=(next_pos + step)[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1].float()
    for key in keys:  # budget exhausted without end-of-sentence
        if results[key] is None:
            results[key] = text_output(
                by_key[key], generated[key], prompt_tokens[key], choice_probs.get(key, ())
            )
    return results
