"""Where the weights come from: a cached hub snapshot counts only if it holds the weights, and dtype
"auto" follows what the card computes in. No network and no GPU: fake cache layouts and capabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from janus_engine.errors import ModelNotAvailable
from janus_engine.hub import resolve_model_dir
from janus_engine.runtime.loading import auto_dtype

REPO = "deepseek-community/Janus-Pro-1B"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache: Path, files: dict[str, str]) -> Path:
    """The Hugging Face cache layout: refs/main names a commit whose snapshot folder holds ``files``."""
    repo_dir = cache / ("models--" + REPO.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_a_cached_snapshot_with_only_a_config_is_not_the_model(tmp_path: Path) -> None:
    # What AutoConfig.from_pretrained leaves behind: the offline lookup finds the snapshot all the same.
    _snapshot(tmp_path, {"config.json": "{}"})
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache"):
        resolve_model_dir(REPO, cache_dir=str(tmp_path), local_files_only=True)


def test_a_cached_snapshot_missing_a_shard_of_its_index_is_not_the_model(tmp_path: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {
        "config.json": "{}",
        "model.safetensors.index.json": json.dumps(index),
        "model-00001-of-00002.safetensors": "",
    }
    _snapshot(tmp_path, files)
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache"):
        resolve_model_dir(REPO, cache_dir=str(tmp_path), local_files_only=True)


def test_a_complete_cached_snapshot_is_used_offline(tmp_path: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {
        "config.json": "{}",
        "model.safetensors.index.json": json.dumps(index),
        "model-00001-of-00002.safetensors": "",
        "model-00002-of-00002.safetensors": "",
    }
    snapshot = _snapshot(tmp_path, files)
    assert resolve_model_dir(REPO, cache_dir=str(tmp_path), local_files_only=True) == snapshot


def test_a_cached_single_file_checkpoint_is_used_offline(tmp_path: Path) -> None:
    snapshot = _snapshot(tmp_path, {"config.json": "{}", "model.safetensors": ""})
    assert resolve_model_dir(REPO, cache_dir=str(tmp_path), local_files_only=True) == snapshot


@pytest.mark.parametrize(
    ("device_type", "bf16_supported", "expected"),
    [
        ("cuda", True, torch.bfloat16),  # Ampere and later (A100, L4, H100, RTX 30xx+)
        ("cuda", False, torch.float16),  # T4, V100: bf16 would be emulated
        ("cpu", False, torch.float32),
        ("cpu", True, torch.float32),
    ],
)
def test_auto_dtype_follows_what_the_device_computes_in(device_type, bf16_supported, expected) -> None:
    assert auto_dtype(device_type, bf16_supported=bf16_supported) is expected
