"""The package import rule (README, Development): the protocol core imports neither the web layer
nor any backend; backends build on the protocol core only; the web layer reaches backends through
the `backends` factory alone. Checked on the source with `ast`, so a violation anywhere in a module
(a function-level import included) fails here, not in review."""
from __future__ import annotations

import ast
from pathlib import Path

import backends

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> list[str]:
    """Every absolute module name `source` imports (`from a.b import c` counts a.b and a.b.c)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{alias.name}" for alias in node.names]
    return out


# What the web layer may import of backends: the package and the functions it exports.
_FACADE = ("backends", *(f"backends.{n}" for n in backends.__all__))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, source: str) -> list[str]:
    """The imports of `module` (a dotted name) that break the rule, as 'module -> import' lines."""
    bad = []
    for name in imported_modules(source):
        if _within(module, "gateway.protocol"):
            broken = _within(name, "backends") or _within(name, "demo_model") or (
                _within(name, "gateway") and not _within(name, "gateway.protocol") and name != "gateway")
        elif _within(module, "backends"):
            broken = _within(name, "gateway") and not _within(name, "gateway.protocol") and name != "gateway"
        elif _within(module, "gateway"):
            # The package's factory functions only: a backend's internals stay behind the Backend interface.
            broken = _within(name, "backends") and name not in _FACADE
        else:
            broken = False
        if broken:
            bad.append(f"{module} -> {name}")
    return bad


def _modules():
    for package in ("gateway", "backends", "demo_model"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path.read_text(encoding="utf-8")


def test_the_import_rule_holds_for_every_module():
    found = [v for module, source in _modules() for v in violations(module, source)]
    assert found == []


def test_the_protocol_core_exists_and_holds_the_backend_interface():
    modules = dict(_modules())
    for name in ("gateway.protocol.anthropic", "gateway.protocol.events", "gateway.protocol.backend",
                 "gateway.protocol.errors"):
        assert name in modules


def test_the_checker_catches_each_kind_of_violation():
    # A rule checker that cannot fail checks nothing: each forbidden edge, also inside a function.
    assert violations("gateway.protocol.events", "from gateway.messages import x") == [
        "gateway.protocol.events -> gateway.messages", "gateway.protocol.events -> gateway.messages.x"]
    assert violations("gateway.protocol.backend", "def f():\n    import backends.openai\n") == [
        "gateway.protocol.backend -> backends.openai"]
    assert violations("backends.openai", "from gateway.config import Config") != []
    assert violations("backends.mlx.engine", "from gateway import server") == ["backends.mlx.engine -> gateway.server"]
    assert violations("gateway.messages", "from backends.mlx.engine import Engine") != []
    assert violations("gateway.app_state", "from backends import create_backend") == []
    assert violations("gateway.config", "from backends import option_keys, parse_options") == []
    assert violations("gateway.config", "from backends.mlx.options import KEYS") != []
    assert violations("backends.vllm", "from gateway.protocol.errors import GatewayError") == []


def test_the_request_log_writes_exactly_the_shared_schema():
    # Readers in tools/ rely on gateway.protocol.log_schema; the writer must not drift from it.
    from typing import get_type_hints

    from gateway.protocol.errors import ErrorInfo
    from gateway.protocol.log_schema import FIELDS, REQUIRED_FIELDS, LogLine
    from gateway.outcome import RequestOutcome
    from gateway.reqlog import log_line

    assert set(get_type_hints(LogLine)) == set(FIELDS)
    bare = RequestOutcome(request_id="req_1", method="POST", path="/v1/messages")
    assert tuple(log_line(bare, with_body=False))[:len(REQUIRED_FIELDS)] == REQUIRED_FIELDS
    full = RequestOutcome(request_id="req_1", method="POST", path="/v1/messages", error=ErrorInfo("api_error", "x"),
                          raw_path="/x", headers={}, body_bytes=1, prefill_tps=1.0, decode_tps=1.0,
                          peak_memory_mb=1.0, unknown_blocks=[], replica="r", context_edits=[], fallback={})
    assert tuple(log_line(full, with_body=True)) == FIELDS


def test_the_log_tools_read_only_schema_fields():
    import re

    from gateway.protocol.log_schema import FIELDS

    read = set()
    for name in ("logread", "replay", "logstats"):
        text = (ROOT / "tools" / f"{name}.py").read_text()
        read |= set(re.findall(r'(?:\brec\.get\(|\brec\[|(?<![.\w])get\()"([a-z_]+)"', text))
    assert {"request_id", "status", "error"} <= read  # the scan finds what the tools read
    assert read - set(FIELDS) == set()
