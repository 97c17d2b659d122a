"""A tiny, random, architecturally complete Janus-Pro checkpoint, built offline in well under a second.

No model hub is reachable from CI, so tests, the demo and the CPU benchmarks use this checkpoint. It is
built from transformers' own Janus classes and written with ``save_pretrained``, exactly the files a
converted hub checkpoint has (config, generation config, weights, processor, chat template, tokenizer),
so :class:`janus_engine.runtime.JanusRuntime` loads it through the same code as the real model and nothing
special-cases it. Random weights give meaningless output: tests assert shapes, determinism and
equivalences, never content.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The chat template the converted deepseek-community checkpoints carry (transformers'
# convert_janus_weights_to_hf.py). Kept verbatim so prompts render exactly as with the real model.
JANUS_CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt"
    " and message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
SPECIAL_TOKENS = (BOS, EOS, PAD, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, "<|User|>", "<|Assistant|>")

# Geometry of the tiny model (see docs: janus-facts "A tiny, offline, architecturally complete checkpoint").
TINY_VOCAB = 512
TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
TINY_IMAGE_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2  # 16
TINY_CONTEXT = 1024

_CORPUS = (
    "A red fox jumps over the lazy dog near the river bank at sunset.",
    "Describe this image in detail. What is in the picture? How many cats are there?",
    "A watercolor painting of a lighthouse on a cliff, stormy sea, dramatic clouds.",
    "The quick brown fox, a blue bird and a green frog sit on a wooden bench in the park.",
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language.",
    "an astronaut riding a horse on the moon, photorealistic, 4k, highly detailed, cinematic lighting",
    "Hello! Thanks for the picture. It shows a small house, two trees and a yellow sun in the sky.",
    "0123456789 ,.;:!?'\"()[]{}<>-_+=*/\\|@#$%^&~` numbers and punctuation",
)


def build_tokenizer():
    """A byte-level BPE trained in-process (deterministic), wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB - 16,  # room to spare below the model's vocab
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like DeepSeek's tokenizer: every encoded text starts with BOS (the chat template does not add it).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=TINY_CONTEXT,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN},
    )


def _build_config(tokenizer):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    ids = tokenizer.convert_tokens_to_ids
    text = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        pad_token_id=ids(PAD),
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
    )
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH,
        num_image_tokens=TINY_IMAGE_TOKENS,
        projection_dim=64,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=256,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 1, 1],  # 2^(4-1) == patch size: decoded images are 32x32
        num_res_blocks=1,
        projection_dim=64,
        image_token_embed_dim=64,
    )
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=ids(IMAGE_TOKEN))


def _liven_weights(model, generator) -> None:
    """Re-draw linear and embedding weights at unit-gain scale.

    With transformers' default init (std 0.02) a random Janus emits one token over and over, whatever the
    prompt, so a batching bug (wrong position ids, a leaking padding mask, rows swapped) would still produce
    "equal" outputs. At this scale every generated token depends on the whole context, which is what the
    equivalence tests need to be able to fail.
    """
    import math

    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 2.0 / math.sqrt(module.in_features), generator=generator)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)


def build_tiny_checkpoint(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random Janus checkpoint to ``path`` and return it. Same seed, same weights."""
    import torch
    from transformers import JanusForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = _build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):  # deterministic weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).eval()
        _liven_weights(model, torch.Generator().manual_seed(seed))

    configure_generation(model, tokenizer)
    model.save_pretrained(path)
    processor = build_processor(tokenizer, image_size=TINY_IMAGE_SIZE, num_image_tokens=TINY_IMAGE_TOKENS)
    processor.save_pretrained(path)
    return path


def configure_generation(model, tokenizer) -> None:
    """The generation config the converted hub checkpoints carry (convert_janus_weights_to_hf.py)."""
    gen = model.generation_config
    # Without this, save/load regenerates the config from the model config and drops generation_kwargs,
    # which image mode needs for boi_token_id (janus-facts gotcha 3).
    gen._from_model_config = False
    gen.temperature = 1.0
    gen.guidance_scale = 5
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI_TOKEN)}


def build_processor(tokenizer, *, image_size: int, num_image_tokens: int):
    """A JanusProcessor like the converted checkpoints' (mean/std 0.5, default system prompt, template)."""
    from transformers import JanusImageProcessorPil, JanusProcessor

    image_processor = JanusImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        min_size=min(14, image_size // 4),
    )
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=JANUS_CHAT_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=num_image_tokens,
    )


def make_tiny_model_command(args: argparse.Namespace) -> int:
    """``janus-bot make-tiny-model DIR [--seed N] [--force]``.

    Refused with one line (exit status 2, before torch is imported): an empty path, a path that is a
    file, a folder that is not empty (unless ``--force``, which writes over the checkpoint files in it),
    and a folder that cannot be created or written to.
    """
    from janus_engine.errors import InvalidRequest

    if not str(args.directory).strip():
        raise InvalidRequest(
            "the checkpoint folder must be named (an empty path would write into the current one)"
        )
    path = Path(args.directory)
    if path.exists() and not path.is_dir():
        raise InvalidRequest(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not getattr(args, "force", False):
        raise InvalidRequest(
            f"{path} is not empty; pick a new folder, or add --force to write over its files"
        )
    _check_writable(path)
    path = build_tiny_checkpoint(path, seed=args.seed)
    print(f"wrote a tiny random Janus checkpoint to {path} (load it with --model {path})")
    return 0


def _check_writable(path: Path) -> None:
    import os
    import tempfile

    from janus_engine.errors import InvalidRequest

    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".janus-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidRequest(f"cannot write the checkpoint to {path}: {exc.strerror or exc}.") from None
