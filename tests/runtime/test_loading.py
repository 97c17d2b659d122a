"""Loading: the real from_pretrained path, and fast, readable failures when the model is not there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from bot.cli import main as cli_main
from janus_engine.errors import ModelNotAvailable
from janus_engine.hub import download_model, looks_like_path, resolve_model_dir
from janus_engine.images import encode_png
from janus_engine.protocol import GenerateRequest, ModelSpec, TextSampling, Turn, UnderstandRequest
from janus_engine.runtime import JanusRuntime
from janus_engine.runtime.loading import resolve_placement


def test_tiny_checkpoint_loads_like_any_checkpoint(runtime, tiny_model_dir: Path) -> None:
    from transformers import JanusForConditionalGeneration

    assert isinstance(runtime.model, JanusForConditionalGeneration)
    assert (runtime.device, runtime.dtype_name) == ("cpu", "float32")
    assert (runtime.num_image_tokens, runtime.image_size, runtime.max_context_tokens) == (16, 32, 1024)
    assert runtime.count_tokens("a red fox") == len(runtime.processor.tokenizer("a red fox")["input_ids"]) - 1


def test_dtype_and_attention_options_are_applied(tiny_model_dir: Path) -> None:
    spec = ModelSpec(model=str(tiny_model_dir), dtype="bfloat16", attn_implementation="eager")
    rt = JanusRuntime.load(spec)
    assert rt.dtype_name == "bfloat16"
    assert rt.model.config.text_config._attn_implementation == "eager"


def test_auto_dtype_is_fp32_on_cpu_and_bf16_on_cuda() -> None:
    assert resolve_placement(ModelSpec(device="cpu")).dtype == torch.float32
    if torch.cuda.is_available():
        assert resolve_placement(ModelSpec(device="cuda")).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_readable_error() -> None:
    with pytest.raises(ModelNotAvailable, match="no CUDA GPU"):
        resolve_placement(ModelSpec(device="cuda"))


def test_uncached_hub_model_offline_fails_fast_saying_what_to_do(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as info:
        JanusRuntime.load(ModelSpec(model="deepseek-community/Janus-Pro-1B", cache_dir=str(tmp_path)))
    assert time.monotonic() - started < 20  # generous: it must not wait on network retries
    assert "janus-bot download deepseek-community/Janus-Pro-1B" in info.value.user_message


def test_local_files_only_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache"):
        resolve_model_dir("deepseek-community/Janus-Pro-7B", cache_dir=str(tmp_path), local_files_only=True)


def test_missing_directory_and_non_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        JanusRuntime.load(ModelSpec(model=str(tmp_path / "nope")))
    with pytest.raises(ModelNotAvailable, match=r"no config\.json"):
        JanusRuntime.load(ModelSpec(model=str(tmp_path)))


def test_a_model_that_is_not_janus_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelNotAvailable, match="not Janus-Pro"):
        JanusRuntime.load(ModelSpec(model=str(tmp_path)))


def test_broken_weights_are_a_readable_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    for f in tiny_model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelNotAvailable, match="Could not load"):
        JanusRuntime.load(ModelSpec(model=str(tmp_path)))


def test_remote_code_repo_points_to_converted_checkpoint() -> None:
    with pytest.raises(ModelNotAvailable, match="deepseek-community/Janus-Pro-7B"):
        resolve_model_dir("deepseek-ai/Janus-Pro-7B")


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert not looks_like_path("deepseek-community/Janus-Pro-1B")
    assert looks_like_path("./models/janus")
    assert looks_like_path(str(tmp_path))
    assert looks_like_path("models/janus/pro")


def test_download_command_offline_exits_with_one_readable_line(capsys) -> None:
    assert cli_main(["download", "deepseek-community/Janus-Pro-1B"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err


def test_download_without_hub_access_is_a_readable_error(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="Could not reach the Hugging Face hub"):
        download_model("deepseek-community/Janus-Pro-1B", cache_dir=str(tmp_path))
    assert time.monotonic() - started < 20
    assert not any(tmp_path.rglob("*.safetensors"))


def test_download_command_accepts_a_local_directory(tiny_model_dir: Path, capsys) -> None:
    assert cli_main(["download", str(tiny_model_dir)]) == 0
    assert "nothing to download" in capsys.readouterr().out


def _smoke(rt: JanusRuntime) -> None:
    """Generate (seeded twice: same PNGs) and understand an image on ``rt``."""
    [result] = rt.generate([GenerateRequest("g", "a red fox", n_images=2, seed=1)])
    assert len(result.images) == 2
    again = rt.generate([GenerateRequest("g", "a red fox", n_images=2, seed=1)])[0]
    assert again.images == result.images
    image = encode_png(Image.new("RGB", (40, 40), (10, 200, 10)))
    turns = (Turn("user", "What is this?", (image,)),)
    [answer] = rt.understand([UnderstandRequest("u", turns, TextSampling(max_new_tokens=5, seed=3))])
    assert answer.completion_tokens >= 1


def test_bfloat16_eager_runtime_generates_and_understands(tiny_model_dir: Path) -> None:
    """The GPU configuration's dtype path (bf16 weights, fp32 sampling), run on the CPU."""
    spec = ModelSpec(model=str(tiny_model_dir), dtype="bfloat16", attn_implementation="eager")
    _smoke(JanusRuntime.load(spec))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runtime_generates_and_understands(tiny_model_dir: Path) -> None:
    rt = JanusRuntime.load(ModelSpec(model=str(tiny_model_dir), device="cuda"))
    assert rt.device.startswith("cuda") and rt.dtype_name == "bfloat16"
    _smoke(rt)
