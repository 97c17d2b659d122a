"""The tiny checkpoint: complete, deterministic, and loadable by transformers like a hub checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from bot.cli import main as cli_main
from janus_engine.tiny import TINY_IMAGE_TOKENS, build_tiny_checkpoint


def test_checkpoint_has_every_file_a_converted_hub_checkpoint_has(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    for required in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        assert required in names
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    # Image mode reads boi_token_id from here; it is lost when _from_model_config stays True.
    assert gen["generation_kwargs"]["boi_token_id"] == 4
    assert gen["_from_model_config"] is False


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again", seed=0)
    other = build_tiny_checkpoint(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


def test_processor_renders_janus_chat_format(runtime) -> None:
    processor = runtime.processor
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A fox."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        "<|User|>: <image_placeholder>\nWhat is this?\n\n<|Assistant|>: A fox.<｜end▁of▁sentence｜>"
        "<|User|>: Sure?\n\n<|Assistant|>:"
    )
    ids = processor(text="a cat", generation_mode="image")["input_ids"][0]
    tok = processor.tokenizer
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids("<begin_of_image>")
    assert processor.num_image_tokens == TINY_IMAGE_TOKENS == runtime.num_image_tokens


def test_tokenizer_round_trips_text(runtime) -> None:
    tok = runtime.processor.tokenizer
    text = "An astronaut riding a horse, 4k! Ünïcödé too."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_make_tiny_model_command_writes_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    assert cli_main(["make-tiny-model", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert str(tmp_path / "m") in capsys.readouterr().out
