"""A Claude-Code-shaped /v1/messages request for the benchmark (~85 KB, 25 tools, 30-turn history).

Shapes follow shared/claude-code-traffic.md: three system blocks (the per-request
x-anthropic-billing-header first), 25 tools with name/description/input_schema only, user text
with cache_control, tool_use/tool_result round trips, a role:system message mid-conversation,
metadata.user_id as a JSON string, thinking adaptive, max_tokens 64000, stream true. The text is
deterministic (no randomness) so every run sends the same bytes.
"""
from __future__ import annotations

import orjson

SESSION_ID = "4f1c2a9e-7b3d-4c55-9a10-2e6f8b7d3c21"
DEVICE_ID = "9b2e" * 16
EPHEMERAL = {"type": "ephemeral"}
SCHEMA = "http://json-schema.org/draft-07/schema#"

_GUIDANCE = [
    "Always prefer the dedicated tool over a shell command when one exists; it is faster and its output is "
    "easier for the user to review.",
    "When several independent calls are needed, send them in one message so they run in parallel.",
    "Quote file paths that contain spaces with double quotes, and use absolute paths, never relative ones.",
    "Do not use this tool to communicate with the user; all text you output outside of tool use is shown to them.",
    "If the output exceeds 30000 characters it is truncated before being returned to you.",
    "Never create files unless they are necessary for achieving the goal; prefer editing an existing file.",
    "Respect the project's conventions: look at neighbouring files, imports and tests before changing code.",
    "Results are returned in the order they were produced; an empty result means nothing matched.",
    "The user can see the tool call and its result, so there is no need to repeat the result verbatim.",
    "When the task is ambiguous, ask a clarifying question instead of guessing.",
    "Avoid destructive operations (rm -rf, git reset --hard, force pushes) unless the user asked for them.",
    "Keep each call focused: one logical step per call makes failures easier to diagnose and retry.",
]


def _description(summary: str, notes: int) -> str:
    bullets = "\n".join(f"- {_GUIDANCE[i % len(_GUIDANCE)]}" for i in range(notes))
    return f"{summary}\n\nUsage notes:\n{bullets}\n"


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False,
            "$schema": SCHEMA}


def _s(desc: str, **kw) -> dict:
    return {"type": "string", "description": desc, **kw}


def _n(desc: str) -> dict:
    return {"type": "number", "description": desc}


def _b(desc: str) -> dict:
    return {"type": "boolean", "description": desc}


