"""The MLX prompt for a Claude-Code-shaped request, rendered with the demo model's chat template.

The expected texts in tests/snapshots/ were rendered by the earlier path (Anthropic → OpenAI chat
messages → arguments parsed back), so the direct rendering is held to the same bytes: the same
text is the same token sequence, and a prompt prefix cached by an earlier version stays valid.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from backends.mlx.prompt import PromptRenderer
from bench.claude_code_request import build_request
from gateway.normalize import normalize
from gateway.protocol.anthropic import parse_messages_request
from gateway.protocol.errors import GatewayError
from gateway.tool_search import apply_tool_search

SNAPSHOTS = Path(__file__).parent / "snapshots"
CELL_EDIT = {"name": "CellEdit", "description": "Replace the contents of a notebook cell.",
            "input_schema": {"type": "object", "properties": {"cell": {"type": "integer"},
                                                              "source": {"type": "string"}},
                             "required": ["cell", "source"]},
            "defer_loading": True}


def claude_code_body(**overrides) -> dict:
    """A Claude Code session: tool rounds, a mid-conversation system message, signed thinking, a
    tool search that loads a deferred tool, an error result, and text next to a tool result."""
    body = build_request(turns=6, target_bytes=0)
    body["tools"].append(CELL_EDIT)
    body["messages"] += [
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "A notebook cell needs the fix too.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_search", "name": "ToolSearch", "input": {"query": "select:CellEdit"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_search",
             "content": [{"type": "tool_reference", "tool_name": "CellEdit"}]},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Editing the cell."},
            {"type": "tool_use", "id": "toolu_nb", "name": "CellEdit",
             "input": {"cell": 3, "source": "timeout = 3.0  # seconds, \u00e9t\u00e9 \"quoted\""}},
            {"type": "tool_use", "id": "toolu_empty", "name": "Bash", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_nb", "content": "cell 3 does not exist", "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_empty", "content": []},
            {"type": "text", "text": "Use cell 2 instead."},
            {"type": "text", "text": "And run the tests after."},
        ]},
    ]
    body.update(overrides)
    return body


def _request(body: dict):
    return apply_tool_search(normalize(parse_messages_request(body)))


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from mlx_lm.tokenizer_utils import load
    return load(demo_model)


CASES = {
    "claude_code_auto": ({}, "auto"),
    "claude_code_as_user_no_thinking": ({"thinking": {"type": "disabled"}}, "as_user"),
    "claude_code_merge": ({}, "merge"),
}


@pytest.mark.parametrize("case", CASES)
def test_rendered_prompt_matches_snapshot(tokenizer, case):
    overrides, mode = CASES[case]
    prompt = PromptRenderer(tokenizer, "demo", mode).render(_request(claude_code_body(**overrides)))
    expected = (SNAPSHOTS / f"mlx_prompt_{case}.txt").read_text(encoding="utf-8")
    if prompt.tokens != tokenizer.encode(expected, add_special_tokens=False):
        assert tokenizer.decode(prompt.tokens) == expected  # shows where the text differs
        pytest.fail("same text, different tokens")
    assert prompt.tools and 0 < prompt.shared_len < len(prompt.tokens)


def test_images_are_refused_with_a_reason(tokenizer):
    body = claude_code_body()
    body["messages"][-1]["content"].append(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    with pytest.raises(GatewayError) as err:
        PromptRenderer(tokenizer, "demo").render(_request(body))
    assert err.value.status == 400 and "the embedded MLX backend does not take images" in err.value.message
    assert "vision = true in its" not in err.value.message  # that setting does nothing for MLX
