"""Claude Code quirks, handled once before routing so no backend has to know about them."""
from __future__ import annotations

import dataclasses
from typing import TypeGuard

import orjson

from gateway.protocol.anthropic import Message, MessagesRequest, TextBlock

BILLING_HEADER = "x-anthropic-billing-header"


def normalize(req: MessagesRequest) -> MessagesRequest:
    """Strip the per-request billing header and hoist leading role:system messages into `system`.

    The billing header's suffix changes on every request; left in, it would change the prompt
    prefix each turn and defeat every prompt cache. Later system messages stay where they are, so
    the prefix already sent stays byte-identical as the conversation grows.
    """
    system = [b for b in req.system if not _is_billing(b)]
    messages = _without_billing(req.messages)
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        system.extend(b for b in messages[lead].content if type(b) is TextBlock)
        lead += 1
    if lead:
        messages = messages[lead:]
        if not messages:
            messages = [Message("user", [TextBlock("")])]
    if len(system) == len(req.system) and not lead and messages is req.messages:
        return req
    return dataclasses.replace(req, system=system, messages=messages)


def _is_billing(block: object) -> TypeGuard[TextBlock]:
    return type(block) is TextBlock and block.text.lstrip().startswith(BILLING_HEADER)


def _without_billing(messages: list[Message]) -> list[Message]:
    """The billing header can also arrive inside a role:system message; it goes there too."""
    if not any(m.role == "system" and any(_is_billing(b) for b in m.content) for m in messages):
        return messages
    out = []
    for m in messages:
        if m.role == "system":
            # Only the header line goes: text after it in the same block is a real instruction.
            content = [TextBlock(b.text.lstrip().partition("\n")[2]) if _is_billing(b) else b for b in m.content]
            content = [b for b in content if type(b) is not TextBlock or b.text.strip()]
            if not content:
                continue  # nothing but the header: the message goes with it
            m = Message("system", content)
        out.append(m)
    return out or [Message("user", [TextBlock("")])]


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
