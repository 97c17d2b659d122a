"""How many images a generation batch can hold on a device: pure arithmetic, no torch.

A batch of N images holds the weights once plus, per image, the KV cache of its CFG pair: two rows
(conditional, unconditional), each ``prompt + 576`` positions long, each position storing a key and a value
of ``num_key_value_heads * head_dim`` numbers in every layer. On top of that comes a fixed reserve for the
CUDA context, cuBLAS workspaces, the VQ decode of the finished images and allocator slack
(:data:`RESERVE_BYTES`). The numbers agree with measurements (janus-facts: one image's CFG pair is about
0.6 GB on 7B and 0.24 GB on 1B; 16 images on 7B do not fit a 24 GB card).

:func:`model_shape_from_config` reads the shape from a checkpoint's ``config.json`` (as a dict);
:func:`parameter_count` reads the exact parameter count from the safetensors headers (a few KB per file,
never the weights).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JANUS_IMAGE_TOKENS = 576
DEFAULT_PROMPT_TOKENS = 128  # a long-ish prompt with its chat template; a batch pads to its longest
RESERVE_BYTES = 2**30  # CUDA context + workspaces + VQ decode + fragmentation, measured well under this
CFG_ROWS = 2
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class ModelShape:
    """The parts of a Janus checkpoint's shape that decide its KV cache."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    image_tokens: int = JANUS_IMAGE_TOKENS

    @classmethod
    def llama(
        cls,
        layers: int,
        hidden: int,
        heads: int,
        kv_heads: int | None = None,
        image_tokens: int = JANUS_IMAGE_TOKENS,
    ) -> ModelShape:
        return cls(layers, hidden, heads, kv_heads or heads, hidden // heads, image_tokens)


# The two published checkpoints (deepseek-community/Janus-Pro-7B and -1B), for the docs' table.
JANUS_PRO_7B = ModelShape.llama(30, 4096, 32, 32)
JANUS_PRO_1B = ModelShape.llama(24, 2048, 16, 16)
JANUS_PRO_7B_PARAMS = 7.4e9
JANUS_PRO_1B_PARAMS = 2.1e9


def model_shape_from_config(config: dict[str, Any]) -> ModelShape:
    """The shape from a Janus ``config.json`` (its ``text_config`` is a Llama config; missing keys take
    Llama's defaults, as transformers does)."""
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads", 32))
    hidden = int(text.get("hidden_size", 4096))
    kv = text.get("num_key_value_heads")
    head_dim = text.get("head_dim") or hidden // heads
    vision = config.get("vision_config") or {}
    return ModelShape(
        num_layers=int(text.get("num_hidden_layers", 32)),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(kv) if kv else heads,
        head_dim=int(head_dim),
        image_tokens=int(vision.get("num_image_tokens", JANUS_IMAGE_TOKENS)),
    )


def kv_bytes_per_image(
    shape: ModelShape, *, dtype_bytes: int = 2, prompt_tokens: int = DEFAULT_PROMPT_TOKENS
) -> int:
    """KV-cache bytes of one image: its CFG pair of rows, prompt + image tokens long, K and V per layer."""
    per_position = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes
    return CFG_ROWS * (prompt_tokens + shape.image_tokens) * per_position


@dataclass(frozen=True)
class Budget:
    """What a batch needs on a device of ``total_bytes``."""

    weights_bytes: int
    per_image_bytes: int
    reserve_bytes: int
    total_bytes: int
    images: int  # the batch size asked about

    @property
    def needed_bytes(self) -> int:
        return self.weights_bytes + self.reserve_bytes + self.images * self.per_image_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.total_bytes

    @property
    def max_images(self) -> int:
        """The largest batch that fits (0: not even the weights and one image)."""
        room = self.total_bytes - self.weights_bytes - self.reserve_bytes
        return max(room // self.per_image_bytes, 0) if self.per_image_bytes > 0 else 0


def batch_budget(
    shape: ModelShape,
    *,
    parameters: float,
    dtype_bytes: int,
    total_bytes: int,
    images: int,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    reserve_bytes: int = RESERVE_BYTES,
) -> Budget:
    """Whether ``images`` images in one batch fit ``total_bytes`` with ``parameters`` weights in
    ``dtype_bytes`` each (the KV cache is kept in the same dtype)."""
    return Budget(
        weights_bytes=int(parameters * dtype_bytes),
        per_image_bytes=kv_bytes_per_image(shape, dtype_bytes=dtype_bytes, prompt_tokens=prompt_tokens),
        reserve_bytes=reserve_bytes,
        total_bytes=total_bytes,
        images=images,
    )


def runtime_dtype_bytes(dtype: str, device_type: str) -> int:
    """Bytes per number the model runs in: "auto" is bf16/fp16 on a GPU and float32 on CPU (as
    :func:`janus_engine.runtime.loading.auto_dtype` picks)."""
    if dtype == "auto":
        return 4 if device_type == "cpu" else 2
    return DTYPE_BYTES[dtype]


def safetensors_parameters(path: Path) -> int:
    """The number of values in one safetensors file, from its JSON header alone."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    count = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in entry["shape"]:
            n *= int(dim)
        count += n
    return count


def parameter_count(files: Iterable[Path]) -> int:
    """The parameter count of a checkpoint's safetensors files."""
    return sum(safetensors_parameters(p) for p in files)


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (every shard its index names, or every *.safetensors)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / s for s in shards]
    return sorted(directory.glob("*.safetensors"))


def budget_table(cards_gib: Iterable[int] = (16, 24, 40, 80)) -> list[tuple[str, int, Budget]]:
    """(model, card GiB, budget at 1 image) for Janus-Pro-7B and -1B in bf16: the docs' table."""
    rows = []
    for label, shape, params in (
        ("Janus-Pro-7B", JANUS_PRO_7B, JANUS_PRO_7B_PARAMS),
        ("Janus-Pro-1B", JANUS_PRO_1B, JANUS_PRO_1B_PARAMS),
    ):
        for gb in cards_gib:
            rows.append(
                (
                    label,
                    gb,
                    batch_budget(shape, parameters=params, dtype_bytes=2, total_bytes=gb * 2**30, images=1),
                )
            )
    return rows
