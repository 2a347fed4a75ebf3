"""Text bound for a terminal: control characters made visible (shared by the console log and the
log_replay tables; no imports, so the command-line tools start fast)."""
from __future__ import annotations

import re

# C0/C1 controls, DEL, line separators and bidi overrides: a client's path or model name holding
# them could recolour, retitle or clear the operator's terminal, forge lines, or reorder text.
_BEYOND_C0 = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x1f{_BEYOND_C0}]")
# In JSON text C0 is escaped inside strings already and a newline outside them is layout.
_JSON_CONTROL = re.compile(f"[{_BEYOND_C0}]")


def _escape(m: re.Match) -> str:
    code = ord(m[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls_in_json(text: str) -> str:
    """JSON text with the controls a JSON encoder leaves raw written as \\uNNNN: the same JSON, inert on a terminal."""
    return _JSON_CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def escape_controls(text: str) -> str:
    """`text` with every terminal control character written as a visible \\xNN or \\uNNNN escape."""
    if text.isprintable():  # the common case (no control character is printable)
        return text
    return _CONTROL.sub(_escape, text)
