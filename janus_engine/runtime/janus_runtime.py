"""JanusRuntime: one loaded Janus-Pro model and the two things it does, understanding and generation.

This is the only object worker processes, CLI tools and benchmarks talk to. It turns protocol requests
into token jobs (prompt rendering, token-limit checks, seeds), runs the batched loops of ``generation``
and ``understanding``, and turns tokens back into protocol results (text, PNG bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from janus_engine.errors import InvalidRequest, PromptTooLong
from janus_engine.images import compose_grid, encode_png
from janus_engine.protocol import (
    GenerateRequest,
    GenerateResult,
    ModelSpec,
    UnderstandRequest,
    UnderstandResult,
)
from janus_engine.runtime.generation import ImageTokenJob, SpecialIds, generate_image_tokens
from janus_engine.runtime.loading import load_model_and_processor
from janus_engine.runtime.sampling import fresh_seed
from janus_engine.runtime.understanding import (
    TextJob,
    conversation_messages,
    generate_text,
    open_images,
)
from janus_engine.validation import validate_generate_request, validate_understand_request

log = logging.getLogger(__name__)

# transformers' JanusProcessor prepends this in text mode when use_default_system_prompt is set.
_SYSTEM_PROMPT_ATTR = "use_default_system_prompt"
_DECODE_CHUNK = 8  # images per VQ-decoder call: bounds activation memory for 16-image batches
_PREVIEW_GREY = 128
# Janus-Pro's language model (DeepSeek-LLM) was trained on 4096-token sequences; a config that advertises
# more positions does not make longer prompts work, so the context is capped here.
TRAINED_CONTEXT = 4096


class JanusRuntime:
    """A loaded model + processor. Not thread-safe: one worker process owns one runtime."""

    def __init__(self, model: torch.nn.Module, processor, *, name: str = "janus") -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = name
        tokenizer = processor.tokenizer
        weight = model.get_input_embeddings().weight
        self.device = str(weight.device)
        self.dtype_name = str(weight.dtype).removeprefix("torch.")
        vision = model.config.vision_config
        self.num_image_tokens = int(vision.num_image_tokens)
        self.image_size = int(vision.image_size)
        self.grid_side = round(self.num_image_tokens**0.5)
        context = min(int(model.config.text_config.max_position_embeddings), TRAINED_CONTEXT)
        if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length < 1_000_000:
            context = min(context, tokenizer.model_max_length)
        self.max_context_tokens = context
        self.special = SpecialIds(
            bos=tokenizer.bos_token_id,
            pad=tokenizer.pad_token_id,
            boi=tokenizer.convert_tokens_to_ids(tokenizer.boi_token),
        )
        self.eos_id = tokenizer.eos_token_id
        self._system_prompt = ""
        if getattr(processor, _SYSTEM_PROMPT_ATTR, False):
            from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

            self._system_prompt = DEFAULT_SYSTEM_PROMPT

    @classmethod
    def load(cls, spec: ModelSpec) -> JanusRuntime:
        """Load ``spec.model`` (hub id or directory). Raises ModelNotAvailable with what to do."""
        model, processor, _ = load_model_and_processor(spec)
        return cls(model, processor, name=spec.model)

    # ---- shared helpers ------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs in a prompt (no special tokens)."""
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def image_prompt_ids(self, prompt: str) -> list[int]:
        """The conditional prompt of a text-to-image request: the chat template around the user's text,
        then <begin_of_image>, exactly as transformers' processor builds it in image mode."""
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        encoded = self.processor(text=rendered, generation_mode="image", return_tensors="pt")
        return encoded["input_ids"][0].tolist()

    # ---- text-to-image -------------------------------------------------------------------------------

    def prepare_generate(self, req: GenerateRequest) -> ImageTokenJob:
        """Validate ``req`` (including its token count) and turn it into a job for the loop."""
        validate_generate_request(req)
        ids = self.image_prompt_ids(req.prompt)
        limit = self.max_context_tokens - self.num_image_tokens
        if len(ids) > limit:
            raise PromptTooLong(
                f"The prompt is {len(ids)} tokens long; with the image it must stay within {limit} tokens."
            )
        negative = None
        if req.negative_prompt.strip():  # the same template around it, so the pair differs only in text
            negative = tuple(self.image_prompt_ids(req.negative_prompt))
            if len(negative) > limit:
                raise PromptTooLong(
                    f"The negative prompt is {len(negative)} tokens long; it must stay within {limit} tokens."
                )
        seed = req.seed
        if req.temperature > 0 and seed is None:
            seed = fresh_seed()
        return ImageTokenJob(
            key=req.request_id,
            prompt_ids=tuple(ids),
            n_images=req.n_images,
            guidance=float(req.guidance),
            temperature=float(req.temperature),
            seed=seed,
            preview_every=req.preview_every,
            negative_ids=negative,
        )

    def generate_tokens(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: Callable[[str, int, int], None] | None = None,
        should_cancel: Callable[[str], bool] | None = None,
        on_tokens: Callable[[str, int, torch.Tensor], None] | None = None,
    ) -> tuple[dict[str, torch.Tensor | None], list[ImageTokenJob]]:
        """The raw image tokens of each request (None if cancelled) and the jobs that produced them."""
        jobs = [self.prepare_generate(req) for req in requests]
        if len({job.key for job in jobs}) != len(jobs):
            raise InvalidRequest("Two requests in one batch share a request id.")
        tokens = generate_image_tokens(
            self.model,
            jobs,
            self.special,
            num_image_tokens=self.num_image_tokens,
            on_progress=on_progress,
            on_tokens=on_tokens,
            should_cancel=should_cancel,
        )
        return tokens, jobs

    def generate(
        self,
        requests: Sequence[GenerateRequest],
        on_progress: Callable[[str, int, int], None] | None = None,
        on_preview: Callable[[str, int, bytes], None] | None = None,
        should_cancel: Callable[[str], bool] | None = None,
    ) -> list[GenerateResult | None]:
        """Generate every request's images in ONE batched CFG loop; None for a cancelled request.

        Raises InvalidRequest / PromptTooLong (before any work) if any request is invalid: the engine
        front validates with ``janus_engine.validation`` first, and ``prepare_generate`` checks a single
        request with the tokenizer."""

        def preview(key: str, step: int, partial: torch.Tensor) -> None:
            if on_preview is not None:
                on_preview(key, step, compose_grid(self.decode_partial(partial)))

        tokens, jobs = self.generate_tokens(
            requests, on_progress, should_cancel, preview if on_preview is not None else None
        )
        results: list[GenerateResult | None] = []
        for job in jobs:
            job_tokens = tokens[job.key]
            if job_tokens is None:
                results.append(None)
                continue
            images = tuple(self.decode_images(job_tokens))
            results.append(
                GenerateResult(request_id=job.key, images=images, seed=job.seed, steps=self.num_image_tokens)
            )
        return results

    @torch.inference_mode()
    def decode_pixels(self, tokens: torch.Tensor) -> np.ndarray:
        """VQ-decode image tokens ``(n, num_image_tokens)`` to uint8 pixels ``(n, H, W, 3)``."""
        chunks = []
        for start in range(0, tokens.shape[0], _DECODE_CHUNK):
            part = tokens[start : start + _DECODE_CHUNK].to(self.model.device)
            pixels = self.model.decode_image_tokens(part).float()  # channels last, about [-1, 1]
            chunks.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return torch.cat(chunks).numpy()

    def decode_images(self, tokens: torch.Tensor) -> list[bytes]:
        """Image tokens to PNG bytes, one per row."""
        return [encode_png(Image.fromarray(p)) for p in self.decode_pixels(tokens)]

    def decode_partial(self, partial: torch.Tensor) -> list[bytes]:
        """A preview of unfinished images: the token rows generated so far, grey below.

        The missing tokens are filled with each row's last token so the VQ decoder gets a full grid; what
        they decode to is painted over, so only the finished part (raster order, top down) shows."""
        n, done = partial.shape
        filled = partial[:, -1:].expand(n, self.num_image_tokens).clone()
        filled[:, :done] = partial
        pixels = self.decode_pixels(filled)
        rows_done = -(-done // self.grid_side)  # a partly generated token row is shown
        cut = rows_done * pixels.shape[1] // self.grid_side
        pixels[:, cut:] = _PREVIEW_GREY
        return [encode_png(Image.fromarray(p)) for p in pixels]

    # ---- understanding -------------------------------------------------------------------------------

    def _render_conversation(self, req: UnderstandRequest) -> tuple[str, int]:
        """The prompt text (chat template) and its token count once images expand to their tokens."""
        messages = conversation_messages(req.turns)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        n_images = sum(len(t.images) for t in req.turns)
        # The system prompt goes in front (see understanding.with_system); each placeholder expands to
        # boi + N tokens + eoi.
        system = f"{req.system_prompt.strip()}\n\n" if req.system_prompt.strip() else self._system_prompt
        tokens = len(self.processor.tokenizer(system + prompt)["input_ids"])
        return prompt, tokens + n_images * (self.num_image_tokens + 1)

    def prepare_understand(self, req: UnderstandRequest) -> TextJob:
        """Validate ``req`` (including its token count) and turn it into a job for the text loop."""
        validate_understand_request(req)
        prompt, n_tokens = self._render_conversation(req)
        room = self.max_context_tokens - n_tokens
        if room < 1:
            raise PromptTooLong(
                f"The conversation is {n_tokens} tokens long; "
                f"the model reads at most {self.max_context_tokens}."
            )
        s = req.sampling
        choice_ids = self.choice_ids(req.choices)
        return TextJob(
            key=req.request_id,
            prompt=prompt,
            images=tuple(open_images(req.turns)),
            max_new_tokens=1 if choice_ids else min(s.max_new_tokens, room),
            temperature=float(s.temperature),
            top_p=float(s.top_p),
            seed=s.seed if s.seed is not None else fresh_seed(),
            image_bytes=tuple(data for turn in req.turns for data in turn.images),
            conversation_id=req.conversation_id,
            choice_ids=choice_ids,
            choices=tuple(c.strip() for c in req.choices),
            system_prompt=req.system_prompt,
        )

    def choice_ids(self, choices: Sequence[str]) -> tuple[int, ...]:
        """The first token of each fixed answer as the model would write it. The template ends with
        "<|Assistant|>:", so an answer starts with a space: " Yes" is one token in DeepSeek's vocabulary.
        A tokenizer that gives the space a token of its own (the tiny test checkpoint's) would make every
        choice start alike; then the choices' first tokens without the space are used."""
        if not choices:
            return ()
        tokenizer = self.processor.tokenizer
        for variant in (" {}", "{}"):
            ids = tuple(
                tokenizer(variant.format(c.strip()), add_special_tokens=False)["input_ids"][0]
                for c in choices
            )
            informative = all(tokenizer.decode([i]).strip() for i in ids)
            if informative and len(set(ids)) == len(ids):
                return ids
        raise InvalidRequest("Two choices begin with the same token; the model could not tell them apart.")

    def understand(
        self,
        requests: Sequence[UnderstandRequest],
        on_text: Callable[[str, str], None] | None = None,
        should_cancel: Callable[[str], bool] | None = None,
    ) -> list[UnderstandResult | None]:
        """Answer every conversation in one left-padded batch; None for a cancelled request."""
        jobs = [self.prepare_understand(req) for req in requests]
        if len({job.key for job in jobs}) != len(jobs):
            raise InvalidRequest("Two requests in one batch share a request id.")
        outputs = generate_text(
            self.model,
            self.processor,
            jobs,
            eos_id=self.eos_id,
            on_text=on_text,
            should_cancel=should_cancel,
        )
        results: list[UnderstandResult | None] = []
        for job in jobs:
            out = outputs[job.key]
            if out is None:
                results.append(None)
                continue
            text = out.choice or self.processor.tokenizer.decode(out.tokens, skip_special_tokens=True).strip()
            results.append(
                UnderstandResult(
                    request_id=job.key,
                    text=text,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=len(out.tokens),
                    choice_probs=out.choice_probs,
                )
            )
        return results

    def decode_session(self, *, max_images: int, max_texts: int, cuda_graphs: bool = True):
        """The continuous decoders for a worker (see ``decode_session``); on CUDA with ``cuda_graphs`` the
        image step runs with static shapes and is captured as CUDA graphs by its warm-up."""
        from janus_engine.runtime.decode_session import DecodeSession

        static = cuda_graphs and self.device.startswith("cuda")
        return DecodeSession(
            self,
            # The rows are allocated once, at warm-up: as many as the configured batch bound, which is what
            # `janus-bot check` fits to the card's memory. The front refuses a request of more images.
            max_images=max_images,
            max_texts=max_texts,
            static=static,
            cuda_graphs=static,
        )

    def validate(self, request: GenerateRequest | UnderstandRequest) -> None:
        """Every check a request gets before it runs, token limits included; raises typed errors."""
        if isinstance(request, GenerateRequest):
            self.prepare_generate(request)
        else:
            self.prepare_understand(request)
