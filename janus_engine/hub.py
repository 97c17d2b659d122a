"""Where model files come from: a local directory, the Hugging Face cache, or a download.

Loading must never hang or end in a stack trace when the weights are missing: the message says what to do
(run ``janus-bot download`` or point ``--model`` at a directory). Downloads go through
``huggingface_hub.snapshot_download``, which shows tqdm progress bars and resumes interrupted files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from janus_engine.errors import ModelNotAvailable
from janus_engine.protocol import DEFAULT_MODEL

log = logging.getLogger(__name__)

KNOWN_MODELS = (DEFAULT_MODEL, "deepseek-community/Janus-Pro-1B")
# Only what from_pretrained needs: the converted repos also carry files the native classes never read.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
# The original DeepSeek repos hold remote-code checkpoints that transformers' native classes cannot load.
REMOTE_CODE_REPOS = {
    "deepseek-ai/janus-pro-7b": "deepseek-community/Janus-Pro-7B",
    "deepseek-ai/janus-pro-1b": "deepseek-community/Janus-Pro-1B",
}


def looks_like_path(model: str) -> bool:
    """A model argument that names a directory rather than a hub id (``owner/name``)."""
    return (
        model.startswith((".", "/", "~"))
        or os.sep in model.strip("/").replace("/", "", 1)
        or (os.altsep is not None and os.altsep in model)
        or Path(model).expanduser().exists()
    )


def _check_not_remote_code(model: str) -> None:
    replacement = REMOTE_CODE_REPOS.get(model.lower())
    if replacement:
        raise ModelNotAvailable(
            f"{model} is DeepSeek's remote-code checkpoint, which transformers' Janus classes cannot load. "
            f"Use the converted checkpoint {replacement} instead."
        )


def hub_offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _download_hint(model: str) -> str:
    return (
        f"Run `janus-bot download {model}` on a machine with internet access (it fills the Hugging Face "
        f"cache), or pass a local checkpoint directory with --model."
    )


def resolve_local_dir(path: str) -> Path:
    """The checkpoint directory ``path`` names, checked to hold a config.json."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelNotAvailable(
            f"Model directory {directory} does not exist. Pass a hub id such as {DEFAULT_MODEL} or a "
            f"directory written by save_pretrained (or `janus-bot make-tiny-model DIR` for a test model)."
        )
    if not (directory / "config.json").is_file():
        raise ModelNotAvailable(f"{directory} has no config.json, so it is not a model checkpoint directory.")
    return directory


def has_weights(directory: Path) -> bool:
    """Whether ``directory`` holds safetensors weights, and every shard its index names if it has one."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all((directory / shard).is_file() for shard in shards)
    return any(path.is_file() for path in directory.glob("*.safetensors"))


def resolve_model_dir(model: str, *, cache_dir: str | None = None, local_files_only: bool = False) -> Path:
    """The local directory holding ``model``'s files, downloading them first when the hub is reachable.

    The cache is checked first with ``local_files_only`` (no network at all), so a cached model starts
    without touching the hub, and a missing one with hub access off fails at once instead of retrying.
    """
    if looks_like_path(model):
        return resolve_local_dir(model)
    _check_not_remote_code(model)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        found = snapshot_download(
            model, cache_dir=cache_dir, local_files_only=True, allow_patterns=ALLOW_PATTERNS
        )
        cached: Path | None = Path(found)
    except HFValidationError as exc:
        raise ModelNotAvailable(f"{model!r} is neither a directory nor a valid hub id ({exc}).") from None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        cached = None
    # The offline lookup returns the snapshot folder whatever it holds: one AutoConfig.from_pretrained
    # leaves a snapshot with just config.json. Only a snapshot with the weights counts as the model.
    if cached is not None:
        if has_weights(cached):
            return cached
        log.info("the cached snapshot of %s (%s) lacks weight files", model, cached)
    if local_files_only or hub_offline():
        raise ModelNotAvailable(
            f"Model {model} is not in the local Hugging Face cache and hub access is off. "
            + _download_hint(model)
        )
    log.info("model %s is not cached: downloading it now", model)
    return download_model(model, cache_dir=cache_dir)


def download_model(model: str, *, cache_dir: str | None = None) -> Path:
    """Fetch ``model`` into the Hugging Face cache (progress bars on stderr) and return its directory."""
    _check_not_remote_code(model)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(model, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS))
    except HFValidationError as exc:
        raise ModelNotAvailable(f"{model!r} is not a valid hub id ({exc}).") from None
    except GatedRepoError:
        raise ModelNotAvailable(
            f"{model} is gated: accept its terms on huggingface.co and log in with `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotAvailable(
            f"{model} was not found on the Hugging Face hub. Known Janus-Pro checkpoints: "
            f"{', '.join(KNOWN_MODELS)}."
        ) from None
    except LocalEntryNotFoundError:
        raise ModelNotAvailable(
            f"Could not reach the Hugging Face hub to download {model} (offline or no network). Check the "
            f"connection and proxy settings, or copy a downloaded checkpoint here and pass its directory "
            f"with --model."
        ) from None
    except OSError as exc:  # network errors, a full disk, permissions
        raise ModelNotAvailable(f"Downloading {model} failed: {exc}") from None


def download_command(args: argparse.Namespace) -> int:
    """``janus-bot download [MODEL] [--cache-dir DIR]``: fetch weights ahead of time, with progress bars."""
    model = args.model
    if looks_like_path(model):
        path = resolve_local_dir(model)
        print(f"{model} is a local checkpoint directory ({path}); nothing to download.")
        return 0
    if hub_offline():
        raise ModelNotAvailable("HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it and retry.")
    path = download_model(model, cache_dir=getattr(args, "cache_dir", None))
    print(f"{model} is ready in {path}")
    return 0
