"""Each config key is declared once (a dataclass field with its bounds), and everything else follows from
that declaration: the reader's checks, the example file, the engine's own config."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from bot.config import DTYPES, BotConfig, ConfigError, ModelSection, parse_config
from janus_engine.config import EngineConfig, EngineSettings
from janus_engine.errors import InvalidRequest
from janus_engine.protocol import ModelSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SECTIONS = {
    f.name: get_type_hints(BotConfig)[f.name] for f in dataclasses.fields(BotConfig) if f.name != "source"
}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.pattern if isinstance(value, re.Pattern) else value


def test_every_value_in_the_example_file_is_the_declared_default() -> None:
    """Each key written out in config.example.toml (not commented) shows its true default."""
    example = tomllib.loads(EXAMPLE.read_text())
    defaults = BotConfig()
    for section, table in example.items():
        parsed = parse_config({section: table})  # no source: the SQLite path is left as written
        for key in table:
            got, want = getattr(getattr(parsed, section), key), getattr(getattr(defaults, section), key)
            assert _plain(got) == _plain(want), f"{section}.{key}: example {got!r}, declared {want!r}"


def _outside(bound: float, declared: Any, below: bool) -> float:
    step = 1 if declared is int else 0.5
    return bound - step if below else bound + step


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_declared_bound_is_enforced_by_the_reader(section: str) -> None:
    cls = SECTIONS[section]
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        declared = int if hints[f.name] in (int, int | None) else hints[f.name]
        listed = get_origin(declared) is tuple  # bounds on each element of a list (shard_ids)
        if listed:
            declared = get_args(declared)[0]
        for name, below, word in (("lo", True, ">="), ("hi", False, "<=")):
            bound = f.metadata.get(name)
            if bound is None:
                continue
            value = _outside(bound, declared, below)
            with pytest.raises(ConfigError) as info:
                parse_config({section: {f.name: [value] if listed else value}})
            key = f"{section}.{f.name}[0]" if listed else f"{section}.{f.name}"
            assert f"{key}: must be {word} {bound}" in str(info.value)


def test_the_engine_table_is_the_engines_own_declaration() -> None:
    cfg = parse_config({"engine": {"max_queue": 7, "preview_every": 12}})
    assert type(cfg.engine) is EngineSettings
    engine = cfg.engine_config()
    assert engine.settings == cfg.engine
    assert (engine.max_queue, engine.preview_every) == (7, 12)
    # One default each: what the bot runs with when [engine] is empty is the engine's own default.
    assert parse_config({}).engine_config().settings == EngineSettings()
    assert EngineConfig(model=ModelSpec()).settings == EngineSettings()


def test_engine_config_enforces_the_same_bounds() -> None:
    with pytest.raises(InvalidRequest, match="max_queue"):
        EngineConfig(model=ModelSpec(), max_queue=0)
    with pytest.raises(InvalidRequest, match="preview_every"):
        EngineConfig(model=ModelSpec(), preview_every=-1)
    with pytest.raises(InvalidRequest, match="at least one device"):
        EngineConfig(model=ModelSpec(), devices=())
    assert dataclasses.replace(EngineConfig(model=ModelSpec()), step_delay_s=0.5).step_delay_s == 0.5


def test_the_model_table_mirrors_the_engines_model_spec() -> None:
    """ModelSection is ModelSpec with devices for device: same names, same types, same defaults."""
    spec_types, section_types = get_type_hints(ModelSpec), get_type_hints(ModelSection)
    assert DTYPES == ("auto", "float32", "bfloat16", "float16")
    for f in dataclasses.fields(ModelSpec):
        if f.name == "device":
            continue
        assert section_types[f.name] == spec_types[f.name], f.name
        assert getattr(ModelSection(), f.name) == f.default, f.name
    cfg = parse_config({"model": {"devices": ["cuda:1", "cuda:0"], "torch_threads": 3, "cache_dir": ""}})
    spec = cfg.engine_config().model
    assert (spec.device, spec.torch_threads, spec.cache_dir) == ("cuda:1", 3, None)
