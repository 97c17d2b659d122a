"""Discord's limits on messages, files, components and modals, checked the way the API checks them.

Each check raises DiscordAPIError with the status and JSON error code Discord answers with, so the
real discord.py client raises the same HTTPException subclass it would raise in production.
"""

from __future__ import annotations

from typing import Any

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL_CHARS = 6000
MAX_FILES = 10
MAX_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80
MAX_MODAL_TITLE = 45
MAX_MODAL_COMPONENTS = 5
MAX_V2_COMPONENTS = 40
COMPONENTS_V2_FLAG = 1 << 15


class DiscordAPIError(Exception):
    """An error answer: HTTP status plus Discord's JSON body {code, message, errors}."""

    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return body


def invalid_form(field: str, message: str) -> DiscordAPIError:
    """Discord's 50035 Invalid Form Body, naming the offending field like the real API does."""
    errors = {field: {"_errors": [{"code": "BASE_TYPE_INVALID", "message": message}]}}
    return DiscordAPIError(400, 50035, f"Invalid Form Body\nIn {field}: {message}", errors)


def embed_chars(embed: dict[str, Any]) -> int:
    """Characters counted towards the 6000 limit: title, description, fields, footer text, author name."""
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def check_custom_id(path: str, custom_id: Any) -> None:
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        raise invalid_form(f"{path}.custom_id", "Must be between 1 and 100 in length.")


def check_components(components: list[dict[str, Any]], *, flags: int = 0) -> None:
    """Legacy action rows: <= 5 rows, <= 5 buttons (or one select) per row; v2 layouts: <= 40 in all."""
    if flags & COMPONENTS_V2_FLAG:
        count = 0
        stack = list(components)
        while stack:
            comp = stack.pop()
            count += 1
            stack.extend(comp.get("components", []))
            if "custom_id" in comp:
                check_custom_id("components", comp["custom_id"])
        if count > MAX_V2_COMPONENTS:
            raise invalid_form("components", f"Must be {MAX_V2_COMPONENTS} or fewer in length.")
        return
    if len(components) > MAX_ROWS:
        raise invalid_form("components", f"Must be {MAX_ROWS} or fewer in length.")
    for r, row in enumerate(components):
        if row.get("type") != 1:
            raise invalid_form(f"components.{r}", "Top-level components must be action rows.")
        children = row.get("components") or []
        if not children:
            raise invalid_form(f"components.{r}.components", "Must be between 1 and 5 in length.")
        if len(children) > MAX_BUTTONS_PER_ROW:
            raise invalid_form(f"components.{r}.components", "Must be 5 or fewer in length.")
        if any(c.get("type") != 2 for c in children) and len(children) > 1:
            raise invalid_form(f"components.{r}.components", "A select menu must be alone in its row.")
        for i, comp in enumerate(children):
            path = f"components.{r}.components.{i}"
            if comp.get("type") == 2:
                if len(comp.get("label") or "") > MAX_BUTTON_LABEL:
                    raise invalid_form(f"{path}.label", "Must be 80 or fewer in length.")
                if comp.get("style") == 5:
                    if not comp.get("url"):
                        raise invalid_form(f"{path}.url", "Link buttons need a url.")
                    continue
                if comp.get("style") == 6:  # premium buttons carry a sku_id instead
                    continue
            check_custom_id(path, comp.get("custom_id"))


def check_message(
    payload: dict[str, Any],
    files: list[tuple[str, bytes]],
    *,
    upload_limit: int,
    editing: bool = False,
    kept_attachments: int = 0,
) -> None:
    """Everything Discord checks on a create/edit message body (channel message, callback, webhook)."""
    for name, data in files:
        if len(data) > upload_limit:
            raise DiscordAPIError(413, 40005, f"Request entity too large ({name}: {len(data)} bytes)")
    if len(files) + kept_attachments > MAX_FILES:
        raise invalid_form("attachments", f"Must be {MAX_FILES} or fewer in length.")
    content = payload.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        raise invalid_form("content", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = payload.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form("embeds", f"Must be {MAX_EMBEDS} or fewer in length.")
    if sum(embed_chars(e) for e in embeds) > MAX_EMBED_TOTAL_CHARS:
        raise invalid_form("embeds", f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL_CHARS}")
    flags = int(payload.get("flags") or 0)
    check_components(payload.get("components") or [], flags=flags)
    if not editing and not (
        content
        or embeds
        or files
        or payload.get("components")
        or payload.get("sticker_ids")
        or payload.get("poll")
    ):
        raise DiscordAPIError(400, 50006, "Cannot send an empty message")


def check_modal(data: dict[str, Any]) -> None:
    check_custom_id("data", data.get("custom_id"))
    title = data.get("title") or ""
    if not 1 <= len(title) <= MAX_MODAL_TITLE:
        raise invalid_form("data.title", "Must be between 1 and 45 in length.")
    components = data.get("components") or []
    if not 1 <= len(components) <= MAX_MODAL_COMPONENTS:
        raise invalid_form("data.components", "Must be between 1 and 5 in length.")
    for i, comp in enumerate(components):
        inner = comp.get("components") or ([comp["component"]] if "component" in comp else [])
        for j, child in enumerate(inner):
            path = f"data.components.{i}.components.{j}"
            check_custom_id(path, child.get("custom_id"))
            label = child.get("label") if comp.get("type") == 1 else comp.get("label")
            if label is not None and len(label) > MAX_MODAL_TITLE:
                raise invalid_form(f"{path}.label", "Must be 45 or fewer in length.")
