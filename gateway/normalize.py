"""Claude Code quirks, handled once before routing so no backend has to know about them."""
from __future__ import annotations

import dataclasses

import orjson

from gateway.anthropic import Message, MessagesRequest, TextBlock

BILLING_HEADER = "x-anthropic-billing-header"


def normalize(req: MessagesRequest) -> MessagesRequest:
    """Strip the per-request billing header and hoist leading role:system messages into `system`.

    The billing header's suffix changes on every request; left in, it would change the prompt
    prefix each turn and defeat every prompt cache. Later system messages stay where they are, so
    the prefix already sent stays byte-identical as the conversation grows.
    """
    system = [b for b in req.system if not b.text.lstrip().startswith(BILLING_HEADER)]
    messages = req.messages
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        system.extend(b for b in messages[lead].content if type(b) is TextBlock)
        lead += 1
    if lead:
        messages = messages[lead:]
        if not messages:
            messages = [Message("user", [TextBlock("")])]
    if len(system) == len(req.system) and not lead:
        return req
    return dataclasses.replace(req, system=system, messages=messages)


def session_id(header: str | None, req: MessagesRequest) -> str | None:
    """The session key: X-Claude-Code-Session-Id, else the session_id inside metadata.user_id."""
    if header:
        return header
    user_id = req.metadata_user_id
    if not user_id:
        return None
    if user_id.startswith("{"):
        try:
            data = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return None
        sid = data.get("session_id") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) else None
    # Older Claude Code: "user_<hash>_account_<uuid>_session_<uuid>".
    marker = "_session_"
    return user_id.split(marker, 1)[1] if marker in user_id else None
