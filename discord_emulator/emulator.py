"""DiscordEmulator: the test-facing front — start the server, set up a world, act as users, inspect.

Everything runs on the caller's event loop, so a test drives the real discord.py bot and the emulator
side by side and can read any record between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from discord_emulator.client import configure_client
from discord_emulator.gateway import Gateway, GatewaySession
from discord_emulator.payloads import (
    APPLICATION_COMMAND,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    EmulatorUsageError,
    ResolvedBuilder,
    build_command_data,
    channel_payload,
    guild_create_payload,
    interaction_payload,
    member_payload,
    modal_submit_components,
    role_payload,
)
from discord_emulator.server import RestApi
from discord_emulator.state import (
    DEFAULT_EVERYONE_PERMISSIONS,
    DEFAULT_UPLOAD_LIMIT,
    GUILD_TEXT,
    PUBLIC_THREAD,
    Channel,
    CommandSync,
    Guild,
    Interaction,
    InteractionFailure,
    Member,
    Message,
    Rejection,
    Role,
    TranscriptLine,
    Upload,
    User,
)
from discord_emulator.world import World

T = TypeVar("T")
# What the bot's own role may do in an emulated guild: @everyone's rights plus managing messages.
BOT_ROLE_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | (1 << 13)


def describe(itx: Interaction) -> str:
    """A short human label for an interaction: its command name or component custom_id."""
    data = itx.payload.get("data") or {}
    return str(data.get("name") or data.get("custom_id") or itx.id)


def _show(value: Any) -> str:
    """An option value as the transcript shows it."""
    if isinstance(value, User | Member | Role | Channel):
        return value.mention
    if isinstance(value, Upload | tuple):
        upload = Upload.coerce(value)
        return f"[file {upload.filename} {len(upload.data)} B]"
    return repr(value)


def _permission_value(permissions: Any) -> int:
    """Accept a plain int or a discord.Permissions (anything with .value)."""
    return int(getattr(permissions, "value", permissions) or 0)


class DiscordEmulator:
    def __init__(
        self,
        *,
        response_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        bot_name: str = "Janus",
        bot_token: str | None = None,
        privileged_intents: bool = True,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.world = World(
            response_deadline=response_deadline, token_lifetime=token_lifetime, bot_name=bot_name
        )
        self.bot_token = bot_token or f"emulator.{secrets.token_urlsafe(24)}"
        self.gateway = Gateway(
            self.world,
            bot_token=self.bot_token,
            privileged_intents=privileged_intents,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self.world.dispatch = self.gateway.dispatch
        self.api = RestApi(self.world, self.gateway, self.bot_token)
        self.owner = self.add_user("app-owner")  # owns the application and, by default, every guild
        self.api.application_owner = self.owner
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.base_url = ""

    # -- lifetime -----------------------------------------------------------------------------------

    async def start(self) -> DiscordEmulator:
        self._runner = web.AppRunner(self.api.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self.world.base_url = self.base_url
        self.gateway.resume_url = f"ws://{host}:{port}/"
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await self.gateway.flush()
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        return self.base_url + "/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.gateway.resume_url

    @property
    def bot_user(self) -> User:
        return self.world.bot_user

    @property
    def application_id(self) -> int:
        return self.world.application_id

    @property
    def clock(self):
        return self.world.clock

    def configure_client(self) -> contextlib.AbstractContextManager[None]:
        """Point discord.py's REST base and gateway URL at this emulator until the block exits."""
        return configure_client(self.api_base, self.gateway_url)

    def advance_time(self, seconds: float) -> None:
        """Move the emulator clock forward; interactions past their deadline fail at once."""
        self.world.clock.advance(seconds)
        for itx in self.world.interactions:
            self.world.check_deadline(itx)

    @property
    def response_deadline(self) -> float:
        """Seconds an interaction has for its first response; tests may lower it to exercise the rule."""
        return self.world.response_deadline

    @response_deadline.setter
    def response_deadline(self, seconds: float) -> None:
        self.world.response_deadline = seconds

    @property
    def sessions(self) -> list[GatewaySession]:
        return [s for s in self.gateway.sessions if s.identified]

    async def wait_until_ready(self, timeout: float = 10.0) -> GatewaySession:
        """Wait until a client has identified and received READY and every GUILD_CREATE."""
        return await self.wait_for(
            lambda: next((s for s in self.gateway.sessions if s.ready.is_set()), None),
            timeout=timeout,
            message="a bot to connect to the gateway",
        )

    async def disconnect_bot(self, code: int = 4000) -> None:
        """Drop every gateway connection, as Discord does on a server restart; clients reconnect."""
        await self.gateway.close_all(code=code)

    # -- setup --------------------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False) -> User:
        user = User(self.world.snowflakes.next(), name, bot=bot)
        self.world.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        owner: User | None = None,
        on_shard: tuple[int, int] | None = None,
    ) -> Guild:
        """A new guild; ``on_shard=(shard_id, shard_count)`` picks its id so that Discord's rule
        ((id >> 22) % shard_count) puts it on that shard (its timestamp moved back a few ms)."""
        owner = owner or self.owner
        guild_id = self.world.snowflakes.next()
        if on_shard is not None:
            shard_id, count = on_shard
            ms = guild_id >> 22
            guild_id = ((ms - (ms - shard_id) % count) << 22) | (guild_id & ((1 << 22) - 1))
        guild = Guild(guild_id, name, owner.id, upload_limit=upload_limit)
        guild.roles[guild.id] = Role(guild.id, guild.id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS)
        bot_role = Role(
            self.world.snowflakes.next(), guild.id, self.bot_user.name, BOT_ROLE_PERMISSIONS, position=1
        )
        guild.roles[bot_role.id] = bot_role
        self.world.guilds[guild.id] = guild
        self._join(guild, self.bot_user, [bot_role])
        self._join(guild, owner, [])
        self.gateway.dispatch("GUILD_CREATE", guild_create_payload(guild))
        return guild

    def add_role(self, guild: Guild, name: str, *, permissions: Any = 0) -> Role:
        role = Role(
            self.world.snowflakes.next(),
            guild.id,
            name,
            _permission_value(permissions),
            position=len(guild.roles),
        )
        guild.roles[role.id] = role
        self.gateway.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role_payload(role)})
        return role

    def add_channel(
        self, guild: Guild, name: str = "general", *, nsfw: bool = False, topic: str | None = None
    ) -> Channel:
        channel = Channel(
            self.world.snowflakes.next(),
            GUILD_TEXT,
            name,
            guild=guild,
            nsfw=nsfw,
            topic=topic,
            position=len(guild.channels),
        )
        guild.channels[channel.id] = channel
        self.world.channels[channel.id] = channel
        self.gateway.dispatch("CHANNEL_CREATE", channel_payload(channel))
        return channel

    def add_thread(self, channel: Channel, name: str, *, owner: User | None = None) -> Channel:
        if channel.guild is None or channel.type != GUILD_TEXT:
            raise EmulatorUsageError("threads live in guild text channels")
        thread = Channel(
            self.world.snowflakes.next(),
            PUBLIC_THREAD,
            name,
            guild=channel.guild,
            parent_id=channel.id,
            owner_id=(owner or self.owner).id,
        )
        channel.guild.channels[thread.id] = thread
        self.world.channels[thread.id] = thread
        self.gateway.dispatch("THREAD_CREATE", {**channel_payload(thread), "newly_created": True})
        return thread

    def add_member(
        self,
        guild: Guild,
        user: User,
        *,
        roles: Sequence[Role] = (),
        permissions: Any = None,
        nick: str | None = None,
    ) -> Member:
        member = self._join(guild, user, list(roles), nick=nick)
        member.extra_permissions = _permission_value(permissions)
        data = {**member_payload(member), "guild_id": str(guild.id)}
        self.gateway.dispatch("GUILD_MEMBER_ADD", data)
        return member

    def _join(self, guild: Guild, user: User, roles: list[Role], *, nick: str | None = None) -> Member:
        for role in roles:
            if role.guild_id != guild.id:
                raise EmulatorUsageError(f"role {role.name!r} belongs to another guild")
        member = Member(guild, user, roles, nick=nick, joined_at=self.world.clock.now())
        guild.members[user.id] = member
        return member

    def dm_channel(self, user: User) -> Channel:
        return self.world.dm_channel(user)

    # -- acting as users: interactions --------------------------------------------------------------

    def _member(self, user: User, channel: Channel) -> Member | None:
        if channel.guild is None:
            if channel.recipient is not user:
                raise EmulatorUsageError(f"{user.name} cannot see the DM channel {channel.name}")
            return None
        member = channel.guild.members.get(user.id)
        if member is None:
            raise EmulatorUsageError(f"{user.name} is not a member of {channel.guild.name}")
        return member

    def _interaction(
        self,
        kind: int,
        user: User,
        channel: Channel,
        data: dict[str, Any],
        *,
        source: Message | None = None,
        locale: str = "en-US",
    ) -> Interaction:
        member = self._member(user, channel)
        guild = channel.guild
        ident, token = self.world.new_interaction_identity()
        app_permissions = guild.members[self.bot_user.id].permissions if guild else BOT_ROLE_PERMISSIONS
        payload = interaction_payload(
            ident=ident,
            token=token,
            application_id=self.application_id,
            kind=kind,
            user=user,
            member=member,
            channel=channel,
            data=data,
            locale=locale,
            upload_limit=self.world.upload_limit(channel),
            app_permissions=app_permissions,
            source=source,
        )
        itx = Interaction(
            id=ident,
            token=token,
            type=kind,
            user=user,
            channel=channel,
            guild=guild,
            payload=payload,
            created_at=self.world.clock.now(),
            source_message=source,
        )
        self.world.register_interaction(itx)
        return itx

    async def _dispatch_interaction(self, itx: Interaction, action: str) -> Interaction:
        self.world.note(itx.channel, itx.user.name, action)
        await self.gateway.flush()  # the bot sees earlier events (e.g. the message clicked on) first
        itx.dispatched_at = self.world.clock.now()
        await self.gateway.dispatch_now("INTERACTION_CREATE", itx.payload)
        loop = asyncio.get_running_loop()
        self._timers.append(
            loop.call_later(self.world.response_deadline + 0.01, self.world.check_deadline, itx)
        )
        return itx

    async def slash(
        self,
        user: User,
        channel: Channel,
        command: str,
        *,
        options: dict[str, Any] | None = None,
        locale: str = "en-US",
        ignore_default_permissions: bool = False,
        tamper: Callable[[dict[str, Any]], None] | None = None,
        **values: Any,
    ) -> Interaction:
        """Run `/command [group] [sub] option=value ...` as `user` in `channel`.

        ``tamper`` edits the INTERACTION_CREATE payload before it is sent: for tests of what the bot
        trusts and how it handles values Discord's own checks would have stopped (an option out of its
        range, a member's permissions that differ from its roles)."""
        name, *path = command.split()
        self._member(user, channel)
        definition = self.world.find_command(name, 1, channel)
        self.world.check_command_access(definition, user, channel, ignore_default_permissions)
        resolved = ResolvedBuilder(
            channel.guild, lambda upload: self.world.make_attachment(channel, upload, ephemeral=True)
        )
        given = {**(options or {}), **values}
        data = build_command_data(definition, path, given, resolved)
        shown = " ".join(f"{k}:{_show(v)}" for k, v in given.items())
        itx = self._interaction(APPLICATION_COMMAND, user, channel, data, locale=locale)
        if tamper is not None:
            tamper(itx.payload)
        return await self._dispatch_interaction(itx, f"/{command} {shown}".rstrip())

    async def context_menu(
        self,
        user: User,
        target: Message | User,
        command: str,
        *,
        channel: Channel | None = None,
        ignore_default_permissions: bool = False,
    ) -> Interaction:
        """A message command (right-click a message) or a user command (right-click a user)."""
        if isinstance(target, Message):
            channel = target.channel
            kind = 3
        else:
            if channel is None:
                raise EmulatorUsageError("a user command needs the channel it is used in")
            kind = 2
        definition = self.world.find_command(command, kind, channel)
        self._member(user, channel)
        self.world.check_command_access(definition, user, channel, ignore_default_permissions)
        resolved = ResolvedBuilder(channel.guild, lambda upload: self.world.make_attachment(channel, upload))
        if isinstance(target, Message):
            resolved.message(target)
        else:
            resolved.user(target)
        data: dict[str, Any] = {
            "id": definition["id"],
            "name": definition["name"],
            "type": kind,
            "target_id": str(target.id),
            "resolved": resolved.data,
        }
        if definition.get("guild_id"):
            data["guild_id"] = definition["guild_id"]
        itx = self._interaction(APPLICATION_COMMAND, user, channel, data)
        target_name = f"message {target.id}" if isinstance(target, Message) else target.name
        return await self._dispatch_interaction(itx, f"Apps > {command!r} on {target_name}")

    def _component_on(self, user: User, message: Message, custom_id: str) -> dict[str, Any]:
        if message.deleted:
            raise EmulatorUsageError(f"message {message.id} was deleted")
        if message.visible_to is not None and message.visible_to != user.id:
            raise EmulatorUsageError(f"{user.name} cannot see the ephemeral message {message.id}")
        component = next((c for c in message.walk_components() if c.get("custom_id") == custom_id), None)
        if component is None:
            raise EmulatorUsageError(
                f"message {message.id} has no component {custom_id!r}; it has {message.custom_ids()}"
            )
        if component.get("disabled"):
            raise EmulatorUsageError(f"component {custom_id!r} is disabled")
        return component

    async def press_button(
        self,
        user: User,
        message: Message,
        custom_id: str,
        *,
        tamper: Callable[[dict[str, Any]], None] | None = None,
    ) -> Interaction:
        """Press a button on ``message``; ``tamper`` edits the payload first (see :meth:`slash`)."""
        component = self._component_on(user, message, custom_id)
        if component.get("type") != 2:
            raise EmulatorUsageError(f"component {custom_id!r} is not a button")
        data = {"custom_id": custom_id, "component_type": 2}
        itx = self._interaction(MESSAGE_COMPONENT, user, message.channel, data, source=message)
        if tamper is not None:
            tamper(itx.payload)
        return await self._dispatch_interaction(itx, f"pressed [{component.get('label') or custom_id}]")

    async def select(
        self, user: User, message: Message, custom_id: str, values: Sequence[str]
    ) -> Interaction:
        component = self._component_on(user, message, custom_id)
        if component.get("type") not in (3, 5, 6, 7, 8):
            raise EmulatorUsageError(f"component {custom_id!r} is not a select menu")
        low, high = component.get("min_values", 1), component.get("max_values", 1)
        if not low <= len(values) <= high:
            raise EmulatorUsageError(f"select {custom_id!r} takes {low}-{high} values")
        allowed = {o["value"] for o in component.get("options", [])}
        if component["type"] == 3 and not set(values) <= allowed:
            raise EmulatorUsageError(f"select {custom_id!r} offers only {sorted(allowed)}")
        data = {"custom_id": custom_id, "component_type": component["type"], "values": list(values)}
        itx = self._interaction(MESSAGE_COMPONENT, user, message.channel, data, source=message)
        return await self._dispatch_interaction(itx, f"selected {list(values)} in {custom_id!r}")

    async def submit_modal(
        self,
        user: User,
        interaction: Interaction,
        values: dict[str, Any] | None = None,
        *,
        custom_id: str | None = None,
    ) -> Interaction:
        """Fill and submit the modal the bot opened in answer to `interaction`."""
        modal = interaction.modal
        if modal is None:
            raise EmulatorUsageError(f"interaction {interaction.id} was not answered with a modal")
        if custom_id is not None and custom_id != modal["custom_id"]:
            raise EmulatorUsageError(f"the open modal is {modal['custom_id']!r}, not {custom_id!r}")
        data = {"custom_id": modal["custom_id"], "components": modal_submit_components(modal, values or {})}
        itx = self._interaction(
            MODAL_SUBMIT, user, interaction.channel, data, source=interaction.source_message
        )
        return await self._dispatch_interaction(itx, f"submitted {modal.get('title')!r} {values or {}}")

    # -- acting as users: messages ------------------------------------------------------------------

    async def send_message(
        self,
        user: User,
        channel: Channel,
        content: str = "",
        *,
        attachments: Sequence[Upload | tuple[Any, ...]] = (),
        mentions_bot: bool = False,
        reply_to: Message | None = None,
        ping_author: bool = True,
    ) -> Message:
        """Post as `user`; the bot receives MESSAGE_CREATE (subject to its intents).

        A reply pings and "mentions" the author it replies to unless `ping_author=False` (the @ON / @OFF
        toggle of Discord's client, which then sends allowed_mentions with replied_user false): then the
        replied-to author is not in `mentions`, so a bot without the message-content intent gets the
        reply with empty content, attachments and embeds."""
        self._member(user, channel)
        if mentions_bot:
            content = f"{self.bot_user.mention} {content}".rstrip()
        payload: dict[str, Any] = {"content": content}
        if reply_to is not None:
            payload["message_reference"] = {
                "message_id": str(reply_to.id),
                "channel_id": str(reply_to.channel.id),
            }
            if not ping_author:
                payload["allowed_mentions"] = {
                    "parse": ["users", "roles", "everyone"],
                    "replied_user": False,
                }
        files = {i: Upload.coerce(a) for i, a in enumerate(attachments)}
        await self.gateway.flush()
        message = self.world.create_message(channel, user, payload, files, check=False)
        await self.gateway.flush()
        return message

    async def edit_message(self, user: User, message: Message, content: str) -> Message:
        if message.author is not user:
            raise EmulatorUsageError(f"{user.name} cannot edit a message by {message.author.name}")
        self.world.edit_message(message, {"content": content})
        await self.gateway.flush()
        return message

    async def delete_message(self, user: User, message: Message) -> None:
        if message.author is not user:
            raise EmulatorUsageError(f"{user.name} cannot delete a message by {message.author.name}")
        self.world.delete_message(message)
        await self.gateway.flush()

    async def add_reaction(self, user: User, message: Message, emoji: str) -> None:
        message.reactions.setdefault(emoji, set()).add(user.id)
        data: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(message.channel.id),
            "message_id": str(message.id),
            "message_author_id": str(message.author.id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if message.guild is not None:
            data["guild_id"] = str(message.guild.id)
            data["member"] = member_payload(message.guild.members[user.id])
        self.gateway.dispatch("MESSAGE_REACTION_ADD", data)
        await self.gateway.flush()

    # -- inspection ---------------------------------------------------------------------------------

    def messages(
        self, channel: Channel, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[Message]:
        return self.world.visible_messages(
            channel, include_ephemeral=include_ephemeral, include_deleted=include_deleted
        )

    def bot_messages(self, channel: Channel, *, include_ephemeral: bool = False) -> list[Message]:
        return [
            m
            for m in self.messages(channel, include_ephemeral=include_ephemeral)
            if m.author is self.bot_user
        ]

    def last_message(self, channel: Channel, *, include_ephemeral: bool = False) -> Message | None:
        found = self.messages(channel, include_ephemeral=include_ephemeral)
        return found[-1] if found else None

    def message(self, message_id: int) -> Message:
        return self.world.messages[message_id]

    @property
    def interactions(self) -> list[Interaction]:
        return self.world.interactions

    @property
    def failures(self) -> list[InteractionFailure]:
        return self.world.failures

    @property
    def rejections(self) -> list[Rejection]:
        return self.world.rejections

    @property
    def unknown_routes(self) -> list[tuple[str, str]]:
        return self.world.unknown_routes

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return self.world.requests

    @property
    def cdn_downloads(self) -> list[int]:
        return self.world.cdn_downloads

    @property
    def typing(self) -> list[tuple[int, float]]:
        return self.world.typing

    @property
    def command_syncs(self) -> list[CommandSync]:
        return self.world.command_syncs

    def synced_commands(self, guild: Guild | None = None) -> list[dict[str, Any]]:
        if guild is None:
            return list(self.world.global_commands)
        return list(self.world.guild_commands.get(guild.id, []))

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, message: str | None = None
    ) -> T:
        """Poll `predicate` until it returns something truthy (not None), and return that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value is not None and value:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {message or predicate}")
            await asyncio.sleep(0.01)

    async def wait_for_message(
        self,
        channel: Channel,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = 10.0,
        *,
        author: User | None = None,
        include_ephemeral: bool = False,
    ) -> Message:
        def find() -> Message | None:
            for m in self.messages(channel, include_ephemeral=include_ephemeral):
                if (author is None or m.author is author) and (predicate is None or predicate(m)):
                    return m
            return None

        return await self.wait_for(find, timeout, message=f"a message in #{channel.name}")

    @property
    def transcript(self) -> list[TranscriptLine]:
        return self.world.transcript

    def format_transcript(self) -> str:
        """The session as text: who did what where, what the bot answered, edits, failures, rejections."""
        return "\n".join(line.format(self.world.started_at) for line in self.world.transcript)

    def assert_clean(self) -> None:
        """Fail if any interaction failed, any request was rejected, or the bot used an unknown route."""
        problems = [f"interaction failed: {f.reason} ({describe(f.interaction)})" for f in self.failures]
        problems += [
            f"rejected {r.method} {r.path}: {r.status}/{r.code} {r.message}" for r in self.rejections
        ]
        problems += [f"unknown route {method} {path}" for method, path in self.unknown_routes]
        if problems:
            recent = "\n".join(line.format(self.world.started_at) for line in self.world.transcript[-20:])
            raise AssertionError(
                "Discord emulator saw problems:\n  "
                + "\n  ".join(problems)
                + "\nRecent transcript:\n"
                + recent
            )
