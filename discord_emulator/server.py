"""The REST API (/api/v10), the CDN (/cdn/attachments) and the gateway route, as one aiohttp app.

Handlers stay thin: parse the request, find the records, call World, shape the answer. Errors are
raised as DiscordAPIError and turned into Discord's JSON error bodies (and recorded) in one middleware.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import BodyPartReader, web

from discord_emulator import rules
from discord_emulator.gateway import Gateway
from discord_emulator.payloads import (
    MODAL_SUBMIT,
    channel_payload,
    guild_create_payload,
    member_payload,
    message_payload,
    role_payload,
    user_payload,
)
from discord_emulator.rules import DiscordAPIError
from discord_emulator.state import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    PUBLIC_THREAD,
    Channel,
    CommandSync,
    Guild,
    Interaction,
    Message,
    Upload,
    User,
)
from discord_emulator.world import World

API = "/api/v10"
FILE_FIELD = re.compile(r"files\[(\d+)\]")
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """Content-Type exactly "application/json": discord.py only parses JSON when it sees exactly that."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def unknown(what: str, code: int) -> DiscordAPIError:
    return DiscordAPIError(404, code, f"Unknown {what}")


async def read_body(request: web.Request) -> tuple[dict[str, Any], dict[int, Upload]]:
    """JSON body, or multipart with payload_json + files[n] fields (what discord.py sends with files)."""
    if request.content_type.startswith("multipart/"):
        payload: dict[str, Any] = {}
        files: dict[int, Upload] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: Discord's clients never send one
            name = part.name or ""
            data = await part.read()
            if name == "payload_json":
                payload = json.loads(bytes(data).decode())
            elif match := FILE_FIELD.fullmatch(name):
                files[int(match.group(1))] = Upload(part.filename or f"file{match.group(1)}", bytes(data))
        return payload, files
    if request.can_read_body:
        text = await request.text()
        return (json.loads(text) if text else {}), {}
    return {}, {}


