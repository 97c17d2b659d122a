"""The emulator's own pieces without a client: mentions, limits, snowflakes, option and modal payloads."""

from __future__ import annotations

import pytest

from discord_emulator import DiscordAPIError, DiscordEmulator, EmulatorUsageError, Upload
from discord_emulator.payloads import ResolvedBuilder, build_command_data, modal_submit_components
from discord_emulator.rules import check_components, check_message
from discord_emulator.state import DISCORD_EPOCH_MS


@pytest.fixture
def emu() -> DiscordEmulator:
    return DiscordEmulator()  # not started: the world and its rules work without a server


def test_pings_follow_allowed_mentions(emu: DiscordEmulator) -> None:
    guild = emu.add_guild()
    channel = emu.add_channel(guild)
    ann = emu.add_user("ann")
    role = emu.add_role(guild, "artists")
    text = f"@everyone {ann.mention} {role.mention}"
    world = emu.world

    _, _, default = world.compute_mentions(channel, text, None, None)
    assert default.everyone and default.users == {ann.id} and default.roles == {role.id}
    _, _, none = world.compute_mentions(channel, text, {"parse": []}, None)
    assert not none
    _, _, only_ann = world.compute_mentions(channel, text, {"parse": [], "users": [str(ann.id)]}, None)
    assert only_ann.users == {ann.id} and not only_ann.roles and not only_ann.everyone


def test_reply_pings_the_author_unless_told_not_to(emu: DiscordEmulator) -> None:
    guild = emu.add_guild()
    channel = emu.add_channel(guild)
    ann = emu.add_user("ann")
    emu.add_member(guild, ann)
    original = emu.world.create_message(channel, ann, {"content": "hi"}, check=False)
    _, _, pinged = emu.world.compute_mentions(channel, "answer", None, original)
    _, _, quiet = emu.world.compute_mentions(
        channel, "answer", {"parse": [], "replied_user": False}, original
    )
    assert pinged.users == {ann.id} and not quiet


def test_message_rules() -> None:
    limit = 1024
    check_message({"content": "x" * 2000}, [], upload_limit=limit)
    with pytest.raises(DiscordAPIError) as big:
        check_message({"content": "x"}, [("a.png", b"0" * (limit + 1))], upload_limit=limit)
    assert (big.value.status, big.value.code) == (413, 40005)
    with pytest.raises(DiscordAPIError, match="content"):
        check_message({"content": "x" * 2001}, [], upload_limit=limit)
    with pytest.raises(DiscordAPIError) as empty:
        check_message({"content": ""}, [], upload_limit=limit)
    assert empty.value.code == 50006
    check_message({"content": ""}, [], upload_limit=limit, editing=True)  # an edit may clear content


def test_component_rules() -> None:
    def row(n: int, custom_id: str = "b") -> dict:
        return {
            "type": 1,
            "components": [{"type": 2, "style": 1, "custom_id": f"{custom_id}{i}"} for i in range(n)],
        }

    check_components([row(5)] * 5)
    with pytest.raises(DiscordAPIError):
        check_components([row(5)] * 6)
    with pytest.raises(DiscordAPIError):
        check_components([row(6)])
    with pytest.raises(DiscordAPIError):
        check_components([row(1, "x" * 100)])  # 101 characters with the index
    check_components([{"type": 1, "components": [{"type": 2, "style": 5, "url": "https://example.org"}]}])


def test_snowflakes_follow_the_emulator_clock(emu: DiscordEmulator) -> None:
    first = emu.world.snowflakes.next()
    emu.advance_time(3600)
    second = emu.world.snowflakes.next()
    first_ms = (first >> 22) + DISCORD_EPOCH_MS
    second_ms = (second >> 22) + DISCORD_EPOCH_MS
    assert second_ms - first_ms >= 3600 * 1000
    with pytest.raises(ValueError):
        emu.advance_time(-1)


def test_subcommand_options_and_resolved_attachment(emu: DiscordEmulator) -> None:
    guild = emu.add_guild()
    channel = emu.add_channel(guild)
    command = {
        "id": "1",
        "name": "admin",
        "options": [
            {
                "type": 2,
                "name": "limits",
                "options": [
                    {
                        "type": 1,
                        "name": "set",
                        "options": [
                            {"type": 4, "name": "daily", "required": True, "min_value": 1},
                            {"type": 11, "name": "file"},
                            {"type": 3, "name": "mode", "choices": [{"name": "A", "value": "a"}]},
                        ],
                    }
                ],
            }
        ],
    }
    resolved = ResolvedBuilder(guild, lambda upload: emu.world.make_attachment(channel, upload))
    data = build_command_data(command, ["limits", "set"], {"daily": 3, "file": ("f.txt", b"abc")}, resolved)
    group = data["options"][0]
    assert (group["name"], group["type"]) == ("limits", 2)
    leaf = group["options"][0]
    assert leaf["name"] == "set" and leaf["options"][0] == {"name": "daily", "type": 4, "value": 3}
    attachment_id = leaf["options"][1]["value"]
    assert data["resolved"]["attachments"][attachment_id]["size"] == 3
    with pytest.raises(EmulatorUsageError, match="one of"):
        build_command_data(command, ["limits", "set"], {"daily": 3, "mode": "b"}, resolved)
    with pytest.raises(EmulatorUsageError, match="needs a subcommand"):
        build_command_data(command, ["limits"], {}, resolved)
    assert Upload.coerce(("a", b"b")) == Upload("a", b"b")


def test_modal_submission_mirrors_rows_and_labels() -> None:
    modal = {
        "custom_id": "m",
        "title": "T",
        "components": [
            {"type": 1, "components": [{"type": 4, "custom_id": "a", "label": "A", "style": 1}]},
            {
                "type": 18,
                "label": "B",
                "component": {"type": 4, "custom_id": "b", "style": 2, "required": False},
            },
        ],
    }
    submitted = modal_submit_components(modal, {"a": "hello"})
    assert submitted == [
        {"type": 1, "components": [{"type": 4, "custom_id": "a", "value": "hello"}]},
        {"type": 18, "component": {"type": 4, "custom_id": "b", "value": ""}},
    ]
    with pytest.raises(EmulatorUsageError, match="no inputs named"):
        modal_submit_components(modal, {"a": "x", "zzz": "y"})
