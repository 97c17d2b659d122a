"""bot.config: the example file is valid and complete, and every bad key is named with the reason."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import get_type_hints

import pytest

from bot.config import BotConfig, ConfigError, load_config, parse_config, restart_required_changes
from janus_engine.config import EngineSettings
from janus_engine.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"


def test_example_file_loads_and_equals_the_defaults() -> None:
    """The example documents the defaults: loading it must give the same values as an empty file."""
    cfg = load_config(EXAMPLE)
    empty = parse_config({}, source=EXAMPLE.resolve())
    for section in ("discord", "model", "engine", "generation", "understanding", "memory", "limits", "ui"):
        assert getattr(cfg, section) == getattr(empty, section), section
    assert [p.pattern for p in cfg.access.nsfw_prompt_patterns] == [
        p.pattern for p in empty.access.nsfw_prompt_patterns
    ]


def test_example_file_documents_every_key() -> None:
    """Every field of every section appears in config.example.toml (so no key goes undocumented)."""
    data = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    section_types = get_type_hints(BotConfig)
    for f in dataclasses.fields(BotConfig):
        if f.name == "source":
            continue
        for sub in dataclasses.fields(section_types[f.name]):
            documented = sub.name in data.get(f.name, {}) or f"# {sub.name} =" in text
            assert documented, f"{f.name}.{sub.name} missing from config.example.toml"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"engine": {"max_queue": 0}}, "engine.max_queue: must be >= 1"),
        ({"engine": {"max_qeue": 5}}, "engine.max_qeue: unknown key"),
        ({"enigne": {}}, "enigne: unknown section"),
        ({"generation": {"max_count": "four"}}, "generation.max_count: must be an integer"),
        ({"generation": {"default_count": 5, "max_count": 4}}, "generation.default_count"),
        ({"generation": {"min_guidance": 1.0}}, "generation.min_guidance: must be >="),
        ({"model": {"dtype": "int4"}}, "model.dtype: must be one of"),
        ({"model": {"devices": ["gpu0"]}}, "model.devices: 'gpu0' is not a device"),
        ({"model": {"devices": []}}, "model.devices: needs at least one"),
        ({"memory": {"default_scope": "global"}}, "memory.default_scope: must be one of"),
        ({"access": {"blocked_prompt_patterns": ["(unclosed"]}}, "access.blocked_prompt_patterns[0]"),
        ({"access": {"owners": [1]}}, "access.owners: unknown key"),
        ({"discord": {"owners": [-3]}}, "discord.owners: must be a list of Discord ids"),
        ({"discord": {"token_env": "MTA3.abc.def"}}, "discord.token_env: must be the NAME"),
        ({"database": {"url": "janus.db"}}, "database.url: must be an SQLAlchemy URL"),
        ({"logging": {"level": "LOUD"}}, "logging.level"),
        ({"ui": {"progress_interval_s": 0.2}}, "ui.progress_interval_s: must be >= 1.0"),
        ({"limits": {"imagine_cooldown_s": True}}, "limits.imagine_cooldown_s: must be a number"),
        ({"understanding": {"allowed_content_types": ["text/plain"]}}, "understanding.allowed_content_types"),
        ({"limits": 3}, "limits: must be a table"),
        ({"engine": {"backend": "celery"}}, "engine.backend: must be one of"),
        ({"engine": {"ray_address": 6379}}, "engine.ray_address: must be a string"),
        (
            {"engine": {"backend": "ray"}, "model": {"devices": ["cuda:1"]}},
            'model.devices: with engine.backend = "ray" each entry is one worker actor',
        ),
        ({"model": {"devices": ["cuda:0", "cuda:0"]}}, "model.devices: a GPU is listed twice"),
        ({"discord": {"shard_ids": [0]}}, "discord.shard_ids: needs discord.shard_count"),
        ({"discord": {"shard_count": 2, "shard_ids": [2]}}, "discord.shard_ids: each id must be below"),
        ({"discord": {"shard_count": 2, "shard_ids": [1, 1]}}, "discord.shard_ids: an id is listed twice"),
        ({"discord": {"shard_count": 2, "shard_ids": [-1]}}, "discord.shard_ids[0]: must be >= 0"),
        ({"discord": {"shard_count": -1}}, "discord.shard_count: must be >= 0"),
        (
            {"engine": {"service": "two words"}},
            "engine.service: Engine setting service must be empty or a name",
        ),
        ({"http": {"port": 70000}}, "http.port: must be <= 65535"),
        ({"http": {"host": "0.0.0.0; rm -rf"}}, "http.host: must be an IP address or a host name"),
        # TOML has nan and inf: NaN passes every bound, so it is refused by name (as infinity is)
        ({"engine": {"job_timeout_s": float("nan")}}, "engine.job_timeout_s: must be a finite number"),
        ({"understanding": {"temperature": float("nan")}}, "understanding.temperature: must be a finite"),
        ({"ui": {"progress_interval_s": float("nan")}}, "ui.progress_interval_s: must be a finite number"),
        ({"limits": {"imagine_cooldown_s": float("inf")}}, "limits.imagine_cooldown_s: must be a finite"),
    ],
)
def test_bad_keys_are_named_with_the_reason(doc: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert needle in str(info.value)


def test_ids_accept_strings_of_digits_and_relative_sqlite_path_follows_the_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "conf" / "bot.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text(
        '[discord]\nowners = ["123456789012345678", 42]\n[database]\nurl = "sqlite+aiosqlite:///data/bot.db"\n'
    )
    cfg = load_config(cfg_file)
    assert cfg.discord.owners == (123456789012345678, 42)
    assert cfg.database.url == f"sqlite+aiosqlite:///{tmp_path / 'conf' / 'data' / 'bot.db'}"


def test_missing_and_malformed_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine\nmax_queue = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[engine]\nmax_queue = \xff\xfe\x00\x81\n")  # not UTF-8: not a UnicodeDecodeError
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(binary)
    nan = tmp_path / "nan.toml"
    nan.write_text("[engine]\njob_timeout_s = nan\n")
    with pytest.raises(ConfigError, match=r"engine\.job_timeout_s: must be a finite number, got nan"):
        load_config(nan)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_engine_settings_built_in_code_refuse_non_finite_numbers(value: float) -> None:
    with pytest.raises(InvalidRequest, match="job_timeout_s must be a finite number"):
        EngineSettings(job_timeout_s=value)


def test_token_comes_from_the_named_env_var_only() -> None:
    cfg = parse_config({"discord": {"token_env": "MY_BOT_TOKEN"}})
    assert cfg.read_token({"MY_BOT_TOKEN": " abc.def "}) == "abc.def"
    with pytest.raises(ConfigError) as info:
        cfg.read_token({"DISCORD_TOKEN": "wrong-variable"})
    assert "MY_BOT_TOKEN" in str(info.value)
    assert "wrong-variable" not in str(info.value)


def test_blocked_patterns_are_case_insensitive_regexes() -> None:
    cfg = parse_config({"access": {"blocked_prompt_patterns": [r"\bforbidden\b"]}})
    (pat,) = cfg.access.blocked_prompt_patterns
    assert pat.search("A FORBIDDEN castle")
    assert not pat.search("unforbiddenly")


def test_engine_config_mapping() -> None:
    pytest.importorskip("janus_engine.config")
    cfg = parse_config(
        {
            "model": {"model": "/models/janus", "devices": ["cuda:0", "cuda:1"], "dtype": "bfloat16"},
            "engine": {"max_queue": 7, "job_timeout_s": 30, "preview_every": 0},
        }
    )
    ec = cfg.engine_config()
    assert ec.devices == ("cuda:0", "cuda:1")
    assert ec.model.model == "/models/janus"
    assert ec.model.dtype == "bfloat16"
    assert ec.max_queue == 7
    assert ec.job_timeout_s == 30.0
    assert ec.preview_every == 0
    assert ec.backend == "local"


def test_a_process_is_named_by_its_shards_and_gets_the_matching_client() -> None:
    from bot.app import shard_options

    one = parse_config({"discord": {"shard_count": 4, "shard_ids": [2]}})
    several = parse_config({"discord": {"shard_count": 16, "shard_ids": [8, 0, 1, 2, 3]}})
    assert (
        parse_config({}).discord.owner == "main"
        and shard_options(parse_config({}), sharded_client=False) == {}
    )
    assert one.discord.owner == "shards 2 of 4"
    assert shard_options(one, sharded_client=False) == {"shard_count": 4, "shard_id": 2}
    assert several.discord.owner == "shards 0-3,8 of 16"
    assert shard_options(several, sharded_client=True) == {"shard_count": 16, "shard_ids": [8, 0, 1, 2, 3]}
    scattered = parse_config({"discord": {"shard_count": 1000, "shard_ids": list(range(0, 1000, 2))}})
    assert len(scattered.discord.owner) <= 64  # the column's width


def test_ray_backend_takes_repeated_cuda_entries_as_one_actor_each() -> None:
    cfg = parse_config(
        {
            "model": {"devices": ["cuda", "cuda", "cpu"]},
            "engine": {"backend": "ray", "ray_address": "ray://head:10001"},
        }
    )
    ec = cfg.engine_config()
    assert (ec.backend, ec.ray_address, ec.devices) == ("ray", "ray://head:10001", ("cuda", "cuda", "cpu"))


def test_reload_reports_what_needs_a_restart() -> None:
    old = parse_config({})
    new = parse_config({"limits": {"chat_cooldown_s": 5}, "engine": {"max_queue": 3}})
    assert restart_required_changes(old, new) == ["engine"]
    assert restart_required_changes(old, parse_config({"limits": {"chat_cooldown_s": 5}})) == []
    later = parse_config(
        {"logging": {"file": "bot.log", "level": "DEBUG"}, "memory": {"tokenizer_path": "t.json"}}
    )
    assert restart_required_changes(old, later) == ["logging.file", "memory.tokenizer_path"]
    assert restart_required_changes(old, parse_config({"http": {"port": 9100}})) == ["http"]


async def test_a_process_with_several_shards_runs_an_auto_sharded_bot() -> None:
    from discord.ext import commands

    from bot.app import JanusBot, ShardedJanusBot, make_bot

    facts = object()  # not used before the bot starts
    several = make_bot(
        parse_config({"discord": {"shard_count": 4, "shard_ids": [1, 3]}}),
        store=None,
        engine=None,
        facts=facts,
    )
    assert isinstance(several, ShardedJanusBot) and isinstance(several, commands.AutoShardedBot)
    assert (several.shard_ids, several.shard_count) == ([1, 3], 4)
    one = make_bot(
        parse_config({"discord": {"shard_count": 4, "shard_ids": [3]}}), store=None, engine=None, facts=facts
    )
    assert type(one) is JanusBot and (one.shard_id, one.shard_count) == (3, 4)
    await one.close()  # (an AutoShardedBot that never logged in has nothing to close)
