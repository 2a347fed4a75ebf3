"""anthropic-compat.md section I: thinking / reasoning."""
from __future__ import annotations

import json

import pytest

from tests.sse_checks import open_stream
from tests.upstream import THINK, Script

MODEL = "claude-opus-4-8"
ENABLED = {"type": "enabled", "budget_tokens": 1024}
ADAPTIVE = {"type": "adaptive"}


def body(**kw) -> dict:
    out = {"model": MODEL, "max_tokens": 2000, "messages": [{"role": "user", "content": "what is 2+2?"}]}
    out.update(kw)
    return out


def inline(*pieces: str) -> Script:
    """Reasoning inlined as <think> tags in plain content, in exactly these chunks."""
    return Script(deltas=[{"content": p} for p in pieces])


@pytest.mark.parametrize("thinking", [ENABLED, ADAPTIVE], ids=["enabled", "adaptive"])
async def test_i1_thinking_block_non_streaming(stack, thinking):
    """I1: "THINK("R","T") … non-streaming → content == [{type:"thinking", thinking:"R", signature:<string>}, {type:"text", text:"T"}]"."""
    up, gw = stack
    up.push(THINK("Let me add the numbers.", "It is 4."))
    status, msg = await gw.messages(body(thinking=thinking))
    assert status == 200, msg
    assert [b["type"] for b in msg["content"]] == ["thinking", "text"]
    think, text = msg["content"]
    assert think["thinking"] == "Let me add the numbers."
    assert isinstance(think["signature"], str) and think["signature"]
    assert text == {"type": "text", "text": "It is 4."}


@pytest.mark.parametrize("thinking", [ENABLED, ADAPTIVE], ids=["enabled", "adaptive"])
async def test_i2_thinking_block_streamed(stack, thinking):
    """I2: "a thinking block at index 0 whose start has thinking:""; thinking_deltas concatenating to "R"; exactly one signature_delta before that block's content_block_stop; then the text block at index 1"."""
    up, gw = stack
    up.push(THINK("Let me add the numbers.", "It is 4."), THINK("Let me add the numbers.", "It is 4."))
    s = await open_stream(gw, body(thinking=thinking))
    think, text = s.blocks
    assert (think.index, think.type, text.index, text.type) == (0, "thinking", 1, "text")
    assert think.start["thinking"] == "" and think.start.get("signature", "") == ""
    assert think.joined("thinking_delta") == "Let me add the numbers."
    sig = [d for d in think.deltas if d["type"] == "signature_delta"]
    assert len(sig) == 1 and sig[0]["signature"] and think.deltas[-1] is sig[0]  # last, right before the stop
    assert text.joined("text_delta") == "It is 4."
    async with gw.anthropic().messages.stream(**body(thinking=thinking)) as stream:
        msg = await stream.get_final_message()
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "Let me add the numbers." and msg.content[0].signature == sig[0]["signature"]
    assert msg.content[1].text == "It is 4."


I3_SOURCES = {
    "reasoning_content": lambda: THINK("secret reasoning", "It is 4."),
    "inline_tags": lambda: inline("<think>secret ", "reasoning</think>", "It is 4."),
    "inline_tags_split": lambda: inline("<thi", "nk>\nsecret reasoning\n</th", "ink>\n\nIt is ", "4."),
}


@pytest.mark.parametrize("source", list(I3_SOURCES))
@pytest.mark.parametrize("thinking", [{"type": "disabled"}, None], ids=["disabled", "absent"])
async def test_i3_no_thinking_blocks_when_disabled(stack, source, thinking):
    """I3: "thinking disabled (or no thinking) while the backend still emits reasoning → no thinking blocks, and the reasoning does not leak into the text"."""
    up, gw = stack
    extra = {"thinking": thinking} if thinking else {}
    up.push(I3_SOURCES[source](), I3_SOURCES[source]())
    status, msg = await gw.messages(body(**extra))
    assert status == 200, msg
    assert msg["content"] == [{"type": "text", "text": "It is 4."}]
    s = await open_stream(gw, body(**extra))
    assert [b.type for b in s.blocks] == ["text"] and s.text == "It is 4."
    raw = json.dumps([d for _, d in s.frames])
    assert "secret" not in raw and "think>" not in raw


I4_SPLITS = {
    "whole": ["<think>Let me reason.</think>The answer is 4."],
    "tag_split": ["<", "thi", "nk>Let me", " reason.</", "think", ">The ans", "wer is 4."],
    "one_char": list("<think>Let me reason.</think>The answer is 4."),
    "tags_alone": ["<think>", "Let me reason.", "</think>", "The answer is 4."],
    "close_with_text": ["<think>Let me reason.</thi", "nk>The answer is 4."],
    "newlines": ["<think>\n", "Let me reason.\n", "</think>\n\n", "The answer is 4."],
    "lt_in_text": ["<think>Let me reason.</think>The answer is 4", ".", ""],
}


