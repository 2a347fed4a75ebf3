"""Request-log bodies: the same value on one line, secrets scrubbed however the client escaped them."""
from __future__ import annotations

import json

import orjson
import pytest

from gateway.outcome import RequestOutcome
from gateway.reqlog import LineRenderer, log_line

SECRET = "sk-ab/c"


def _line(raw: bytes, secrets: tuple[str, ...] = (SECRET,)) -> bytes:
    rec = RequestOutcome(request_id="req_1", method="POST", path="/v1/messages", status=200, body=orjson.loads(raw))
    return LineRenderer(secrets).render(log_line(rec, with_body=True))


def test_raw_body_is_logged_as_the_same_value_on_one_line():
    raw = b'{\r\n  "model": "m",\n  "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x80\xa8 x"}]\n}'
    line = _line(raw)
    assert b"\n" not in line and b"\r" not in line and b"\xe2\x80\xa8" not in line
    assert json.loads(line)["body"] == json.loads(raw)


@pytest.mark.parametrize("spelled", [
    "sk-ab/c",  # as is
    "sk-ab\\/c",  # escaped slash
    "\\u0073k-ab/c",  # a unicode escape for one of its letters
    "sk\\u002dab\\/c",
])
def test_a_secret_in_the_body_is_redacted_however_it_is_escaped(spelled):
    raw = ('{"model":"m","messages":[{"role":"user","content":"key ' + spelled + ' here"}]}').encode()
    line = _line(raw)
    assert SECRET not in json.loads(line)["body"]["messages"][0]["content"]
    assert "[REDACTED]" in json.loads(line)["body"]["messages"][0]["content"]


def test_escapes_of_other_characters_keep_the_body_intact():
    raw = b'{"content":"tab\\tquote\\" \\u001b[0m \\u00e9"}'
    assert json.loads(_line(raw))["body"] == json.loads(raw)
