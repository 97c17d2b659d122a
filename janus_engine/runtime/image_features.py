"""Image embeddings reused across the turns of a conversation, and a prefill input built from them.

A /chat follow-up sends the whole conversation again, so every turn used to run SigLIP (the vision tower
and the aligner) on every earlier image of it. An image's embedding depends only on its pixels and the
loaded model, so a worker can keep it: :class:`ImageFeatureCache` is a bounded LRU from an image's
content hash to the embedding the language model sees (after the aligner, on the model's device and in
the dtype of its input embeddings), and :func:`prompt_embeddings` builds the prefill's ``inputs_embeds``
from it, running the vision tower once, batched, on the images it does not hold.

The merge is transformers' own (``JanusModel.forward``): the prompt's token embeddings, with the rows at
``config.image_token_id`` replaced, in order, by the images' features through ``masked_scatter``; the
features are cast to the embeddings' dtype first, as transformers does. With the same images computed in
the same batch the result is bit for bit what ``model(input_ids=..., pixel_values=...)`` builds (tested).

Keys are ``sha256`` of the bytes the request carries (``Turn.images``: validated PNGs), so the engine can
compute them without decoding anything. Equal bytes decode to equal pixels, so a key never stands for two
different embeddings; two encodings of the same picture only cost a miss. Callers without bytes get a
key hashed from the decoded pixels (mode, size, raw data) instead: a different key space, equally safe.

A cache belongs to one loaded model and processor: keys do not name the model, so a worker that loads
another model must :meth:`~ImageFeatureCache.clear` it (or build a new one). Not thread-safe: one worker
process owns one runtime and its cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

# Entries for 7B (576 tokens x 4096 hidden in bf16) are 4.5 MiB each: 64 images are ~290 MiB of GPU memory.
DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_BYTES = 1 << 30


def image_key(data: bytes) -> str:
    """The cache key of an image given as encoded bytes (a request's PNG): sha256, hex."""
    return hashlib.sha256(data).hexdigest()


def pixel_key(image: Image.Image) -> str:
    """The cache key of a decoded image with no bytes at hand: sha256 over its mode, size and pixels.

    Prefixed so that it can never be mistaken for :func:`image_key` of some file's bytes."""
    digest = hashlib.sha256(b"janus-pixels\0")
    digest.update(f"{image.mode}\0{image.width}x{image.height}\0".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class _Entry:
    features: torch.Tensor  # (num_image_tokens, hidden), the language model's embedding dtype and device
    nbytes: int
    conversations: set[str] = field(default_factory=set)


class ImageFeatureCache:
    """A bounded LRU of image embeddings (content hash -> features), with per-conversation invalidation.

    Bounded by entry count (``max_images``) and by the bytes of the stored tensors (``max_bytes``, None =
    count only); the least recently used entries go first. A tensor bigger than ``max_bytes`` on its own
    is not stored. Each entry remembers the conversations that used it, so that :meth:`forget` can drop
    what a finished conversation alone needed without throwing away an image another one still shows.
    Entries only ever used without a conversation id belong to nobody: only the LRU bound removes them.

    ``hits`` and ``misses`` count distinct images per :func:`prompt_embeddings` call (an image shown twice
    in one batch is looked up once); :meth:`clear` keeps them, they are statistics of the worker's life.
    """

    def __init__(
        self, max_images: int = DEFAULT_MAX_IMAGES, max_bytes: int | None = DEFAULT_MAX_BYTES
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1 or None, got {max_bytes}")
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._by_conversation: dict[str, set[str]] = {}
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Membership without touching the LRU order or the counters."""
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return self._nbytes

    def keys(self) -> list[str]:
        """The stored keys, least recently used first."""
        return list(self._entries)

    def conversations(self, key: str) -> frozenset[str]:
        """The conversations that used ``key`` (empty if none did or it is not stored)."""
        entry = self._entries.get(key)
        return frozenset(entry.conversations) if entry is not None else frozenset()

    def get(self, key: str, conversation_id: str | None = None) -> torch.Tensor | None:
        """The features stored for ``key`` (now the most recently used), or None; counts a hit or a miss.

        A hit also links ``conversation_id`` to the entry (see :meth:`link`)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        self.link(key, conversation_id)
        return entry.features

    def put(self, key: str, features: torch.Tensor, conversation_id: str | None = None) -> None:
        """Store ``features`` for ``key`` as the most recently used entry, then evict down to the bounds.

        The tensor is kept as given: pass one that owns its storage (a slice of a batch would keep the
        whole batch alive and the byte count would lie)."""
        nbytes = features.numel() * features.element_size()
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        entry = _Entry(features, nbytes)
        if old is not None:
            self._nbytes -= old.nbytes
            entry.conversations = old.conversations
        self._entries[key] = entry
        self._nbytes += nbytes
        self.link(key, conversation_id)
        while len(self._entries) > self.max_images or (
            self.max_bytes is not None and self._nbytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))

    def forget(self, conversation_id: str) -> int:
        """The conversation is over: drop the entries only it used, unlink it from shared ones.

        Returns how many entries were dropped."""
        dropped = 0
        for key in self._by_conversation.pop(conversation_id, set()):
            entry = self._entries[key]
            entry.conversations.discard(conversation_id)
            if not entry.conversations:
                self._drop(key)
                dropped += 1
        return dropped

    def clear(self) -> None:
        """Drop every entry (a new model was loaded, or memory is needed); the counters stay."""
        self._entries.clear()
        self._by_conversation.clear()
        self._nbytes = 0

    def link(self, key: str, conversation_id: str | None) -> None:
        """Record that ``conversation_id`` uses ``key`` (no-op for None or a key not stored).

        A conversation may show an image that another one brought in first; forgetting that other
        conversation must not drop it while this one still shows it."""
        entry = self._entries.get(key)
        if conversation_id is not None and entry is not None:
            entry.conversations.add(conversation_id)
            self._by_conversation.setdefault(conversation_id, set()).add(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._nbytes -= entry.nbytes
        for conversation in entry.conversations:
            keys = self._by_conversation.get(conversation)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_conversation[conversation]


@dataclass(frozen=True)
class PromptEmbeddings:
    """A left-padded prefill input: pass ``inputs_embeds``, ``attention_mask`` and ``position_ids`` to
    ``model(...)`` with the KV cache. ``input_ids`` are the tokens the embeddings stand for (image
    positions hold ``config.image_token_id``); ``attention_mask.sum(-1)`` is each prompt's length."""

    inputs_embeds: torch.Tensor  # (batch, width, hidden)
    attention_mask: torch.Tensor  # (batch, width), 0 on the left padding
    position_ids: torch.Tensor  # (batch, width), 0 on the padding, then 0, 1, 2, ...
    input_ids: torch.Tensor  # (batch, width)


def _janus_model(model: torch.nn.Module) -> torch.nn.Module:
    """The ``JanusModel`` inside ``JanusForConditionalGeneration`` (or the model itself)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "get_image_features") else model


def _tokenize(
    processor, prompts: Sequence[str], n_images: int, *, system_prefixed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask exactly as ``processor(text=prompts, images=..., padding=True)``
    makes them, without preprocessing the images: the images' only influence on the text is that each
    placeholder expands to ``<begin_of_image>`` + N image tokens + ``<end_of_image>``, which does not
    depend on the pixels. Uses the processor's own expansion and the tokenizer call it makes (left
    padding), and prepends the default system prompt as ``JanusProcessor`` does in text mode."""
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    found = sum(p.count(processor.image_token) for p in prompts)
    if found != n_images:
        raise ValueError(f"The prompts hold {found} image placeholders but {n_images} images were given.")
    # system_prefixed: each prompt already starts with its own system prompt (see understanding.with_system)
    default = DEFAULT_SYSTEM_PROMPT if processor.use_default_system_prompt and not system_prefixed else ""
    texts = [f"{default}{p}" for p in prompts]
    replacements = [processor.replace_image_token({}, image_idx=i) for i in range(n_images)]
    texts, _ = processor.get_text_with_replacements(texts, images_replacements=replacements)
    encoded = processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


@torch.inference_mode()
def image_features(model: torch.nn.Module, processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """SigLIP + aligner on ``images`` in one batch: ``(n, num_image_tokens, hidden)`` in the dtype and on
    the device of the model's input embeddings, as ``JanusModel.forward`` casts them before merging."""
    weight = model.get_input_embeddings().weight
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    pixels = pixels.to(device=weight.device, dtype=weight.dtype)  # as generate_text feeds pixel_values
    out = _janus_model(model).get_image_features(pixels, return_dict=True)
    return out.pooler_output.to(weight.device, weight.dtype)


@torch.inference_mode()
def prompt_embeddings(
    model: torch.nn.Module,
    processor,
    prompts: Sequence[str],
    images_per_prompt: Sequence[Sequence[Image.Image]],
    image_bytes_per_prompt: Sequence[Sequence[bytes]] | None = None,
    cache: ImageFeatureCache | None = None,
    conversation_ids: Sequence[str | None] | None = None,
    *,
    system_prefixed: bool = False,
) -> PromptEmbeddings:
    """The left-padded prefill input of ``prompts`` (chat-template text with ``<image_placeholder>``s),
    with the features of ``images_per_prompt[i]`` (prompt order) merged in as transformers merges them.

    With a ``cache``, images are keyed by ``image_bytes_per_prompt`` (the bytes each image was decoded
    from, parallel to ``images_per_prompt``; None: keys hashed from the pixels) and only the images it
    lacks go through the vision tower, all in one batch; those are then stored, linked to
    ``conversation_ids[i]`` (None, or one id or None per prompt). Without a cache every image is
    computed, in one batch, exactly as ``model(input_ids=..., pixel_values=...)`` would.

    Raises ValueError when the lists disagree in length, or placeholders and images in number.
    """
    n = len(prompts)
    if n == 0:
        raise ValueError("No prompts.")
    if len(images_per_prompt) != n:
        raise ValueError(f"{n} prompts but {len(images_per_prompt)} image lists.")
    if image_bytes_per_prompt is not None and [len(b) for b in image_bytes_per_prompt] != [
        len(i) for i in images_per_prompt
    ]:
        raise ValueError("image_bytes_per_prompt must hold one bytes object per image, prompt by prompt.")
    if conversation_ids is not None and len(conversation_ids) != n:
        raise ValueError(f"{n} prompts but {len(conversation_ids)} conversation ids.")
    images = [im for row in images_per_prompt for im in row]
    embedding = model.get_input_embeddings()
    device = embedding.weight.device

    input_ids, mask = _tokenize(processor, prompts, len(images), system_prefixed=system_prefixed)
    input_ids, mask = input_ids.to(device), mask.to(device)
    inputs_embeds = embedding(input_ids)
    if images:
        features = _features_in_order(
            model, processor, images_per_prompt, image_bytes_per_prompt, cache, conversation_ids
        )
        # JanusModel.forward: get_placeholder_mask + masked_scatter (row-major: prompt by prompt, left
        # to right, so the i-th image of the batch fills the i-th run of image tokens).
        placeholder = input_ids == model.config.image_token_id
        if int(placeholder.sum()) * inputs_embeds.shape[-1] != features.numel():
            raise ValueError(
                f"Image features and image tokens do not match: {int(placeholder.sum())} tokens, "
                f"{features.shape[0]} features."
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(placeholder.unsqueeze(-1), features)
    return PromptEmbeddings(
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
        input_ids=input_ids,
    )


def _features_in_order(
    model: torch.nn.Module,
    processor,
    images_per_prompt: Sequence[Sequence[Image.Image]],
    image_bytes_per_prompt: Sequence[Sequence[bytes]] | None,
    cache: ImageFeatureCache | None,
    conversation_ids: Sequence[str | None] | None,
) -> torch.Tensor:
    """Every image's features, in batch order, flattened to ``(n_images * num_image_tokens, hidden)``."""
    images = [im for row in images_per_prompt for im in row]
    hidden = model.get_input_embeddings().weight.shape[-1]
    if cache is None:
        return image_features(model, processor, images).reshape(-1, hidden)

    order: list[str] = []  # one key per image, batch order
    first_image: dict[str, Image.Image] = {}  # distinct keys, in order of first use
    users: dict[str, set[str]] = {}
    for i, row in enumerate(images_per_prompt):
        conversation = conversation_ids[i] if conversation_ids is not None else None
        row_bytes = image_bytes_per_prompt[i] if image_bytes_per_prompt is not None else None
        for j, image in enumerate(row):
            key = image_key(row_bytes[j]) if row_bytes is not None else pixel_key(image)
            order.append(key)
            first_image.setdefault(key, image)
            if conversation is not None:
                users.setdefault(key, set()).add(conversation)

    found: dict[str, torch.Tensor] = {}  # held here, so evictions during this call cannot lose one
    missing: list[str] = []
    for key in first_image:
        hit = cache.get(key)
        if hit is None:
            missing.append(key)
        else:
            found[key] = hit
    if missing:
        computed = image_features(model, processor, [first_image[key] for key in missing])
        for key, features in zip(missing, computed, strict=True):
            found[key] = features.clone()  # own storage: an entry must not pin the whole batch
            cache.put(key, found[key])
    for key, conversations in users.items():
        for conversation in conversations:
            cache.link(key, conversation)
    return torch.cat([found[key] for key in order]).reshape(-1, hidden)
