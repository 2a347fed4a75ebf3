"""Tool input_schemas shaped like the ones Claude Code sends (draft-07, additionalProperties false)."""
from __future__ import annotations

DRAFT7 = "http://json-schema.org/draft-07/schema#"
DRAFT2020 = "https://json-schema.org/draft/2020-12/schema"


def _tool(properties: dict, required: list[str], draft: str = DRAFT7) -> dict:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False, "$schema": draft}


BASH = _tool({
    "command": {"type": "string", "description": "The command to execute"},
    "timeout": {"type": "number", "description": "Optional timeout in milliseconds (max 600000)"},
    "description": {"type": "string", "description": "Clear, concise description of what this command does"},
    "run_in_background": {"type": "boolean", "description": "Set to true to run this command in the background."},
}, ["command"])

READ = _tool({
    "file_path": {"type": "string", "description": "The absolute path to the file to read"},
    "offset": {"type": "number", "description": "The line number to start reading from."},
    "limit": {"type": "number", "description": "The number of lines to read."},
}, ["file_path"])

WRITE = _tool({
    "file_path": {"type": "string", "description": "The absolute path to the file to write"},
    "content": {"type": "string", "description": "The content to write to the file"},
}, ["file_path", "content"])

EDIT = _tool({
    "file_path": {"type": "string"},
    "old_string": {"type": "string", "description": "The text to replace"},
    "new_string": {"type": "string", "description": "The text to replace it with"},
    "replace_all": {"type": "boolean", "default": False},
}, ["file_path", "old_string", "new_string"])

GREP = _tool({
    "pattern": {"type": "string"},
    "path": {"type": "string"},
    "glob": {"type": "string"},
    "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
    "-i": {"type": "boolean"},
    "-n": {"type": "boolean"},
    "head_limit": {"type": "number"},
}, ["pattern"])

TODO_WRITE = _tool({
    "todos": {"type": "array", "description": "The updated todo list", "items": {
        "type": "object",
        "properties": {
            "content": {"type": "string", "minLength": 1},
            "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
            "activeForm": {"type": "string", "minLength": 1},
        },
        "required": ["content", "status", "activeForm"],
        "additionalProperties": False,
    }},
}, ["todos"])

# An MCP-style tool on draft 2020-12 with $defs / $ref and a nullable field.
DEPLOY = _tool({
    "service": {"type": "string"},
    "replicas": {"$ref": "#/$defs/count"},
    "canary": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}]},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
}, ["service", "replicas"], draft=DRAFT2020) | {"$defs": {"count": {"type": "integer", "minimum": 1}}}

GET_WEATHER = _tool({
    "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
}, ["location"])

TOOLS = {"Bash": BASH, "Read": READ, "Write": WRITE, "Edit": EDIT, "Grep": GREP,
         "TodoWrite": TODO_WRITE, "deploy": DEPLOY, "get_weather": GET_WEATHER}
