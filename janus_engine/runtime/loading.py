"""Loading a Janus-Pro checkpoint (model + processor) onto a device, with every failure made readable."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from janus_engine.errors import ModelNotAvailable
from janus_engine.hub import resolve_model_dir
from janus_engine.protocol import ModelSpec

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where and in what precision the model runs."""

    device: torch.device
    dtype: torch.dtype


def resolve_placement(spec: ModelSpec) -> Placement:
    """Pick device and dtype: "auto" means bf16 on CUDA (what Janus-Pro was trained in) and fp32 on CPU
    (bf16 matmuls on CPUs without AMX are many times slower than fp32)."""
    name = spec.device or "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelNotAvailable(f"Unknown device {name!r}: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelNotAvailable(f"Device {name} was requested but this torch build sees no CUDA GPU.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ModelNotAvailable(f"Device {name} does not exist: {count} GPU(s) visible.")
    if spec.dtype == "auto":
        bf16_supported = False
        if device.type == "cuda":
            with torch.cuda.device(device):
                bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = auto_dtype(device.type, bf16_supported=bf16_supported)
    else:
        dtype = _DTYPES[spec.dtype]
    return Placement(device=device, dtype=dtype)


def auto_dtype(device_type: str, *, bf16_supported: bool) -> torch.dtype:
    """dtype "auto": bf16 on GPUs that compute in it (Ampere and later), fp16 on older cards (T4, V100),
    where bf16 is emulated at a fraction of the speed, and fp32 on CPU."""
    if device_type != "cuda":
        return torch.float32
    return torch.bfloat16 if bf16_supported else torch.float16


def load_model_and_processor(spec: ModelSpec) -> tuple[Any, Any, Placement]:
    """Load ``JanusForConditionalGeneration`` and ``JanusProcessor`` exactly as for any hub checkpoint."""
    from transformers import AutoConfig, JanusForConditionalGeneration, JanusProcessor

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    placement = resolve_placement(spec)
    path = resolve_model_dir(spec.model, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"{spec.model} has an unreadable config: {exc}") from None
    if getattr(config, "model_type", None) != "janus":
        raise ModelNotAvailable(
            f"{spec.model} is a {getattr(config, 'model_type', 'unknown')!r} model, not Janus-Pro. "
            f"Use deepseek-community/Janus-Pro-7B or deepseek-community/Janus-Pro-1B."
        )
    kwargs: dict[str, Any] = {"dtype": placement.dtype}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if placement.device.type != "cpu":
        kwargs["device_map"] = str(placement.device)  # weights go straight to the GPU, no CPU copy
    try:
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = JanusProcessor.from_pretrained(path)
    except Exception as exc:  # damaged files raise anything from OSError to SafetensorError
        log.debug("loading %s failed", spec.model, exc_info=True)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelNotAvailable(f"Could not load {spec.model}: {reason}") from None
    model = model.to(placement.device).eval()
    log.info(
        "loaded %s on %s (%s, attention %s)",
        spec.model,
        placement.device,
        placement.dtype,
        model.config._attn_implementation,
    )
    return model, processor, placement
