"""Incremental tool-call parsing of model text (Hermes/Qwen, Qwen3-Coder XML, Llama 3 JSON, Mistral).

Every sample is fed whole, character by character, in random 1–3 character fragments, and (for the
short ones) split in two at every position; the events must come out the same each time.
"""
from __future__ import annotations

import json
import random

import pytest
from structlog.testing import capture_logs

from backends.text_filters import ThinkTagParser
from backends.tool_parsers import (
    FRAGMENT_CHARS, HermesParser, Llama3JsonParser, MistralParser, ModelOutputParser, PassthroughParser,
    Qwen3CoderParser, select_parser,
)
from gateway.protocol.events import TextDelta, ThinkingDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from tests.tool_schemas import TOOLS


def fragmentations(sample: str, every_split: bool):
    """The ways a detokenizer might hand `sample` over."""
    yield [sample]
    yield list(sample)
    for seed in range(6):
        rng, pieces, i = random.Random(seed), [], 0
        while i < len(sample):
            n = rng.randint(1, 3)
            pieces.append(sample[i:i + n])
            i += n
        yield pieces
    if every_split:
        for i in range(1, len(sample)):
            yield [sample[:i], sample[i:]]


def summarize(events) -> list[tuple]:
    """Merged view: ("text", s), ("thinking", s), ("tool", name, parsed-arguments); checks block shape."""
    out: list[tuple] = []
    open_tool: list | None = None
    for ev in events:
        if open_tool is not None:
            if type(ev) is ToolCallDelta:
                open_tool[1].append(ev.partial_json)
                continue
            assert type(ev) is ToolCallEnd, f"tool call not closed before {ev!r}"
            assert open_tool[1], "tool call without arguments"
            out.append(("tool", open_tool[0], json.loads("".join(open_tool[1]))))
            open_tool = None
            continue
        if type(ev) is ToolCallStart:
            assert ev.name
            open_tool = [ev.name, []]
        elif type(ev) is TextDelta:
            assert ev.text, "empty text delta"
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + ev.text)
            else:
                out.append(("text", ev.text))
        elif type(ev) is ThinkingDelta:
            assert ev.thinking, "empty thinking delta"
            if out and out[-1][0] == "thinking":
                out[-1] = ("thinking", out[-1][1] + ev.thinking)
            else:
                out.append(("thinking", ev.thinking))
        else:
            raise AssertionError(f"unexpected event {ev!r}")
    assert open_tool is None, "tool call left open"
    return out


def run(make, pieces, *, cut: bool = False) -> list:
    parser = make()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish(cut=cut)
    return events


def check(make, sample: str, expected: list[tuple], *, every_split: bool = False, cut: bool = False) -> None:
    for pieces in fragmentations(sample, every_split):
        assert summarize(run(make, pieces, cut=cut)) == expected, f"fragments: {pieces!r}"


def parser(cls, tools=TOOLS):
    return lambda: cls(tools)


# -- Hermes / Qwen2.5 / Qwen3 ------------------------------------------------------------------

QWEN25_WEATHER = ('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", '
                  '"unit": "celsius"}}\n</tool_call>')


def test_hermes_single_call_qwen25():
    check(parser(HermesParser), QWEN25_WEATHER,
          [("tool", "get_weather", {"location": "Paris, France", "unit": "celsius"})], every_split=True)


QWEN3_THINK_TEXT_CALL = (
    "<think>\nThe user wants to know what the project does. I should read the README first; "
    "a <tool_call> here is only me thinking.\n</think>\n\n"
    "I'll start by reading the README.\n"
    '<tool_call>\n{"name": "Read", "arguments": {"file_path": "/repo/README.md"}}\n</tool_call>'
)


def test_qwen3_thinking_text_then_call():
    def make():
        return ModelOutputParser(HermesParser(TOOLS))

    check(make, QWEN3_THINK_TEXT_CALL, [
        ("thinking", "The user wants to know what the project does. I should read the README first; "
                     "a <tool_call> here is only me thinking."),
        ("text", "I'll start by reading the README."),
        ("tool", "Read", {"file_path": "/repo/README.md"}),
    ], every_split=True)


