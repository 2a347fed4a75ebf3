"""Argument repair, schema coercion and validation for tool calls written by local models."""
from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from backends.tool_args import ArgumentChecker, parse_lenient
from tests.tool_schemas import BASH, DEPLOY, DRAFT7, EDIT, GREP, READ, TODO_WRITE, WRITE


# -- parsing and repair of damaged JSON ---------------------------------------------------------

def test_valid_json_is_returned_unchanged():
    raw = '{"command": "ls -la /tmp", "description": "List files", "timeout": 30000}'
    assert ArgumentChecker(BASH).repair(raw) == {"command": "ls -la /tmp", "description": "List files", "timeout": 30000}


@pytest.mark.parametrize("raw", [
    '{"command": "git status",}',
    '{"command": "git status", }\n',
    '{"command": "git status",\n}',
])
def test_trailing_comma_in_object(raw):
    assert ArgumentChecker(BASH).repair(raw) == {"command": "git status"}


def test_trailing_comma_in_array_and_nested_object():
    raw = ('{"todos": [{"content": "Run tests", "status": "pending", "activeForm": "Running tests",},'
           ' {"content": "Fix lint", "status": "completed", "activeForm": "Fixing lint"},],}')
    assert ArgumentChecker(TODO_WRITE).repair(raw) == {"todos": [
        {"content": "Run tests", "status": "pending", "activeForm": "Running tests"},
        {"content": "Fix lint", "status": "completed", "activeForm": "Fixing lint"}]}


def test_single_quoted_keys_and_strings():
    raw = "{'file_path': '/repo/README.md', 'offset': 10}"
    assert ArgumentChecker(READ).repair(raw) == {"file_path": "/repo/README.md", "offset": 10}


def test_single_quoted_string_with_apostrophe_and_double_quotes():
    raw = """{'file_path': '/repo/a.txt', 'content': 'don't say "hi"'}"""
    assert ArgumentChecker(WRITE).repair(raw) == {"file_path": "/repo/a.txt", "content": 'don\'t say "hi"'}


def test_escaped_single_quote_inside_single_quoted_string():
    raw = r"{'command': 'echo \'quoted\''}"
    assert ArgumentChecker(BASH).repair(raw) == {"command": "echo 'quoted'"}


def test_raw_newlines_and_tabs_inside_strings():
    raw = '{"file_path": "/repo/Makefile", "content": "all:\n\tgo build ./...\n"}'
    assert ArgumentChecker(WRITE).repair(raw) == {"file_path": "/repo/Makefile", "content": "all:\n\tgo build ./...\n"}


def test_python_literals():
    raw = "{'command': 'sleep 100', 'run_in_background': True, 'description': None}"
    # None for an optional, non-nullable field means "not given".
    assert ArgumentChecker(BASH).repair(raw) == {"command": "sleep 100", "run_in_background": True}


def test_python_false_in_nested_schema():
    raw = '{"file_path": "/a.py", "old_string": "x = 1", "new_string": "x = 2", "replace_all": False}'
    assert ArgumentChecker(EDIT).repair(raw) == {"file_path": "/a.py", "old_string": "x = 1", "new_string": "x = 2",
                                           "replace_all": False}


def test_unquoted_keys():
    raw = '{command: "npm test", timeout: 60000}'
    assert ArgumentChecker(BASH).repair(raw) == {"command": "npm test", "timeout": 60000}


@pytest.mark.parametrize("raw", [
    '{"command": "make -j4"',
    '{"command": "make -j4",',
    '{"command": "make -j4", "timeout": 90000',
])
def test_missing_closing_brace(raw):
    got = ArgumentChecker(BASH).repair(raw)
    assert got is not None and got["command"] == "make -j4"


def test_missing_closing_brackets_nested():
    raw = '{"todos": [{"content": "Ship it", "status": "in_progress", "activeForm": "Shipping it"}'
    assert ArgumentChecker(TODO_WRITE).repair(raw) == {
        "todos": [{"content": "Ship it", "status": "in_progress", "activeForm": "Shipping it"}]}


def test_truncated_value_is_not_completed_by_guessing():
    # An unterminated string or a dangling key is a cut-off call, not a missing brace.
    assert ArgumentChecker(BASH).repair('{"command": "rm -rf /tmp/bu') is None
    assert ArgumentChecker(BASH).repair('{"command": "ls", "timeout":') is None


def test_close_open_false_refuses_missing_braces():
    assert parse_lenient('{"a": 1', close_open=False) is None
    assert parse_lenient('{"a": 1', close_open=True) == {"a": 1}
    assert parse_lenient('{"a": 1,}', close_open=False) == {"a": 1}


def test_unescaped_inner_double_quotes():
    raw = '{"command": "echo "hello world" > out.txt", "description": "Write greeting"}'
    assert ArgumentChecker(BASH).repair(raw) == {"command": 'echo "hello world" > out.txt',
                                           "description": "Write greeting"}


def test_invalid_escape_in_regex_is_kept_literally():
    raw = '{"pattern": "def \\w+\\(self", "output_mode": "content"}'
    assert ArgumentChecker(GREP).repair(raw) == {"pattern": "def \\w+\\(self", "output_mode": "content"}


def test_unicode_escapes_survive_repair():
    raw = "{'content': 'caf\\u00e9 \u2603', 'file_path': '/x',}"
    assert ArgumentChecker(WRITE).repair(raw) == {"content": "café \u2603", "file_path": "/x"}