# name → (summary, input_schema); descriptions get usage notes appended to reach the target size.
_TOOLS: list[tuple[str, str, dict]] = [
    ("Agent", "Launch a new agent to handle complex, multi-step tasks autonomously. Each agent type has "
     "specific capabilities and tools available to it: general-purpose (all tools), Explore (read-only search), "
     "Plan (designs an implementation plan), statusline-setup and output-style-setup.",
     _schema({"description": _s("A short (3-5 word) description of the task"),
              "prompt": _s("The task for the agent to perform"),
              "subagent_type": _s("The type of specialized agent to use for this task"),
              "model": _s("Optional model override", enum=["sonnet", "opus", "haiku"]),
              "run_in_background": _b("Run the agent in the background and get notified when it finishes")},
             ["description", "prompt"])),
    ("Bash", "Executes a given bash command in a persistent shell session with optional timeout, ensuring "
     "proper handling and security measures. Before executing, verify the parent directory exists; always "
     "quote paths with spaces. Commit and pull-request workflows are described below.",
     _schema({"command": _s("The command to execute"),
              "timeout": _n("Optional timeout in milliseconds (max 600000)"),
              "description": _s("Clear, concise description of what this command does in 5-10 words"),
              "run_in_background": _b("Set to true to run this command in the background"),
              "dangerouslyDisableSandbox": _b("Set this to true to dangerously override sandbox mode")},
             ["command"])),
    ("Glob", "Fast file pattern matching tool that works with any codebase size. Supports glob patterns like "
     "\"**/*.js\" or \"src/**/*.ts\" and returns matching file paths sorted by modification time.",
     _schema({"pattern": _s("The glob pattern to match files against"),
              "path": _s("The directory to search in. Defaults to the current working directory.")}, ["pattern"])),
    ("Grep", "A powerful search tool built on ripgrep. Supports full regex syntax, filtering files with glob or "
     "type, and output modes content, files_with_matches and count.",
     _schema({"pattern": _s("The regular expression pattern to search for in file contents"),
              "path": _s("File or directory to search in"), "glob": _s("Glob pattern to filter files"),
              "output_mode": _s("Output mode", enum=["content", "files_with_matches", "count"]),
              "-B": _n("Lines to show before each match"), "-A": _n("Lines to show after each match"),
              "-C": _n("Lines of context"), "-n": _b("Show line numbers"), "-i": _b("Case insensitive search"),
              "type": _s("File type to search (js, py, rust, go, java, ...)"),
              "head_limit": _n("Limit output to the first N lines/entries"),
              "multiline": _b("Enable multiline mode where . matches newlines")}, ["pattern"])),
    ("ExitPlanMode", "Use this tool when you are in plan mode and have finished presenting your plan and are "
     "ready to code. This will prompt the user to exit plan mode.",
     _schema({"plan": _s("The plan you came up with, that you want to run by the user for approval")}, ["plan"])),
    ("EnterPlanMode", "Switch into plan mode to research and design before making changes.", _schema({}, [])),
    ("Read", "Reads a file from the local filesystem. You can access any file directly by using this tool. "
     "By default it reads up to 2000 lines starting from the beginning of the file; lines are numbered "
     "cat -n style. It can read images, PDFs and Jupyter notebooks.",
     _schema({"file_path": _s("The absolute path to the file to read"),
              "offset": _n("The line number to start reading from"),
              "limit": _n("The number of lines to read")}, ["file_path"])),
    ("Edit", "Performs exact string replacements in files. You must use your Read tool at least once in the "
     "conversation before editing. The edit will FAIL if old_string is not unique in the file.",
     _schema({"file_path": _s("The absolute path to the file to modify"),
              "old_string": _s("The text to replace"),
              "new_string": _s("The text to replace it with (must be different from old_string)"),
              "replace_all": {"type": "boolean", "default": False,
                              "description": "Replace all occurences of old_string (default false)"}},
             ["file_path", "old_string", "new_string"])),
    ("Write", "Writes a file to the local filesystem. This tool will overwrite the existing file if there is "
     "one at the provided path. If this is an existing file, you MUST use the Read tool first.",
     _schema({"file_path": _s("The absolute path to the file to write (must be absolute, not relative)"),
              "content": _s("The content to write to the file")}, ["file_path", "content"])),
    ("NotebookEdit", "Completely replaces the contents of a specific cell in a Jupyter notebook (.ipynb file) "
     "with new source.",
     _schema({"notebook_path": _s("The absolute path to the Jupyter notebook file to edit"),
              "cell_id": _s("The ID of the cell to edit"), "new_source": _s("The new source for the cell"),
              "cell_type": _s("The type of the cell", enum=["code", "markdown"]),
              "edit_mode": _s("The type of edit to make", enum=["replace", "insert", "delete"])},
             ["notebook_path", "new_source"])),
    ("WebFetch", "Fetches content from a specified URL and processes it using an AI model. Takes a URL and a "
     "prompt as input, fetches the URL content, converts HTML to markdown and answers the prompt.",
     _schema({"url": _s("The URL to fetch content from", format="uri"),
              "prompt": _s("The prompt to run on the fetched content")}, ["url", "prompt"])),
    ("WebSearch", "Allows Claude to search the web and use the results to inform responses. Provides up-to-date "
     "information for current events and recent data.",
     _schema({"query": _s("The search query to use", minLength=2),
              "allowed_domains": {"type": "array", "items": {"type": "string"},
                                  "description": "Only include search results from these domains"},
              "blocked_domains": {"type": "array", "items": {"type": "string"},
                                  "description": "Never include search results from these domains"}}, ["query"])),
    ("TodoWrite", "Use this tool to create and manage a structured task list for your current coding session. "
     "This helps you track progress, organize complex tasks, and demonstrate thoroughness to the user.",
     _schema({"todos": {"type": "array", "description": "The updated todo list", "items": {
         "type": "object", "additionalProperties": False, "required": ["content", "status", "activeForm"],
         "properties": {"content": {"type": "string", "minLength": 1},
                        "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                        "activeForm": {"type": "string", "minLength": 1}}}}}, ["todos"])),
    ("BashOutput", "Retrieves output from a running or completed background bash shell.",
     _schema({"bash_id": _s("The ID of the background shell to retrieve output from"),
              "filter": _s("Optional regular expression to filter the output lines")}, ["bash_id"])),
    ("KillShell", "Kills a running background bash shell by its ID.",
     _schema({"shell_id": _s("The ID of the background shell to kill")}, ["shell_id"])),
    ("AskUserQuestion", "Use this tool when you need to ask the user questions during execution, to gather "
     "preferences, clarify ambiguous instructions or get decisions on implementation choices.",
     _schema({"questions": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
         "type": "object", "additionalProperties": False, "required": ["question", "header", "options", "multiSelect"],
         "properties": {"question": {"type": "string"}, "header": {"type": "string"},
                        "multiSelect": {"type": "boolean"},
                        "options": {"type": "array", "minItems": 2, "maxItems": 4, "items": {
                            "type": "object", "additionalProperties": False, "required": ["label", "description"],
                            "properties": {"label": {"type": "string"}, "description": {"type": "string"}}}}}}}},
             ["questions"])),
    ("Skill", "Execute a skill within the main conversation. Skills provide specialized capabilities and "
     "domain knowledge.", _schema({"skill": _s("The skill name (no arguments)")}, ["skill"])),
    ("TaskCreate", "Create a background task that runs a prompt with its own context and reports back.",
     _schema({"title": _s("Short title of the task"), "prompt": _s("What the task should do"),
              "priority": _s("Priority", enum=["low", "normal", "high"])}, ["title", "prompt"])),
    ("TaskGet", "Get the state and latest output of a background task.",
     _schema({"task_id": _s("The task id returned by TaskCreate")}, ["task_id"])),
    ("TaskList", "List background tasks with their states.",
     _schema({"status": _s("Only tasks in this state", enum=["running", "done", "failed", "all"])}, [])),
    ("TaskUpdate", "Update a background task's prompt or priority.",
     _schema({"task_id": _s("The task id"), "prompt": _s("New prompt"), "priority": _s("New priority")},
             ["task_id"])),
    ("TaskStop", "Stop a running background task.", _schema({"task_id": _s("The task id")}, ["task_id"])),
    ("CronCreate", "Schedule a prompt to run on a cron schedule in this project.",
     _schema({"schedule": _s("A cron expression, e.g. '0 9 * * 1-5'"), "prompt": _s("The prompt to run"),
              "name": _s("A name for the job")}, ["schedule", "prompt"])),
    ("CronList", "List the scheduled prompts of this project.", _schema({}, [])),
    ("CronDelete", "Delete a scheduled prompt by name.", _schema({"name": _s("The job's name")}, ["name"])),
]

_SYSTEM_MAIN = (
    "You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions "
    "below and the tools available to you to assist the user.\n\n"
    "IMPORTANT: Assist with authorized security testing, defensive security, CTF challenges, and educational "
    "contexts. Refuse requests for destructive techniques.\n\n"
    "# Tone and style\nYou should be concise, direct, and to the point. Your output will be displayed on a "
    "command line interface; use GitHub-flavored markdown. Only use emojis if the user explicitly requests it.\n\n"
    "# Doing tasks\nThe user will primarily request you perform software engineering tasks: solving bugs, "
    "adding functionality, refactoring code, explaining code. Use the TodoWrite tool to plan the task if "
    "required, use the search tools extensively to understand the codebase, implement the solution, verify it "
    "with the project's tests, and run the lint and typecheck commands if they were provided.\n\n"
)


def _system_main(target: int = 5700) -> str:
    text = _SYSTEM_MAIN
    i = 0
    while len(text) < target:
        text += f"# Guideline {i + 1}\n{_GUIDANCE[i % len(_GUIDANCE)]}\n\n"
        i += 1
    return text + "<env>\nWorking directory: /home/dev/project\nIs directory a git repo: Yes\nPlatform: linux\n</env>"


def _file_listing(n: int) -> str:
    lines = [f"{i + 1:>6}\u2192def handler_{n}_{i}(request, config):\n"
             f"{i + 2:>6}\u2192    \"\"\"Handle step {i} of the pipeline for item {n}.\"\"\"\n"
             f"{i + 3:>6}\u2192    return process(request.body, timeout=config.timeout_s * {i + 1})"
             for i in range(0, 27, 3)]
    return "\n".join(lines)


def _tool_round(n: int) -> tuple[dict, dict]:
    """One assistant tool_use and the user's tool_result (Read, Grep, Bash, Edit in turn)."""
    tid = f"toolu_01{n:04d}bench{n * 7919 % 100000:05d}ABCDEFGH"
    kind = n % 4
    if kind == 0:
        name, inp, result = "Read", {"file_path": f"/home/dev/project/src/module_{n}.py"}, _file_listing(n)
    elif kind == 1:
        name, inp = "Grep", {"pattern": f"def handler_{n}", "path": "/home/dev/project/src", "output_mode": "content",
                             "-n": True}
        result = "\n".join(f"src/module_{n}.py:{i * 3 + 1}:def handler_{n}_{i}(request, config):" for i in range(12))
    elif kind == 2:
        name, inp = "Bash", {"command": "uv run pytest -q tests/test_pipeline.py", "description": "Run pipeline tests"}
        result = ("." * 40 + "F" + "." * 19 + "\n=== FAILURES ===\n___ test_handler_timeout ___\n"
                  f"    assert handler_{n}_3(req, cfg) == expected\nE   AssertionError: timeout 4.0 != 3.0\n"
                  "1 failed, 59 passed in 2.31s")
    else:
        name, inp = "Edit", {"file_path": f"/home/dev/project/src/module_{n - 1}.py",
                             "old_string": "timeout=config.timeout_s * 4", "new_string": "timeout=config.timeout_s * 3"}
        result = f"The file /home/dev/project/src/module_{n - 1}.py has been updated. Here's the result:\n" + \
            _file_listing(n - 1)[:600]
    text = [{"type": "text", "text": f"Step {n}: I'll use {name} to check the {'code' if kind != 2 else 'tests'}."}]
    assistant = {"role": "assistant", "content": text + [{"type": "tool_use", "id": tid, "name": name, "input": inp}]}
    user = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": result}]}
    return assistant, user


def build_request(turns: int = 30, target_bytes: int = 85_000, model: str = "claude-opus-4-8") -> dict:
    """The request body; tool descriptions grow until the JSON reaches `target_bytes`."""
    messages: list[dict] = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
                                 "following context:\n# claudeMd\nContents of /home/dev/project/CLAUDE.md:\n\n"
                                 "Run tests with `uv run pytest -q`. Keep modules small.\n</system-reminder>"},
        {"type": "text", "text": "The pipeline tests fail with a timeout mismatch; find the cause and fix it.",
         "cache_control": EPHEMERAL}]}]
    for n in range(turns):
        assistant, user = _tool_round(n)
        if n == turns - 2:
            # Adaptive thinking: the latest assistant turns carry signed thinking blocks back.
            assistant["content"].insert(0, {"type": "thinking", "thinking": "The timeout multiplier is off by one; "
                                            "the Edit fixes module_28 so the test should pass now.",
                                            "signature": "EqQBCkYIBxgCKkB" + "x" * 180})
        messages += [assistant, user]
        if n == turns // 2:
            messages.append({"role": "system", "content": "<system-reminder>The user changed plan mode off. "
                                                          "Continue with the task.</system-reminder>"})
    # The breakpoint goes on the newest user turn (a system reminder may come after it when turns is small).
    last_user = next(m for m in reversed(messages) if m["role"] == "user")
    last_user["content"][-1]["cache_control"] = EPHEMERAL
    body = {
        "model": model,
        "max_tokens": 64000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": orjson.dumps({"device_id": DEVICE_ID, "account_uuid": "",
                                              "session_id": SESSION_ID}).decode()},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.d71; cc_entrypoint=sdk-cli; "
                                     "cch=3fa21;"},
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": EPHEMERAL},
            {"type": "text", "text": _system_main(), "cache_control": EPHEMERAL},
        ],
        "messages": messages,
        "tools": [],
    }
    notes = 1
    while True:
        body["tools"] = [{"name": name, "description": _description(summary, notes), "input_schema": schema}
                         for name, summary, schema in _TOOLS]
        if len(orjson.dumps(body)) >= target_bytes or notes > 500:
            return body
        notes += 1


def claude_code_headers(token: str) -> dict[str, str]:
    """The headers Claude Code 2.1.x sends with /v1/messages."""
    return {
        "Authorization": f"Bearer {token}",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,"
                          "thinking-token-count-2026-05-13,context-management-2025-06-27,"
                          "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24",
        "X-Claude-Code-Session-Id": SESSION_ID,
        "x-app": "cli",
        "X-Stainless-Timeout": "600",
        "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


if __name__ == "__main__":
    b = build_request()
    raw = orjson.dumps(b)
    print(f"{len(raw)} bytes, {len(b['tools'])} tools, {len(b['messages'])} messages, "
          f"tools {len(orjson.dumps(b['tools']))} bytes")