QWEN3_PARALLEL = (
    "Let me check both at once.\n\n"
    '<tool_call>\n{"name": "Bash", "arguments": {"command": "git status --short", '
    '"description": "Show working tree status"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "Grep", "arguments": {"pattern": "TODO|FIXME", "output_mode": "files_with_matches"}}\n'
    "</tool_call>\n"
)


def test_hermes_parallel_calls_no_whitespace_text_between():
    check(parser(HermesParser), QWEN3_PARALLEL, [
        ("text", "Let me check both at once."),
        ("tool", "Bash", {"command": "git status --short", "description": "Show working tree status"}),
        ("tool", "Grep", {"pattern": "TODO|FIXME", "output_mode": "files_with_matches"}),
    ], every_split=True)


def test_hermes_text_resumes_after_call():
    sample = ('Reading it now. <tool_call>\n{"name": "Read", "arguments": {"file_path": "/a.py"}}\n'
              "</tool_call>\n\nThat is all for now.")
    check(parser(HermesParser), sample, [
        ("text", "Reading it now."), ("tool", "Read", {"file_path": "/a.py"}), ("text", "That is all for now.")],
        every_split=True)


def test_hermes_damaged_arguments_are_repaired():
    # Single quotes, a trailing comma, a number as a string, and the last brace missing.
    sample = ("<tool_call>\n{'name': 'Bash', 'arguments': {'command': 'pytest -x -q', "
              "'timeout': '120000', 'run_in_background': False,}\n</tool_call>")
    check(parser(HermesParser), sample,
          [("tool", "Bash", {"command": "pytest -x -q", "timeout": 120000, "run_in_background": False})],
          every_split=True)


def test_hermes_arguments_as_json_string_and_parameters_key():
    sample = ('<tool_call>\n{"name": "Read", "arguments": "{\\"file_path\\": \\"/x\\", \\"limit\\": \\"40\\"}"}\n'
              '</tool_call><tool_call>{"name": "Read", "parameters": {"file_path": "/y"}}</tool_call>')
    check(parser(HermesParser), sample, [
        ("tool", "Read", {"file_path": "/x", "limit": 40}), ("tool", "Read", {"file_path": "/y"})])


def test_hermes_several_objects_in_one_block():
    sample = ('<tool_call>\n{"name": "Read", "arguments": {"file_path": "/a"}}\n'
              '{"name": "Read", "arguments": {"file_path": "/b"}}\n</tool_call>')
    check(parser(HermesParser), sample, [
        ("tool", "Read", {"file_path": "/a"}), ("tool", "Read", {"file_path": "/b"})])


def test_schema_violating_call_never_starts_a_tool_use():
    bad = '<tool_call>\n{"name": "Bash", "arguments": {"cmd": "ls"}}\n</tool_call>'
    sample = "Running it.\n" + bad
    with capture_logs() as logs:
        for pieces in fragmentations(sample, every_split=True):
            events = run(parser(HermesParser), pieces)
            assert not any(type(ev) is ToolCallStart for ev in events)
            # The raw call comes back as text so the user sees what the model attempted.
            assert summarize(events) == [("text", sample)]
    dropped = [e for e in logs if e["event"] == "tool_call_dropped"]
    assert dropped and dropped[0]["raw"] == bad and dropped[0]["log_level"] == "warning"


def test_unknown_tool_is_dropped():
    sample = '<tool_call>\n{"name": "rm_everything", "arguments": {}}\n</tool_call>'
    p = HermesParser(TOOLS)
    events = p.feed(sample) + p.finish()
    assert not any(type(ev) is ToolCallStart for ev in events)
    assert (p.emitted, p.dropped) == (0, 1)


def test_valid_call_sent_and_invalid_sibling_withheld():
    sample = ('<tool_call>\n[{"name": "Read", "arguments": {"file_path": "/ok"}}, '
              '{"name": "Read", "arguments": {"path": "/bad"}}]\n</tool_call>')
    p = HermesParser(TOOLS)
    with capture_logs() as logs:
        events = p.feed(sample) + p.finish()
    assert summarize(events) == [("tool", "Read", {"file_path": "/ok"})]
    assert (p.emitted, p.dropped) == (1, 1)
    assert any(e["event"] == "tool_call_dropped" for e in logs)


