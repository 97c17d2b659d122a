"""At ``[logging] level = "DEBUG"`` an operator's log holds the bot's own lines, not the libraries'.

The soak found aiosqlite writing every SQL statement with its parameters at DEBUG (users' prompts,
whole conversations, image bytes: 7,490 of 7,533 log lines), so bot.logs keeps it, PIL and discord.py
at INFO whatever the root level is."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bot.logs import set_log_levels
from bot.store import ConversationKey, ConversationScope, Store


@pytest.fixture
def debug_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    before = root.level, {n: logging.getLogger(n).level for n in ("aiosqlite", "PIL", "discord")}
    root.addHandler(handler)
    set_log_levels("DEBUG")
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(before[0])
        for name, level in before[1].items():
            logging.getLogger(name).setLevel(level)


async def test_a_debug_log_holds_no_sql_with_users_words(sqlite_url: str, debug_records) -> None:
    secret = "my bank pin is 4921"
    async with await Store.open(sqlite_url) as store:
        conv = await store.resolve_conversation(
            ConversationKey(ConversationScope.USER, guild_id=1, channel_id=2, user_id=3)
        )
        await store.append_exchange(conv.id, secret, "noted", author_id=3)
        logging.getLogger("bot.store").debug("the bot's own debug line")
    texts = [r.getMessage() for r in debug_records]
    assert "the bot's own debug line" in texts  # DEBUG is on for the bot
    assert not [t for t in texts if secret in t]
    assert not [r for r in debug_records if r.name.startswith("aiosqlite")]