@pytest.mark.parametrize("split", list(I4_SPLITS))
async def test_i4_inline_think_tags_split_awkwardly(stack, split):
    """I4: "Reasoning inlined as <think>…</think> in backend text, split across chunks at awkward places → a correct thinking block plus text"."""
    up, gw = stack
    pieces = I4_SPLITS[split]
    up.push(inline(*pieces), inline(*pieces), inline(*pieces))
    s = await open_stream(gw, body(thinking=ENABLED))
    assert [b.type for b in s.blocks] == ["thinking", "text"]
    assert s.content[0]["thinking"] == "Let me reason."
    assert s.content[1] == {"type": "text", "text": "The answer is 4."}
    status, msg = await gw.messages(body(thinking=ENABLED))
    assert status == 200 and msg["content"] == s.content
    async with gw.anthropic().messages.stream(**body(thinking=ENABLED)) as stream:
        final = await stream.get_final_message()
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in final.content] == \
        [("thinking", "Let me reason."), ("text", "The answer is 4.")]


async def test_i4_text_with_lone_angle_bracket_is_kept(stack):
    """I4: a "<" that never becomes a tag is text, not swallowed by the tag parser."""
    up, gw = stack
    up.push(inline("if a <", " b then <th", "is> ok"))
    s = await open_stream(gw, body(thinking=ENABLED))
    assert [b.type for b in s.blocks] == ["text"] and s.text == "if a < b then <this> ok"


I5_CASES = {
    "think_text_think_text": ([{"reasoning_content": "R1"}, {"content": "T1"}, {"reasoning_content": "R2"},
                               {"content": "T2"}], [("thinking", "R1"), ("text", "T1"), ("thinking", "R2"),
                                                    ("text", "T2")]),
    "text_think_text": ([{"content": "T1"}, {"reasoning_content": "R1"}, {"content": "T2"}],
                        [("text", "T1"), ("thinking", "R1"), ("text", "T2")]),
    "inline_tags": ([{"content": "<think>R1</think>T1<th"}, {"content": "ink>R2</think>T2"}],
                    [("thinking", "R1"), ("text", "T1"), ("thinking", "R2"), ("text", "T2")]),
}


@pytest.mark.parametrize("case", list(I5_CASES))
async def test_i5_interleaved_thinking_and_text(stack, case):
    """I5: "Thinking, text, thinking, text → 4 blocks at indices 0–3, each well formed. Text, thinking, text → indices 0, 1, 2"."""
    up, gw = stack
    deltas, expected = I5_CASES[case]
    up.push(Script(deltas=deltas), Script(deltas=deltas))
    s = await open_stream(gw, body(thinking=ENABLED))
    assert [b.index for b in s.blocks] == list(range(len(expected)))
    got = [(b["type"], b.get("thinking", b.get("text"))) for b in s.content]
    assert got == expected
    for b in s.blocks:
        if b.type == "thinking":
            assert [d["type"] for d in b.deltas].count("signature_delta") == 1
    status, msg = await gw.messages(body(thinking=ENABLED))
    assert status == 200
    if case == "inline_tags":
        assert msg["content"] == s.content
    else:  # asked for a whole answer, a server carries its reasoning in one field and its text in another
        whole = [("thinking", "".join(t for kind, t in expected if kind == "thinking")),
                 ("text", "".join(t for kind, t in expected if kind == "text"))]
        assert [(b["type"], b.get("thinking", b.get("text"))) for b in msg["content"]] == whole


async def test_i6_own_thinking_fed_back(stack):
    """I6: "Feeding I1's content back as the assistant turn (the gateway's own signature) → 200"."""
    up, gw = stack
    up.push(THINK("Private chain of thought.", "It is 4."), THINK("More thought.", "Yes, 8."))
    status, first = await gw.messages(body(thinking=ENABLED))
    assert status == 200, first
    history = [{"role": "user", "content": "what is 2+2?"},
               {"role": "assistant", "content": first["content"]},
               {"role": "user", "content": "and 4+4?"}]
    status, second = await gw.messages(body(thinking=ENABLED, messages=history))
    assert status == 200, second
    assert second["content"][-1] == {"type": "text", "text": "Yes, 8."}
    # Not as visible text (a reasoning field for the chat template is fine).
    assert "Private chain of thought." not in json.dumps([m.get("content") for m in up.received[-1]["messages"]])
    # The same history through the SDK, streamed.
    up.push(THINK("More thought.", "Yes, 8."))
    async with gw.anthropic().messages.stream(**body(thinking=ENABLED, messages=history)) as stream:
        msg = await stream.get_final_message()
    assert msg.content[-1].text == "Yes, 8."