def test_call_without_end_tag_at_end_of_generation():
    sample = '<tool_call>\n{"name": "Read", "arguments": {"file_path": "/repo/main.go"}}'
    check(parser(HermesParser), sample, [("tool", "Read", {"file_path": "/repo/main.go"})])
    # A missing final brace is repaired when the model ended the turn itself...
    check(parser(HermesParser), sample[:-1], [("tool", "Read", {"file_path": "/repo/main.go"})])


def test_call_cut_by_max_tokens_is_not_completed():
    sample = '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls", "timeout": 100'
    # ...but not when max_tokens cut it: the number may be truncated.
    for pieces in fragmentations(sample, every_split=False):
        events = run(parser(HermesParser), pieces, cut=True)
        assert not any(type(ev) is ToolCallStart for ev in events)
        assert summarize(events) == [("text", sample)]


def test_hermes_end_tag_inside_an_argument_string():
    content = 'END = "</tool_call>"\nprint(END)\n'
    sample = ('<tool_call>\n{"name": "Write", "arguments": ' + json.dumps({"file_path": "/t.py", "content": content})
              + '}\n</tool_call>\nWritten.')
    check(parser(HermesParser), sample, [("tool", "Write", {"file_path": "/t.py", "content": content}),
                                         ("text", "Written.")])


def test_text_streams_immediately_and_only_partial_markers_are_held():
    p = HermesParser(TOOLS)
    assert p.feed("Hello wor") == [TextDelta("Hello wor")]
    assert p.feed("ld, see <tool") == [TextDelta("ld, see")]  # " <tool" might open a call
    assert p.feed("box> here") == [TextDelta(" <toolbox> here")]
    assert p.feed("\n\n") == []  # whitespace waits: it is noise if a call follows
    assert p.feed("Next") == [TextDelta("\n\nNext")]
    assert p.finish() == []


def test_long_arguments_go_out_in_several_fragments():
    content = "x = 1\n" * 100
    sample = '<tool_call>{"name": "Write", "arguments": ' + json.dumps({"file_path": "/x.py", "content": content}) + \
             "}</tool_call>"
    events = run(parser(HermesParser), list(sample))
    deltas = [ev.partial_json for ev in events if type(ev) is ToolCallDelta]
    assert len(deltas) > 2 and all(len(d) <= FRAGMENT_CHARS for d in deltas)
    assert json.loads("".join(deltas)) == {"file_path": "/x.py", "content": content}


# -- Qwen3-Coder XML ---------------------------------------------------------------------------

