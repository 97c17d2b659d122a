"""Devices: a bad name is refused when the config is built, a device this torch lacks is refused by the
worker in one line (real worker processes on the tiny checkpoint), and the batch memory arithmetic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.config import ConfigError, parse_config
from janus_engine.config import EngineConfig
from janus_engine.devices import parse_device, probe_device
from janus_engine.engine import JanusEngine
from janus_engine.errors import InvalidRequest, ModelNotAvailable
from janus_engine.memory_budget import (
    JANUS_PRO_1B,
    JANUS_PRO_7B,
    batch_budget,
    budget_table,
    checkpoint_files,
    kv_bytes_per_image,
    model_shape_from_config,
    parameter_count,
)
from janus_engine.protocol import ModelSpec
from tests.engine.engine_helpers import tiny_engine_config

GIB = 2**30


def _missing_cuda_device() -> tuple[str, str]:
    """A cuda device this torch does not have, and the reason the worker must give."""
    import torch

    if not torch.cuda.is_available():
        return "cuda:0", f"cuda:0 is not available: this torch build has no CUDA (torch {torch.__version__})"
    count = torch.cuda.device_count()
    return f"cuda:{count}", f"cuda:{count} does not exist: {count} GPU{'' if count == 1 else 's'} visible"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("cpu", "cpu"),
        ("cuda", "cuda"),
        ("cuda:0", "cuda:0"),
        ("cuda:01", "cuda:1"),
        ("CUDA:2", "cuda:2"),
        ("mps", "mps"),
        ("auto", "auto"),
        (" cpu ", "cpu"),
    ],
)
def test_parse_device_accepts_the_device_forms(text: str, canonical: str) -> None:
    assert parse_device(text) == canonical


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cuda:", "cuda:-1", "gpu0", "", "cpu:0", "cuda 0"])
def test_parse_device_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a device: use cpu, cuda, cuda:N, mps or auto"):
        parse_device(text)


def test_a_bad_device_is_refused_when_the_config_is_built() -> None:
    spec = ModelSpec(model="x")
    with pytest.raises(InvalidRequest, match="'tpu' is not a device"):
        EngineConfig(model=spec, devices=("cpu", "tpu"))
    assert EngineConfig(model=spec, devices=("cuda:01", "auto")).devices == ("cuda:1", "auto")
    with pytest.raises(ConfigError, match=r"model.devices: 'cuda:x' is not a device \(use cpu, cuda, cuda:N"):
        parse_config({"model": {"devices": ["cpu", "cuda:x"]}})
    assert parse_config({"model": {"devices": ["auto"]}}).engine_config().devices == ("auto",)


def test_probe_device_tells_what_this_torch_has() -> None:
    cpu = probe_device("cpu")
    assert cpu.exists and cpu.problem is None and cpu.name == "CPU"
    assert cpu.total_bytes is not None and cpu.total_bytes > 2**28
    auto = probe_device("auto")
    assert auto.exists and auto.resolved in ("cpu", "cuda")
    device, reason = _missing_cuda_device()
    missing = probe_device(device)
    assert not missing.exists and missing.problem == reason and missing.summary == reason


def test_the_worker_refuses_a_missing_device_in_one_line(tiny_model_dir: Path) -> None:
    """Real worker processes: the default cuda:0 on a CPU-only torch (or a GPU index past the last one)
    fails the engine's start with the reason, not torch's ``module 'torch._C' has no attribute
    '_cuda_setDevice'``."""
    device, reason = _missing_cuda_device()
    engine = JanusEngine(tiny_engine_config(tiny_model_dir, devices=(device,)))

    async def start() -> None:
        await asyncio.wait_for(engine.start(), 120)

    with pytest.raises(ModelNotAvailable) as caught:
        asyncio.run(start())
    assert caught.value.user_message == reason


# ---- the memory budget ------------------------------------------------------------------------------------


def test_kv_cache_per_image_matches_the_measured_janus_pro_figures() -> None:
    # 2 CFG rows x 576 image positions x (K and V) x layers x kv heads x head dim x 2 bytes (bf16)
    assert kv_bytes_per_image(JANUS_PRO_7B, prompt_tokens=0) == 2 * 576 * 2 * 30 * 32 * 128 * 2
    assert kv_bytes_per_image(JANUS_PRO_1B, prompt_tokens=0) == 2 * 576 * 2 * 24 * 16 * 128 * 2
    # janus-facts: one image's CFG pair is roughly 0.6 GB on 7B and 0.24 GB on 1B
    assert 0.55e9 < kv_bytes_per_image(JANUS_PRO_7B) < 0.75e9
    assert 0.2e9 < kv_bytes_per_image(JANUS_PRO_1B) < 0.3e9


def test_batch_budget_says_what_fits() -> None:
    # janus-facts: 16 images on 7B do not fit a 24 GB card; the weights alone (14.8 GB) fit
    b = batch_budget(JANUS_PRO_7B, parameters=7.4e9, dtype_bytes=2, total_bytes=24 * GIB, images=16)
    assert not b.fits and 1 <= b.max_images < 16
    fitting = batch_budget(
        JANUS_PRO_7B, parameters=7.4e9, dtype_bytes=2, total_bytes=24 * GIB, images=b.max_images
    )
    assert fitting.fits and fitting.needed_bytes <= 24 * GIB
    assert not batch_budget(
        JANUS_PRO_7B, parameters=7.4e9, dtype_bytes=2, total_bytes=24 * GIB, images=b.max_images + 1
    ).fits
    assert batch_budget(JANUS_PRO_7B, parameters=7.4e9, dtype_bytes=2, total_bytes=80 * GIB, images=16).fits
    too_small = batch_budget(JANUS_PRO_7B, parameters=7.4e9, dtype_bytes=2, total_bytes=12 * GIB, images=1)
    assert not too_small.fits and too_small.max_images == 0
    table = {(model, gb): budget.max_images for model, gb, budget in budget_table()}
    assert table[("Janus-Pro-7B", 24)] < 16 <= table[("Janus-Pro-7B", 40)]
    assert all(table[("Janus-Pro-1B", gb)] > table[("Janus-Pro-7B", gb)] for gb in (16, 24, 40, 80))


def test_shape_and_parameters_are_read_from_the_checkpoint_files(tiny_model_dir: Path) -> None:
    from safetensors import safe_open

    data = json.loads((tiny_model_dir / "config.json").read_text())
    shape = model_shape_from_config(data)
    text = data["text_config"]
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.num_kv_heads) == (
        text["num_hidden_layers"],
        text["hidden_size"],
        text["num_attention_heads"],
        text["num_key_value_heads"],
    )
    assert shape.image_tokens == data["vision_config"]["num_image_tokens"]
    files = checkpoint_files(tiny_model_dir)
    assert files
    expected = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                expected += n
    assert parameter_count(files) == expected > 0
    # The published 7B shape, as its config.json spells it (Llama defaults fill the rest).
    seven = model_shape_from_config({"text_config": {"num_hidden_layers": 30}})
    assert seven == JANUS_PRO_7B


def test_ray_backend_devices_are_cuda_or_cpu(tiny_model_dir):
    # Ray decides which GPU an actor gets, so a numbered device would promise what the config cannot keep.
    config = tiny_engine_config(tiny_model_dir, backend="ray", devices=("cuda", "CPU"))
    assert config.devices == ("cuda", "cpu")
    with pytest.raises(InvalidRequest, match="Ray picks"):
        tiny_engine_config(tiny_model_dir, backend="ray", devices=("cuda:1",))
    with pytest.raises(InvalidRequest, match="backend must be one of 'local', 'ray'"):
        tiny_engine_config(tiny_model_dir, backend="celery")
    with pytest.raises(InvalidRequest, match="ray_address"):
        tiny_engine_config(tiny_model_dir, backend="ray", ray_address="head:6379\nrm -rf /")