def test_code_fence_around_arguments():
    raw = '```json\n{"file_path": "/repo/setup.py"}\n```'
    assert ArgumentChecker(READ).repair(raw) == {"file_path": "/repo/setup.py"}


def test_double_encoded_arguments_string():
    raw = '"{\\"file_path\\": \\"/etc/hosts\\", \\"limit\\": 20}"'
    assert ArgumentChecker(READ).repair(raw) == {"file_path": "/etc/hosts", "limit": 20}


# -- coercion to the schema ---------------------------------------------------------------------

def test_numeric_strings_become_numbers():
    assert ArgumentChecker(READ).repair('{"file_path": "/a", "offset": "120", "limit": "2.5"}') == \
        {"file_path": "/a", "offset": 120, "limit": 2.5}


def test_integer_schema_accepts_integral_float_string():
    got = ArgumentChecker(DEPLOY).repair('{"service": "api", "replicas": "3.0"}')
    assert got == {"service": "api", "replicas": 3} and type(got["replicas"]) is int


def test_boolean_strings_become_booleans():
    assert ArgumentChecker(BASH).repair('{"command": "sleep 5", "run_in_background": "true"}') == \
        {"command": "sleep 5", "run_in_background": True}
    assert ArgumentChecker(GREP).repair('{"pattern": "TODO", "-i": "FALSE", "-n": "True"}') == \
        {"pattern": "TODO", "-i": False, "-n": True}


def test_string_schema_keeps_numeric_looking_strings():
    assert ArgumentChecker(BASH).repair('{"command": "42"}') == {"command": "42"}


def test_bare_number_where_string_expected():
    assert ArgumentChecker(GREP).repair('{"pattern": 404}') == {"pattern": "404"}


def test_json_string_where_array_expected():
    raw = ('{"todos": "[{\\"content\\": \\"Add tests\\", \\"status\\": \\"pending\\", '
           '\\"activeForm\\": \\"Adding tests\\"}]"}')
    assert ArgumentChecker(TODO_WRITE).repair(raw) == {
        "todos": [{"content": "Add tests", "status": "pending", "activeForm": "Adding tests"}]}


def test_json_string_where_object_expected():
    raw = '{"service": "api", "replicas": 2, "env": "{\\"LOG_LEVEL\\": \\"debug\\"}"}'
    assert ArgumentChecker(DEPLOY).repair(raw) == {"service": "api", "replicas": 2, "env": {"LOG_LEVEL": "debug"}}


def test_ref_and_anyof_are_followed_when_coercing():
    got = ArgumentChecker(DEPLOY).repair('{"service": "web", "replicas": "4", "canary": "10"}')
    assert got == {"service": "web", "replicas": 4, "canary": 10}
    assert ArgumentChecker(DEPLOY).repair('{"service": "web", "replicas": 1, "canary": null}') == \
        {"service": "web", "replicas": 1, "canary": None}


def test_null_for_required_field_is_not_dropped():
    assert ArgumentChecker(READ).repair('{"file_path": null}') is None


# -- still invalid → None -----------------------------------------------------------------------

@pytest.mark.parametrize("raw,schema", [
    ('{"description": "no command"}', BASH),                         # required missing
    ('{"command": "ls", "cwd": "/tmp"}', BASH),                      # additionalProperties false
    ('{"pattern": "x", "output_mode": "lines"}', GREP),              # enum
    ('{"file_path": "/a", "offset": "ten"}', READ),                  # not a number
    ('{"command": "ls", "run_in_background": "maybe"}', BASH),       # not a boolean
    ('{"todos": [{"content": "", "status": "pending", "activeForm": "x"}]}', TODO_WRITE),  # minLength
    ('{"service": "api", "replicas": 0}', DEPLOY),                   # $ref minimum
    ('{"service": "api", "replicas": 1, "canary": 150}', DEPLOY),    # anyOf: neither branch
    ('["ls"]', BASH),                                                # not an object
    ('{"command": ls -la}', BASH),                                   # bare words
    ('', BASH),
    ('I will run ls now.', BASH),
])
def test_still_invalid_returns_none(raw, schema):
    assert ArgumentChecker(schema).repair(raw) is None


def test_draft07_and_draft2020_schemas_both_validate():
    loose = {"$schema": DRAFT7, "type": "object", "properties": {"n": {"type": "integer"}}}
    assert ArgumentChecker(loose).repair('{"n": "5"}') == {"n": 5}
    assert ArgumentChecker(loose).repair('{"n": "five"}') is None
    assert ArgumentChecker(DEPLOY).repair('{"replicas": 2, "service": "db"}') == {"replicas": 2, "service": "db"}


def test_unusable_schema_accepts_the_object_and_logs():
    schema = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    with capture_logs() as logs:
        assert ArgumentChecker(schema).repair('{"a": 1}') == {"a": 1}
    assert any(entry["event"] == "tool_schema_unusable" for entry in logs)


def test_checker_conform_accepts_parsed_values():
    checker = ArgumentChecker(READ)
    assert checker.conform({"file_path": "/a", "limit": "5"}) == {"file_path": "/a", "limit": 5}
    assert checker.conform('{"file_path": "/b"}') == {"file_path": "/b"}
    assert checker.conform(["/a"]) is None
    assert ArgumentChecker(None).conform({"anything": 1}) == {"anything": 1}