APP_PY = '''import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: app <name>", file=sys.stderr)
        return 2
    print(f"hello {argv[1]}")  # <- greets
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''

QWEN3_CODER_WRITE = (
    "I'll create the entry point.\n"
    "<tool_call>\n<function=Write>\n<parameter=file_path>\n/repo/app.py\n</parameter>\n"
    "<parameter=content>\n" + APP_PY + "\n</parameter>\n</function>\n</tool_call>"
)


def test_qwen3_coder_multiline_code_parameter():
    check(parser(Qwen3CoderParser), QWEN3_CODER_WRITE, [
        ("text", "I'll create the entry point."),
        ("tool", "Write", {"file_path": "/repo/app.py", "content": APP_PY}),
    ])


def test_qwen3_coder_values_typed_by_schema():
    sample = (
        "<tool_call>\n<function=Bash>\n<parameter=command>\nnpm run build 2>&1 | tail -20\n</parameter>\n"
        "<parameter=timeout>\n300000\n</parameter>\n<parameter=run_in_background>\nfalse\n</parameter>\n"
        "<parameter=description>\n42\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=TodoWrite>\n<parameter=todos>\n"
        '[{"content": "Build", "status": "in_progress", "activeForm": "Building"},\n'
        ' {"content": "Deploy", "status": "pending", "activeForm": "Deploying"}]\n'
        "</parameter>\n</function>\n</tool_call>"
    )
    check(parser(Qwen3CoderParser), sample, [
        ("tool", "Bash", {"command": "npm run build 2>&1 | tail -20", "timeout": 300000,
                          "run_in_background": False, "description": "42"}),
        ("tool", "TodoWrite", {"todos": [
            {"content": "Build", "status": "in_progress", "activeForm": "Building"},
            {"content": "Deploy", "status": "pending", "activeForm": "Deploying"}]}),
    ])


def test_qwen3_coder_short_call_every_split():
    sample = ("<tool_call>\n<function=Edit>\n<parameter=file_path>\n/a.py\n</parameter>\n"
              "<parameter=old_string>\nx = 1\n</parameter>\n<parameter=new_string>\nx = 2\n</parameter>\n"
              "<parameter=replace_all>\ntrue\n</parameter>\n</function>\n</tool_call>")
    check(parser(Qwen3CoderParser), sample, [
        ("tool", "Edit", {"file_path": "/a.py", "old_string": "x = 1", "new_string": "x = 2", "replace_all": True})],
        every_split=True)


def test_qwen3_coder_end_tag_inside_a_value_does_not_end_the_call():
    code = 'END = "</tool_call>"\nFN = "</function>"\n'
    sample = ("<tool_call>\n<function=Write>\n<parameter=file_path>\n/p.py\n</parameter>\n"
              "<parameter=content>\n" + code + "\n</parameter>\n</function>\n</tool_call>\nDone.")
    check(parser(Qwen3CoderParser), sample, [
        ("tool", "Write", {"file_path": "/p.py", "content": code}), ("text", "Done.")])


def test_qwen3_coder_missing_parameter_close():
    sample = ("<tool_call>\n<function=Grep>\n<parameter=pattern>\nfn main\n</parameter>\n<parameter=-n>\ntrue\n"
              "</function>\n</tool_call>\nSearching.")
    check(parser(Qwen3CoderParser), sample,
          [("tool", "Grep", {"pattern": "fn main", "-n": True}), ("text", "Searching.")], every_split=True)


def test_qwen3_coder_missing_parameter_close_and_bare_function():
    sample = ("<function=Read>\n<parameter=file_path>\n/etc/hosts\n</parameter>\n<parameter=limit>\n5\n"
              "</function>\nok")
    check(parser(Qwen3CoderParser), sample, [("tool", "Read", {"file_path": "/etc/hosts", "limit": 5}), ("text", "ok")])


def test_qwen3_coder_schema_violation_is_withheld():
    sample = ("Let me read it.\n<tool_call>\n<function=Read>\n<parameter=file_path>\n/a\n</parameter>\n"
              "<parameter=limit>\nall of it\n</parameter>\n</function>\n</tool_call>")
    for pieces in fragmentations(sample, every_split=False):
        events = run(parser(Qwen3CoderParser), pieces)
        assert not any(type(ev) is ToolCallStart for ev in events)
        assert summarize(events) == [("text", sample)]


# -- Llama 3.x JSON ----------------------------------------------------------------------------

def test_llama3_python_tag_call():
    sample = ('<|python_tag|>{"name": "get_weather", '
              '"parameters": {"location": "San Francisco, CA", "unit": "fahrenheit"}}')
    check(parser(Llama3JsonParser), sample,
          [("tool", "get_weather", {"location": "San Francisco, CA", "unit": "fahrenheit"})], every_split=True)


def test_llama3_bare_json_call_and_semicolon_separated():
    sample = ('{"name": "Bash", "parameters": {"command": "ls -la", "description": "List files"}}; '
              '{"name": "Read", "parameters": {"file_path": "/repo/go.mod", "limit": "50"}}')
    check(parser(Llama3JsonParser), sample, [
        ("tool", "Bash", {"command": "ls -la", "description": "List files"}),
        ("tool", "Read", {"file_path": "/repo/go.mod", "limit": 50})], every_split=True)


def test_llama3_braces_and_escaped_quotes_inside_strings():
    args = {"command": "echo \"}\" && awk '{print $1}' data.txt | sort -u", "description": "Dedupe [col] 1\\"}
    sample = ('{"name": "Bash", "parameters": ' + json.dumps(args) +
              '};{"name": "Read", "parameters": {"file_path": "/d"}}')
    check(parser(Llama3JsonParser), sample, [("tool", "Bash", args), ("tool", "Read", {"file_path": "/d"})],
          every_split=True)


@pytest.mark.parametrize("cls,sample", [
    (Llama3JsonParser, '{"name": "Bash", "parameters": {"command": "sleep 1", "timeout": 100'),
    (Llama3JsonParser, '<|python_tag|>{"name": "Bash", "parameters": {"command": "sleep 1", "timeout": 100'),
    (MistralParser, '[TOOL_CALLS]Bash[ARGS]{"command": "sleep 1", "timeout": 100'),
    (MistralParser, '[TOOL_CALLS][{"name": "Bash", "arguments": {"command": "sleep 1", "timeout": 100'),
    (Qwen3CoderParser, "<tool_call>\n<function=Bash>\n<parameter=command>\nsleep 1\n</parameter>\n"
                       "<parameter=timeout>\n100"),
])
def test_calls_cut_by_max_tokens_are_withheld(cls, sample):
    for pieces in fragmentations(sample, every_split=False):
        events = run(parser(cls), pieces, cut=True)
        assert summarize(events) == [("text", sample)]


@pytest.mark.parametrize("cls,sample", [
    (Llama3JsonParser, '{"name": "Bash", "parameters": {"command": "sleep 1", "timeout": 100'),
    (MistralParser, '[TOOL_CALLS]Bash[ARGS]{"command": "sleep 1", "timeout": 100'),
])
def test_calls_missing_final_braces_at_natural_end_are_repaired(cls, sample):
    check(parser(cls), sample, [("tool", "Bash", {"command": "sleep 1", "timeout": 100})])


def test_llama3_json_that_is_not_a_call_is_text():
    sample = '{"title": "Fix flaky test", "labels": ["ci"]}'
    check(parser(Llama3JsonParser), sample, [("text", sample)], every_split=True)
    p = Llama3JsonParser(TOOLS)
    # Released as soon as the first key rules out a call, not at the end.
    assert summarize(p.feed('{"title": "Fix')) == [("text", '{"title": "Fix')]


def test_llama3_plain_text_streams_through():
    p = Llama3JsonParser(TOOLS)
    assert p.feed("The answer") == [TextDelta("The answer")]
    assert p.feed(" is {x}.") == [TextDelta(" is {x}.")]
    assert p.finish() == []


def test_llama3_invalid_call_is_withheld():
    sample = '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris", "unit": "kelvin"}}'
    for pieces in fragmentations(sample, every_split=True):
        events = run(parser(Llama3JsonParser), pieces)
        assert not any(type(ev) is ToolCallStart for ev in events)


# -- Mistral -----------------------------------------------------------------------------------

def test_mistral_v3_json_list():
    sample = ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}, '
              '{"name": "get_weather", "arguments": {"location": "Lyon, France"}}]')
    check(parser(MistralParser), sample, [
        ("tool", "get_weather", {"location": "Paris, France", "unit": "celsius"}),
        ("tool", "get_weather", {"location": "Lyon, France"})], every_split=True)


def test_mistral_name_args_form_with_text_and_call_ids():
    sample = ("Checking the repository state.[TOOL_CALLS]Bash[ARGS]"
              '{"command": "git log --oneline -5", "description": "Recent commits"}'
              '[TOOL_CALLS]Read[CALL_ID]a1B2c3D4e[ARGS]{"file_path": "/repo/CHANGELOG.md", "limit": 30}')
    check(parser(MistralParser), sample, [
        ("text", "Checking the repository state."),
        ("tool", "Bash", {"command": "git log --oneline -5", "description": "Recent commits"}),
        ("tool", "Read", {"file_path": "/repo/CHANGELOG.md", "limit": 30})], every_split=True)


def test_mistral_invalid_call_is_withheld():
    sample = '[TOOL_CALLS]Grep[ARGS]{"pattern": "x", "output_mode": "everything"}'
    for pieces in fragmentations(sample, every_split=True):
        events = run(parser(MistralParser), pieces)
        assert not any(type(ev) is ToolCallStart for ev in events)
        assert summarize(events) == [("text", sample)]


def test_mistral_marker_without_a_call_is_text():
    sample = "[TOOL_CALLS] sorry, I cannot call tools here."
    check(parser(MistralParser), sample, [("text", sample)])


# -- thinking ----------------------------------------------------------------------------------

def think(pieces, start_in_thinking=False):
    p = ThinkTagParser(start_in_thinking=start_in_thinking)
    events = []
    for piece in pieces:
        events += p.feed(piece)
    return summarize(events + p.flush())


@pytest.mark.parametrize("sample,start,expected", [
    ("<think>\nPlan: read the file.\n</think>\n\nHere it is.", False,
     [("thinking", "Plan: read the file."), ("text", "Here it is.")]),
    ("Plan: use <b>bold</b>.\n</think>\n\nDone <thinking> ok", True,
     [("thinking", "Plan: use <b>bold</b>."), ("text", "Done <thinking> ok")]),
    ("A<think>B</think>C<think>D</think>E", False,
     [("text", "A"), ("thinking", "B"), ("text", "C"), ("thinking", "D"), ("text", "E")]),
])
def test_think_tags_split_at_every_point(sample, start, expected):
    for pieces in fragmentations(sample, every_split=True):
        assert think(pieces, start) == expected, pieces


def test_thinking_split_three_ways_around_tags():
    sample = "<think>R</think>T"
    for i in range(1, len(sample)):
        for j in range(i + 1, len(sample)):
            assert think([sample[:i], sample[i:j], sample[j:]]) == [("thinking", "R"), ("text", "T")]


def test_model_output_parser_thinking_before_qwen3_coder_call():
    sample = ("<think>\nNeed the config.\n</think>\n\n<tool_call>\n<function=Read>\n<parameter=file_path>\n"
              "/repo/config.toml\n</parameter>\n</function>\n</tool_call>")
    def make():
        return ModelOutputParser(Qwen3CoderParser(TOOLS))

    check(make, sample, [("thinking", "Need the config."), ("tool", "Read", {"file_path": "/repo/config.toml"})],
          every_split=True)


# -- parser selection --------------------------------------------------------------------------

QWEN3_TEMPLATE = ('{%- if tools %}...For each function call, return a json object with function name and arguments '
                  'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
                  '"arguments": <args-json-object>}\n</tool_call>')
QWEN3_CODER_TEMPLATE = ("<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
                        "</parameter>\n</function>\n</tool_call>")
MISTRAL_TEMPLATE = '{%- if message.tool_calls %}{{- "[TOOL_CALLS]" }}{%- for tool in message.tool_calls %}'
LLAMA31_TEMPLATE = ('{{- "<|start_header_id|>" + message.role + "<|end_header_id|>\\n\\n" }}'
                    '{{- "<|python_tag|>" + tool_call.name + ".call(" }}')


@pytest.mark.parametrize("model_type,template,override,expected", [
    ("qwen3", QWEN3_TEMPLATE, None, HermesParser),
    ("qwen3_moe", QWEN3_CODER_TEMPLATE, None, Qwen3CoderParser),
    ("mistral", MISTRAL_TEMPLATE, None, MistralParser),
    ("llama", LLAMA31_TEMPLATE, None, Llama3JsonParser),
    ("qwen2", None, None, HermesParser),
    ("mistral3", "", None, MistralParser),
    ("llama", None, None, Llama3JsonParser),
    ("gpt2", "{{ messages }}", None, PassthroughParser),
    (None, None, None, PassthroughParser),
    ("qwen3", QWEN3_TEMPLATE, "qwen3_coder", Qwen3CoderParser),
    ("qwen3", QWEN3_TEMPLATE, "none", PassthroughParser),
    ("llama", None, "Mistral", MistralParser),
    ("llama", None, "llama3-json", Llama3JsonParser),
])
def test_select_parser(model_type, template, override, expected):
    assert select_parser(model_type, template, override) is expected


def test_select_parser_rejects_unknown_override():
    with pytest.raises(ValueError, match="hermes, qwen3_coder, llama3_json, mistral, none"):
        select_parser("qwen3", None, "deepseek")


def test_passthrough_keeps_markup_as_text():
    p = select_parser(None, None, "none")(TOOLS)
    events = p.feed(QWEN25_WEATHER) + p.finish()
    assert summarize(events) == [("text", QWEN25_WEATHER)]
