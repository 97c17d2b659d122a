"""Conversations with memory: /chat, @mentions, replies to the bot, DMs, /forget and /history.

Which conversation a message joins is the store's scope rule (per user per channel by default, shared
per channel when a server manager says so, per user in DMs). A reply to one of the bot's answers
continues the conversation that answer belongs to, unless that conversation is someone else's private
one: then the replier's own conversation is used, so memory never leaks between users.

Without the message-content intent Discord delivers a reply's text only while the reply keeps its
@mention of the bot (the reply ping); a reply with the ping off arrives empty, and the bot then says so
(once per user per ten minutes) instead of staying silent.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from enum import Enum
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import NO_PINGS, MessageOutlet
from bot.errors import Refusal
from bot.formatting import clip, plural
from bot.limits import CHAT
from bot.store import ConversationRef, JobKind
from bot.understanding import Question, answer_interaction, check_question, submit
from bot.uploads import check_attachments, read_images
from janus_engine.errors import JanusError

if TYPE_CHECKING:
    from bot.app import JanusBot

log = logging.getLogger(__name__)


class _Reply(Enum):
    NOT_OURS = "a reply to a message of the bot that belongs to no conversation (an image result)"


BARE_REPLY_HINT = (
    "I can't read replies that don't @mention me — keep the mention on (the @ON toggle when replying), "
    "or use /chat."
)
BARE_REPLY_HINT_INTERVAL_S = 600.0


class ChatCog(commands.Cog):
    def __init__(self, bot: JanusBot) -> None:
        self.bot = bot
        self._bare_reply_hints: dict[int, float] = {}  # user id -> when they were last told (monotonic)

    @app_commands.command(name="chat", description="Talk with Janus (it remembers this conversation)")
    @app_commands.describe(message="What to say", image="An image to talk about")
    async def chat(
        self,
        interaction: discord.Interaction,
        message: app_commands.Range[str, 1, 4000],
        image: discord.Attachment | None = None,
    ) -> None:
        await answer_interaction(
            self.bot, interaction, text=message, attachments=[image] if image else [], kind=JobKind.CHAT
        )

    # ---- @mentions and replies ---------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        bot = self.bot
        if message.author.bot or bot.user is None or not bot.config.discord.respond_to_mentions:
            return
        # In a DM every message is for the bot; in a server only @mentions and replies to the bot are.
        mentioned = message.guild is None or any(u.id == bot.user.id for u in message.mentions)
        replied = await self._replied_conversation(message)
        if not mentioned and replied is None:
            return
        text = re.sub(rf"<@!?{bot.user.id}>", "", message.content).strip()
        if not text and not message.attachments:
            if mentioned:
                await message.reply("Ask me something (or attach an image).", mention_author=False)
            elif not bot.intents.message_content:
                await self._hint_bare_reply(message)
            return
        who = bot.access.requester_of(message.author, message.channel, message.guild)
        reservation = None
        try:
            settings = await bot.access.admit(who)
            text = check_question(bot, who, settings, text)
            if not text and not message.attachments:  # only invisible characters besides the mention
                raise Refusal("Ask me something (or attach an image).")
            check_attachments(message.attachments, bot.config.understanding)
            reservation = await bot.limiter.reserve(  # atomic in the database
                who.user_id, CHAT, roles=who.role_ids, guild_id=who.guild_id
            )
            async with message.channel.typing():
                images = await read_images(message.attachments, bot.config.understanding)
            conversation = replied if isinstance(replied, ConversationRef) else None
            if conversation is not None and conversation.key.user_id not in (None, who.user_id):
                conversation = None  # someone else's private conversation: use the replier's own
            q = Question(
                who,
                settings,
                text or bot.config.understanding.default_question,
                images,
                user_message_ids=(message.id,),
                conversation=conversation,
            )
            submitted = await submit(bot, q)
        except Exception as exc:
            if reservation is not None:
                await bot.limiter.release(reservation)  # refused or failed before the engine took it
            if isinstance(exc, JanusError):
                reply = exc.user_message
            else:
                log.exception("could not answer message %s", message.id)
                reply = "Sorry, something went wrong on our side; it was logged."
            with contextlib.suppress(discord.HTTPException):
                await message.reply(reply, mention_author=False, allowed_mentions=NO_PINGS)
            return
        submitted.follow(bot, MessageOutlet(message), q)

    async def _hint_bare_reply(self, message: discord.Message) -> None:
        """A reply to the bot that arrived empty: without the message-content intent Discord sends a
        reply's text only while it keeps its @mention (the reply ping). Say so, at most once per user per
        BARE_REPLY_HINT_INTERVAL_S, so a user who keeps replying that way is not answered every time."""
        now = time.monotonic()
        hinted = self._bare_reply_hints
        if now - hinted.get(message.author.id, float("-inf")) < BARE_REPLY_HINT_INTERVAL_S:
            return
        if len(hinted) > 10_000:  # forget the old ones; the map stays small
            for user_id in [u for u, at in hinted.items() if now - at >= BARE_REPLY_HINT_INTERVAL_S]:
                del hinted[user_id]
        hinted[message.author.id] = now
        with contextlib.suppress(discord.HTTPException):
            await message.reply(BARE_REPLY_HINT, mention_author=False, allowed_mentions=NO_PINGS)

    async def _replied_conversation(
        self, message: discord.Message
    ) -> ConversationRef | Literal[_Reply.NOT_OURS] | None:
        """For a reply to one of the bot's messages: its conversation (or NOT_OURS when the store has
        none, e.g. a reply to an image result); None when the message is not a reply to the bot."""
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        resolved = ref.resolved
        me = self.bot.user
        if isinstance(resolved, discord.Message) and (me is None or resolved.author.id != me.id):
            return None
        conv = await self.bot.store.conversation_for_message(ref.message_id)
        if conv is not None:
            return conv
        if isinstance(resolved, discord.Message):
            return _Reply.NOT_OURS
        return None

    # ---- memory management -------------------------------------------------------------------------

    @app_commands.command(name="forget", description="Delete what Janus remembers of your conversations")
    @app_commands.describe(where="Only this channel (default) or everywhere, including your job history")
    @app_commands.choices(
        where=[
            app_commands.Choice(name="this channel", value="channel"),
            app_commands.Choice(name="everywhere", value="everywhere"),
        ]
    )
    async def forget(self, interaction: discord.Interaction, where: str = "channel") -> None:
        store = self.bot.store
        if where == "everywhere":
            result = await store.forget_user(interaction.user.id, include_jobs=True)
            scope = "everywhere"
        else:
            result = await store.forget_user(
                interaction.user.id, guild_id=interaction.guild_id, channel_id=interaction.channel_id
            )
            scope = "in this channel"
        # The workers cache the image features of recent conversations: those of these go too.
        await self.bot.engine.forget_conversations([str(c) for c in result.touched])
        text = (
            f"Forgotten {scope}: {plural(result.turns, 'message')}"
            f" in {plural(result.conversations, 'conversation')}, {plural(result.images, 'image')}"
        )
        if result.jobs:
            text += f", {plural(result.jobs, 'job record')}"
        await interaction.response.send_message(text + ".", ephemeral=True)

    @app_commands.command(
        name="history", description="Show (or export) what Janus remembers of your conversation"
    )
    @app_commands.describe(export="Send everything stored about you as a JSON file")
    async def history(self, interaction: discord.Interaction, export: bool = False) -> None:
        bot = self.bot
        who = bot.access.requester(interaction)
        if export:
            data = await bot.store.export_user_data(who.user_id)
            blob = json.dumps(data, indent=2, default=str, ensure_ascii=False).encode()
            await interaction.response.send_message(
                "Everything stored about you:",
                file=discord.File(io.BytesIO(blob), filename=f"janus-data-{who.user_id}.json"),
                ephemeral=True,
            )
            return
        settings = await bot.access.settings_for(who)
        conv = await bot.store.resolve_conversation(bot.access.conversation_key(who, settings))
        turns = await bot.store.list_turns(conv.id, limit=10)
        if not turns:
            await interaction.response.send_message("No conversation here yet.", ephemeral=True)
            return
        lines = []
        for t in turns:
            name = (
                "Janus"
                if t.role == "assistant"
                else ("You" if t.author_id == who.user_id else f"<@{t.author_id}>")
            )
            pics = f" [{plural(len(t.image_hashes), 'image')}]" if t.image_hashes else ""
            lines.append(f"**{name}:**{pics} {clip(' '.join(t.text.split()), 300)}")
        await interaction.response.send_message(
            clip("\n".join(lines)), ephemeral=True, allowed_mentions=NO_PINGS
        )


async def setup(bot: JanusBot) -> None:
    await bot.add_cog(ChatCog(bot))
