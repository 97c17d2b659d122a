"""What the bot process knows about the model without loading it: token counts and image costs.

The bot never imports torch or transformers, yet conversation memory has to fit the model's context.
So this module reads the checkpoint's small JSON files (from a local directory or the Hugging Face cache,
never the network): ``tokenizer.json`` through the light ``tokenizers`` library for exact text counts,
and ``config.json`` for the image token count and the context length. When they are not on disk yet
(the model is downloaded by the worker), it falls back to a conservative estimate and Janus-Pro's facts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.config import BotConfig
from bot.store.base import estimate_tokens

log = logging.getLogger(__name__)

JANUS_PRO_IMAGE_TOKENS = 576
JANUS_PRO_CONTEXT = 4096
# Room for the system prompt and the role markers the chat template adds around the conversation.
TEMPLATE_OVERHEAD_TOKENS = 80
TOKENS_PER_TURN = 6


@dataclass(frozen=True)
class ModelFacts:
    count_tokens: Callable[[str], int]
    exact: bool  # True when counts come from the model's own tokenizer.json
    image_tokens: int  # tokens one image costs in an understanding prompt (without its 2 markers)
    context_tokens: int  # the model's context length

    def history_budget(self, configured_budget: int, max_new_tokens: int) -> int:
        """Tokens conversation history may use: the configured budget, bounded by what the model can take."""
        room = self.context_tokens - max_new_tokens - TEMPLATE_OVERHEAD_TOKENS
        return max(min(configured_budget, room), 1)


def _local_file(model: str, name: str, cache_dir: str | None) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        candidate = path / name
        return candidate if candidate.is_file() else None
    try:  # a hub id: look in the cache only, never download from the bot process
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, name, cache_dir=cache_dir)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def load_model_facts(config: BotConfig) -> ModelFacts:
    model, cache_dir = config.model.model, config.model.cache_dir
    counter: Callable[[str], int] = estimate_tokens
    exact = False
    tok_path = Path(config.memory.tokenizer_path) if config.memory.tokenizer_path else None
    if tok_path is None:
        tok_path = _local_file(model, "tokenizer.json", cache_dir)
    if tok_path is not None and tok_path.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tok_path))

            def counter(text: str) -> int:
                return len(tokenizer.encode(text, add_special_tokens=False).ids)

            exact = True
        except Exception as exc:
            log.warning("could not read %s (%s); estimating token counts", tok_path, exc)
    image_tokens, context = JANUS_PRO_IMAGE_TOKENS, JANUS_PRO_CONTEXT
    cfg_path = _local_file(model, "config.json", cache_dir)
    if cfg_path is not None:
        try:
            data = json.loads(cfg_path.read_text())
            image_tokens = int(data.get("vision_config", {}).get("num_image_tokens", image_tokens))
            context = int(data.get("text_config", {}).get("max_position_embeddings", context))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("could not read %s (%s); assuming Janus-Pro's sizes", cfg_path, exc)
    log.info(
        "token counting: %s; %d tokens per image; context %d",
        "model tokenizer" if exact else "estimate",
        image_tokens,
        context,
    )
    return ModelFacts(counter, exact, image_tokens, context)