class RestApi:
    def __init__(self, world: World, gateway: Gateway, bot_token: str) -> None:
        self.world = world
        self.gateway = gateway
        self.bot_token = bot_token
        self.application_owner: User = world.bot_user  # the emulator sets its owner user

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=1024**3)
        r = app.router
        r.add_get("/", self.gateway.handle)
        r.add_get("/cdn/attachments/{channel}/{attachment}/{filename}", self.cdn)
        r.add_get(API + "/gateway", self.get_gateway)
        r.add_get(API + "/gateway/bot", self.get_gateway)
        r.add_get(API + "/users/@me", self.get_me)
        r.add_get(API + "/users/{user}", self.get_user)
        r.add_post(API + "/users/@me/channels", self.create_dm)
        r.add_get(API + "/oauth2/applications/@me", self.get_application)
        r.add_get(API + "/applications/@me", self.get_application)
        for prefix in ("/applications/{app}/commands", "/applications/{app}/guilds/{guild}/commands"):
            r.add_get(API + prefix, self.get_commands)
            r.add_put(API + prefix, self.put_commands)
            r.add_post(API + prefix, self.post_command)
            r.add_delete(API + prefix + "/{command}", self.delete_command)
        r.add_post(API + "/interactions/{interaction}/{token}/callback", self.interaction_callback)
        r.add_post(API + "/webhooks/{app}/{token}", self.webhook_send)
        r.add_get(API + "/webhooks/{app}/{token}/messages/{message}", self.webhook_get)
        r.add_patch(API + "/webhooks/{app}/{token}/messages/{message}", self.webhook_edit)
        r.add_delete(API + "/webhooks/{app}/{token}/messages/{message}", self.webhook_delete)
        r.add_get(API + "/channels/{channel}", self.get_channel)
        r.add_get(API + "/channels/{channel}/messages", self.list_messages)
        r.add_post(API + "/channels/{channel}/messages", self.post_message)
        r.add_get(API + "/channels/{channel}/messages/{message}", self.get_message)
        r.add_patch(API + "/channels/{channel}/messages/{message}", self.patch_message)
        r.add_delete(API + "/channels/{channel}/messages/{message}", self.delete_message)
        r.add_post(API + "/channels/{channel}/typing", self.typing)
        r.add_put(API + "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", self.add_reaction)
        r.add_delete(
            API + "/channels/{channel}/messages/{message}/reactions/{emoji}/{user}", self.remove_reaction
        )
        r.add_post(API + "/channels/{channel}/threads", self.create_thread)
        r.add_post(API + "/channels/{channel}/messages/{message}/threads", self.create_thread)
        r.add_get(API + "/guilds/{guild}", self.get_guild)
        r.add_get(API + "/guilds/{guild}/channels", self.get_guild_channels)
        r.add_get(API + "/guilds/{guild}/roles", self.get_guild_roles)
        r.add_get(API + "/guilds/{guild}/members/{user}", self.get_member)
        return app

    # -- plumbing ---------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        try:
            if request.match_info.http_exception is not None:
                self.world.unknown_routes.append((request.method, path))
                raise DiscordAPIError(404, 0, "404: Not Found")
            needs_auth = path.startswith(API) and not path.startswith(
                (API + "/interactions/", API + "/webhooks/")
            )
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.bot_token}":
                raise DiscordAPIError(401, 0, "401: Unauthorized")
            response = await handler(request)
        except DiscordAPIError as error:
            self.world.record_rejection(request.method, path, error)
            response = json_response(error.body(), error.status)
        self.world.requests.append((request.method, path, response.status))
        return response

    def channel(self, request: web.Request) -> Channel:
        channel = self.world.channels.get(int(request.match_info["channel"]))
        if channel is None:
            raise unknown("Channel", 10003)
        return channel

    def message_in(self, channel: Channel, request: web.Request) -> Message:
        message = self.world.messages.get(int(request.match_info["message"]))
        if message is None or message.channel is not channel or message.deleted or message.ephemeral:
            raise unknown("Message", 10008)
        return message

    def guild(self, request: web.Request) -> Guild:
        guild = self.world.guilds.get(int(request.match_info["guild"]))
        if guild is None:
            raise unknown("Guild", 10004)
        return guild

    # -- identity -----------------------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "url": self.gateway.resume_url.rstrip("/"),
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response({**user_payload(self.world.bot_user), "verified": True, "mfa_enabled": False})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.world.users.get(int(request.match_info["user"]))
        if user is None:
            raise unknown("User", 10013)
        return json_response(user_payload(user))

    async def get_application(self, request: web.Request) -> web.Response:
        bot = self.world.bot_user
        owner = self.application_owner
        return json_response(
            {
                "id": str(self.world.application_id),
                "name": bot.name,
                "icon": None,
                "description": "Discord emulator application",
                "rpc_origins": [],
                "bot_public": False,
                "bot_require_code_grant": False,
                "bot": user_payload(bot),
                "owner": user_payload(owner),
                "team": None,
                "verify_key": "0" * 64,
                "flags": 0,
                "summary": "",
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "approximate_guild_count": len(self.world.guilds),
            }
        )

    async def create_dm(self, request: web.Request) -> web.Response:
        payload, _ = await read_body(request)
        user = self.world.users.get(int(payload.get("recipient_id") or 0))
        if user is None:
            raise unknown("User", 10013)
        return json_response(channel_payload(self.world.dm_channel(user)))

    # -- application commands ---------------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app"]) != self.world.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access")
        if "guild" in request.match_info:
            return self.guild(request).id
        return None

    def _normalise_command(
        self, raw: dict[str, Any], guild_id: int | None, existing: list[dict[str, Any]]
    ) -> dict[str, Any]:
        kind = int(raw.get("type", 1))
        name = raw.get("name", "")
        if kind == 1 and (not COMMAND_NAME.fullmatch(name) or name != name.lower()):
            raise rules.invalid_form("name", "Command name is invalid")
        if kind == 1 and not 1 <= len(raw.get("description") or "") <= 100:
            raise rules.invalid_form("description", "Must be between 1 and 100 in length.")
        if len(raw.get("options") or []) > 25:
            raise rules.invalid_form("options", "Must be 25 or fewer in length.")
        previous = next((c for c in existing if c["name"] == name and c["type"] == kind), None)
        perms = raw.get("default_member_permissions")
        command = {
            "description": "",
            "nsfw": False,
            "dm_permission": True,
            "contexts": None,
            "integration_types": [0],
            **raw,
            "id": previous["id"] if previous else str(self.world.snowflakes.next()),
            "application_id": str(self.world.application_id),
            "type": kind,
            "version": str(self.world.snowflakes.next()),
            "default_member_permissions": None
            if perms is None
            else str(int(perms)),  # a string, like Discord
            "options": raw.get("options") or [],
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        return command

    def _store_commands(self, guild_id: int | None, commands: list[dict[str, Any]]) -> None:
        for kind, cap in ((1, 100), (2, 15), (3, 15)):
            if sum(1 for c in commands if c["type"] == kind) > cap:
                raise rules.invalid_form("commands", f"At most {cap} commands of type {kind}.")
        names = [(c["type"], c["name"]) for c in commands]
        if len(names) != len(set(names)):
            raise rules.invalid_form("commands", "Application command names must be unique")
        if guild_id is None:
            self.world.global_commands = commands
        else:
            self.world.guild_commands[guild_id] = commands
        self.world.command_syncs.append(CommandSync(guild_id, commands, self.world.clock.now()))

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.world.commands_for(self._command_scope(request)))

    async def put_commands(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        payload, _ = await read_body(request)
        existing = self.world.commands_for(guild_id)
        raws = cast(list[dict[str, Any]], payload)  # a bulk overwrite sends a JSON array
        commands = [self._normalise_command(raw, guild_id, existing) for raw in raws]
        self._store_commands(guild_id, commands)
        return json_response(commands)

    async def post_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        raw, _ = await read_body(request)
        existing = self.world.commands_for(guild_id)
        command = self._normalise_command(raw, guild_id, existing)
        others = [c for c in existing if (c["name"], c["type"]) != (command["name"], command["type"])]
        self._store_commands(guild_id, [*others, command])
        return json_response(command, 201)

    async def delete_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        existing = self.world.commands_for(guild_id)
        remaining = [c for c in existing if c["id"] != request.match_info["command"]]
        if len(remaining) == len(existing):
            raise unknown("application command", 10063)
        self._store_commands(guild_id, remaining)
        return no_content()

    # -- interactions -------------------------------------------------------------------------------

    def _interaction_for_callback(self, request: web.Request) -> Interaction:
        itx = self.world.interactions_by_token.get(request.match_info["token"])
        if itx is None or str(itx.id) != request.match_info["interaction"]:
            raise unknown("interaction", 10062)
        elapsed = self.world.elapsed_since_dispatch(itx)
        if not itx.acknowledged and elapsed >= self.world.response_deadline:
            self.world.fail(
                itx, f"first response after {elapsed:.2f} s (limit {self.world.response_deadline:g} s)"
            )
        if itx.failed:
            raise unknown("interaction", 10062)
        if itx.acknowledged:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        return itx

    async def interaction_callback(self, request: web.Request) -> web.Response:
        payload, files = await read_body(request)
        itx = self._interaction_for_callback(request)
        kind = int(payload.get("type", 0))
        data = payload.get("data") or {}
        world = self.world
        message: Message | None = None
        if kind == 4:
            message = world.create_message(itx.channel, world.bot_user, data, files, interaction=itx)
            itx.original = message
        elif kind == 5:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = world.create_message(
                itx.channel, world.bot_user, {}, interaction=itx, extra_flags=flags, check=False
            )
            itx.original = message
        elif kind in (6, 7):
            if itx.source_message is None:
                raise rules.invalid_form(
                    "type", "Interaction response type is only valid for component interactions"
                )
            if kind == 7:
                world.edit_message(itx.source_message, data, files)
                message = itx.source_message
            itx.original = itx.source_message
        elif kind == 9:
            if itx.type == MODAL_SUBMIT:
                raise rules.invalid_form("type", "A modal cannot answer a modal submission")
            rules.check_modal(data)
            itx.modal = data
        elif kind == 8 and itx.type == 4:
            pass  # autocomplete choices: recorded in responses below
        else:
            raise rules.invalid_form("type", f"Invalid interaction response type {kind}")
        itx.responses.append((kind, data))
        itx._responded.set()
        info: dict[str, Any] = {"id": str(itx.id), "type": itx.type}
        body: dict[str, Any] = {"interaction": info}
        if message is not None:
            info.update(
                response_message_id=str(message.id),
                response_message_loading=message.loading,
                response_message_ephemeral=message.ephemeral,
            )
            body["resource"] = {"type": kind, "message": message_payload(message)}
        return json_response(body)

    def _interaction_for_webhook(self, request: web.Request) -> Interaction:
        itx = self.world.interactions_by_token.get(request.match_info["token"])
        if itx is None or request.match_info["app"] != str(self.world.application_id):
            raise unknown("Webhook", 10015)
        if self.world.token_expired(itx):
            raise DiscordAPIError(401, 50027, "Invalid Webhook Token")
        if not itx.acknowledged or itx.response_type == 9:
            raise unknown("Webhook", 10015)
        return itx

    def _webhook_message(self, itx: Interaction, request: web.Request) -> Message:
        ident = request.match_info["message"]
        if ident == "@original":
            message = itx.original
        else:
            message = next(
                (m for m in [itx.original, *itx.followups] if m is not None and str(m.id) == ident), None
            )
        if message is None or message.deleted:
            raise unknown("Message", 10008)
        return message

    async def webhook_send(self, request: web.Request) -> web.Response:
        payload, files = await read_body(request)
        itx = self._interaction_for_webhook(request)
        original = itx.original
        if itx.response_type == 5 and original is not None and original.loading and not itx.followups:
            # Discord fills the "thinking..." message with the first follow-up after a deferral.
            message = self.world.edit_message(original, payload, files)
        else:
            message = self.world.create_message(
                itx.channel, self.world.bot_user, payload, files, interaction=itx
            )
            itx.followups.append(message)
        if request.query.get("wait", "false").lower() in ("1", "true"):
            return json_response(message_payload(message))
        return no_content()

    async def webhook_get(self, request: web.Request) -> web.Response:
        itx = self._interaction_for_webhook(request)
        return json_response(message_payload(self._webhook_message(itx, request)))

    async def webhook_edit(self, request: web.Request) -> web.Response:
        payload, files = await read_body(request)
        itx = self._interaction_for_webhook(request)
        message = self.world.edit_message(self._webhook_message(itx, request), payload, files)
        return json_response(message_payload(message))

    async def webhook_delete(self, request: web.Request) -> web.Response:
        itx = self._interaction_for_webhook(request)
        self.world.delete_message(self._webhook_message(itx, request))
        return no_content()

    # -- channels and messages ----------------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(channel_payload(self.channel(request)))

    async def list_messages(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 0)) or None
        after = int(request.query.get("after", 0)) or None
        found = self.world.visible_messages(channel, include_ephemeral=False, include_deleted=False)
        found = [m for m in found if (before is None or m.id < before) and (after is None or m.id > after)]
        found.sort(key=lambda m: m.id, reverse=True)
        if after is not None and before is None:
            found = found[-limit:]
        return json_response([message_payload(m) for m in found[:limit]])

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        return json_response(self.world.message_event(self.message_in(channel, request)))

    async def post_message(self, request: web.Request) -> web.Response:
        payload, files = await read_body(request)
        channel = self.channel(request)
        message = self.world.create_message(channel, self.world.bot_user, payload, files)
        return json_response(self.world.message_event(message))

    async def patch_message(self, request: web.Request) -> web.Response:
        payload, files = await read_body(request)
        channel = self.channel(request)
        message = self.message_in(channel, request)
        if message.author is not self.world.bot_user:
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        return json_response(self.world.message_event(self.world.edit_message(message, payload, files)))

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        self.world.delete_message(self.message_in(channel, request))
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        self.world.typing.append((channel.id, self.world.clock.now()))
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        message = self.message_in(channel, request)
        message.reactions.setdefault(request.match_info["emoji"], set()).add(self.world.bot_user.id)
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        channel = self.channel(request)
        message = self.message_in(channel, request)
        user = request.match_info["user"]
        user_id = self.world.bot_user.id if user == "@me" else int(user)
        message.reactions.get(request.match_info["emoji"], set()).discard(user_id)
        return no_content()

    async def create_thread(self, request: web.Request) -> web.Response:
        payload, _ = await read_body(request)
        parent = self.channel(request)
        if parent.guild is None or parent.type == PUBLIC_THREAD:
            raise DiscordAPIError(400, 50024, "Cannot execute action on this channel type")
        name = str(payload.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise rules.invalid_form("name", "Must be between 1 and 100 in length.")
        ident = (
            int(request.match_info["message"])
            if "message" in request.match_info
            else self.world.snowflakes.next()
        )
        thread = Channel(
            ident,
            PUBLIC_THREAD,
            name,
            guild=parent.guild,
            parent_id=parent.id,
            owner_id=self.world.bot_user.id,
        )
        parent.guild.channels[thread.id] = thread
        self.world.channels[thread.id] = thread
        data = channel_payload(thread)
        self.gateway.dispatch("THREAD_CREATE", {**data, "newly_created": True})
        return json_response(data, 201)

    # -- guilds -------------------------------------------------------------------------------------

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self.guild(request)
        summary = guild_create_payload(guild)
        for key in ("members", "channels", "threads", "presences", "voice_states"):
            summary.pop(key, None)
        return json_response(summary)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        return json_response(
            [channel_payload(c) for c in self.guild(request).channels.values() if c.type != PUBLIC_THREAD]
        )

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        return json_response([role_payload(r) for r in self.guild(request).roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        member = self.guild(request).members.get(int(request.match_info["user"]))
        if member is None:
            raise unknown("Member", 10007)
        return json_response(member_payload(member))

    # -- CDN ----------------------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.Response:
        att = self.world.attachments.get(int(request.match_info["attachment"]))
        if att is None or att.filename != request.match_info["filename"]:
            raise DiscordAPIError(404, 0, "404: Not Found")
        self.world.cdn_downloads.append(att.id)
        return web.Response(
            body=att.data, headers={"Content-Type": att.content_type or "application/octet-stream"}
        )
