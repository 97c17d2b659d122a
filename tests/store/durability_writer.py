"""A writer process for the durability test: appends turns in a loop and reports each commit.

Run as ``python durability_writer.py URL FIRST``. After each committed turn it prints the turn's number,
so the parent knows what must survive a kill -9. Turn ``i`` has ``i % 3`` images and two message ids,
so a half-written turn (a row without its images or messages) would be visible afterwards.
"""

from __future__ import annotations

import asyncio
import io
import sys

from PIL import Image

from bot.store import ConversationKey, ConversationScope, Store


def png_for(i: int, k: int) -> bytes:
    image = Image.new("RGB", (16, 16), (i % 256, (i // 256) % 256, k))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def expected_turn(i: int) -> tuple[str, list[bytes], list[int]]:
    return f"turn {i}", [png_for(i, k) for k in range(i % 3)], [i * 10 + 1, i * 10 + 2]


async def main(url: str, first: int) -> None:
    store = await Store.open(url, upgrade=False)
    conversations = []
    for user in range(5):
        key = ConversationKey.for_scope(ConversationScope.USER, guild_id=1, channel_id=1, user_id=user)
        conversations.append(await store.resolve_conversation(key))
    i = first
    while True:
        text, images, messages = expected_turn(i)
        await store.append_turn(
            conversations[i % 5].id, "user", text, author_id=i % 5, images=images, message_ids=messages
        )
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
