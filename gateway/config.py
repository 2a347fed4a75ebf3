"""config.toml: typed configuration, validated with errors that name the key and its line."""
from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from backends import option_keys, parse_options
from gateway.protocol.backend_config import BACKEND_TYPES, BackendConfig, OptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



class ConfigError(Exception):
    """An invalid config; the message is one paragraph a user can act on."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8082
    auth_token: str | None = None
    max_body_mb: float = 32
    ping_interval_s: float = 5.0
    allow_public: bool = False  # listen on a non-loopback address without auth_token (serve refuses otherwise)
    shutdown_grace_s: float = 30.0  # on SIGTERM/SIGINT, in-flight requests get this long to finish
    # Host names (besides loopback, localhost and the listening address) that requests may name:
    # anything else is refused, so a DNS-rebinding page cannot reach the gateway.
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)  # browser origins allowed to call; none by default
    header_timeout_s: float = 20.0  # a connection must finish its request headers this soon (idle ones close too)
    body_timeout_s: float = 60.0  # a request body must arrive within this long after its headers
    max_connections: int = 512  # open client connections; past it, idle ones are closed first
    tls_cert: str | None = None  # PEM certificate (chain) file: serve HTTPS directly
    tls_key: str | None = None  # PEM private key file of tls_cert


@dataclass
class LogConfig:
    requests: str = "logs/requests.jsonl"
    bodies: bool = True
    level: str = "info"
    rotate_mb: float = 64  # rotate the request log past this size; 0 = never
    keep: int = 5  # rotated files kept (requests.jsonl.1 … .keep)
    gzip: bool = True  # compress rotated files (.1.gz …)


@dataclass
class Config:
    path: Path | None
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    default_backend: str | None = None
    backends: dict[str, BackendConfig] = field(default_factory=dict)
    claude_models: list[str] | None = None  # [routing].claude_models; None: gateway/claude_models.toml

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret: the gateway token and each backend's."""
        out = (self.server.auth_token or "",) + tuple(s for b in self.backends.values() for s in b.secrets())
        return tuple(s for s in out if s)


# Keys each table accepts, with the Python types a value may have.
_SERVER_KEYS = {"host": str, "port": int, "auth_token": str, "max_body_mb": (int, float),
                "ping_interval_s": (int, float), "allow_public": bool, "shutdown_grace_s": (int, float),
                "allowed_hosts": list, "allowed_origins": list, "header_timeout_s": (int, float),
                "body_timeout_s": (int, float), "max_connections": int, "tls_cert": str, "tls_key": str}
_LOG_KEYS = {"requests": str, "bodies": bool, "level": str, "rotate_mb": (int, float), "keep": int, "gzip": bool}
_ROUTING_KEYS = {"default": str, "claude_models": list}
_BACKEND_KEYS = {"type": str, "model": str, "base_url": (str, list), "api_key": str, "api_key_env": str,
                 "timeout_s": (int, float), "context_window": int, "max_output_tokens": int, "vision": bool,
                 "system_messages": str, "extra_body": dict, "model_mapping": dict, "fallback": str, "tool_parser": str,
                 "context_edits": list, "keep_tool_results": int, "fallback_on_overflow": str}
_TYPE_KEYS = option_keys()  # backend type → the keys only it reads (each backend package owns its own)
_BY_TYPE = {key for keys in _TYPE_KEYS.values() for key in keys}
_BACKEND_KEYS.update({key: kinds for keys in _TYPE_KEYS.values() for key, kinds in keys.items()})
_REMOTE_TYPES = ("vllm", "llamacpp", "openai")
_TOOL_PARSERS = ("hermes", "qwen3_coder", "llama3_json", "mistral", "auto", "none")  # backends.tool_parsers.PARSERS
_CONTEXT_EDITS = ("clear_tool_results",)
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SYSTEM_MESSAGE_MODES = ("auto", "keep", "merge", "as_user")  # backends.translate.SYSTEM_MESSAGE_MODES


class _Locator:
    """Finds the line of a key in the TOML text, so errors can point at it."""

    def __init__(self, path: Path | None, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, table: tuple[str, ...], key: str | None = None) -> int | None:
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(_key_pattern(t) for t in table) + r"\s*\]\s*$")
        start = None
        for i, line in enumerate(self.lines):
            if header.match(line):
                start = i
                break
        if key is None:
            return start + 1 if start is not None else None
        key_re = re.compile(r"^\s*" + _key_pattern(key) + r"\s*=")
        dotted = re.compile(r"^\s*" + _key_pattern(table[-1]) + r"\s*\.\s*" + _key_pattern(key) + r"\s*=") if table else None
        begin = start + 1 if start is not None else 0
        for i in range(begin, len(self.lines)):
            line = self.lines[i]
            if i > begin and re.match(r"^\s*\[", line) and start is not None:
                break
            if key_re.match(line) or (dotted and dotted.match(line)):
                return i + 1
        return start + 1 if start is not None else None

    def where(self, table: tuple[str, ...], key: str | None = None) -> str:
        line = self.line_of(table, key)
        name = str(self.path) if self.path else "config"
        return f"{name}:{line}" if line else name


def _key_pattern(key: str) -> str:
    escaped = re.escape(key)
    return rf"(?:{escaped}|\"{escaped}\"|'{escaped}')"


_TOML_NAMES = {bool: "boolean", dict: "table", list: "list"}  # what a config error calls a value's type


def _check_table(data: dict, allowed: dict, table: tuple[str, ...], loc: _Locator) -> None:
    for key, value in data.items():
        dotted = ".".join(table + (key,))
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{loc.where(table, key)}: unknown key '{dotted}'. Known keys here: {known}.")
        if not isinstance(value, allowed[key]) or (allowed[key] is int and isinstance(value, bool)):
            kinds = allowed[key]
            expected = (_TOML_NAMES.get(kinds, kinds.__name__) if isinstance(kinds, type)
                        else "number" if kinds == (int, float)
                        else " or a ".join(_TOML_NAMES.get(k, k.__name__) for k in kinds))
            raise ConfigError(f"{loc.where(table, key)}: '{dotted}' must be a {expected}, got {value!r}.")


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file; raises ConfigError with file:line on any problem."""
    p = Path(path) if path else Path("config.toml")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {p} not found. Pass --config PATH, or copy the config.toml "
                          "shipped with claude-gateway next to where you run it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {p} cannot be read: {exc}.") from None
    return parse_config(text, p)


def parse_config(text: str, path: Path | None = None) -> Config:
    """Validate TOML text into a Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'config'}: not valid TOML: {exc}.") from None
    loc = _Locator(path, text)
    top = {"server": dict, "log": dict, "routing": dict, "backends": dict}
    _check_table(data, top, (), loc)
    cfg = Config(path=path)

    server = data.get("server", {})
    _check_table(server, _SERVER_KEYS, ("server",), loc)
    cfg.server = ServerConfig(**{k: v for k, v in server.items()})
    if (problem := port_problem(cfg.server.port)) is not None:
        raise ConfigError(f"{loc.where(('server',), 'port')}: 'server.port' {problem}.")
    for key in ("header_timeout_s", "body_timeout_s", "max_connections"):
        if getattr(cfg.server, key) <= 0:
            raise ConfigError(f"{loc.where(('server',), key)}: 'server.{key}' must be positive.")
    cfg.server.allowed_hosts = [_allowed_host(h, loc) for h in cfg.server.allowed_hosts]
    cfg.server.allowed_origins = [_allowed_origin(o, loc) for o in cfg.server.allowed_origins]
    if cfg.server.max_body_mb <= 0:
        raise ConfigError(f"{loc.where(('server',), 'max_body_mb')}: 'server.max_body_mb' must be positive.")
    if cfg.server.ping_interval_s <= 0:
        raise ConfigError(f"{loc.where(('server',), 'ping_interval_s')}: 'server.ping_interval_s' must be positive.")
    if cfg.server.shutdown_grace_s < 0:
        raise ConfigError(f"{loc.where(('server',), 'shutdown_grace_s')}: 'server.shutdown_grace_s' must be 0 or more.")
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        given, missing = ("tls_cert", "tls_key") if cfg.server.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(f"{loc.where(('server',), given)}: 'server.{given}' is set but 'server.{missing}' is "
                          "not; HTTPS needs both the certificate and its private key (PEM files).")
    env_token = os.environ.get("GATEWAY_AUTH_TOKEN")
    if env_token:
        cfg.server.auth_token = env_token
    if cfg.server.auth_token == "":
        cfg.server.auth_token = None

    log = data.get("log", {})
    _check_table(log, _LOG_KEYS, ("log",), loc)
    cfg.log = LogConfig(**log)
    if cfg.log.level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"{loc.where(('log',), 'level')}: 'log.level' must be one of {', '.join(_LOG_LEVELS)}.")
    if cfg.log.rotate_mb < 0:
        raise ConfigError(f"{loc.where(('log',), 'rotate_mb')}: 'log.rotate_mb' must be 0 (no rotation) or positive.")
    if cfg.log.keep < 0:
        raise ConfigError(f"{loc.where(('log',), 'keep')}: 'log.keep' must be 0 or more.")

    backends = data.get("backends", {})
    for name, table in backends.items():
        cfg.backends[name] = _backend(name, table, loc)
    if not cfg.backends:
        raise ConfigError(f"{path or 'config'}: no backends configured. Add a [backends.NAME] table "
                          "with type = \"openai\" (or vllm, llamacpp, mlx) and its base_url or model.")

    routing = data.get("routing", {})
    _check_table(routing, _ROUTING_KEYS, ("routing",), loc)
    cfg.default_backend = routing.get("default")
    if "claude_models" in routing:
        ids = routing["claude_models"]
        if not all(isinstance(i, str) and i for i in ids):
            raise ConfigError(f"{loc.where(('routing',), 'claude_models')}: 'routing.claude_models' must be a list "
                              "of model ids (non-empty strings), e.g. [\"claude-sonnet-4-6\"].")
        cfg.claude_models = list(ids)
    _check_fallbacks(cfg, loc)
    for name, bcfg in cfg.backends.items():
        target = bcfg.fallback_on_overflow
        if target is not None and (target not in cfg.backends or target == name):
            raise ConfigError(f"{loc.where(('backends', name), 'fallback_on_overflow')}: "
                              f"'backends.{name}.fallback_on_overflow' must name another backend; "
                              f"{target!r} is not one. Defined: {', '.join(cfg.backends)}.")
    if cfg.default_backend is not None and cfg.default_backend not in cfg.backends:
        raise ConfigError(f"{loc.where(('routing',), 'default')}: 'routing.default' names backend "
                          f"'{cfg.default_backend}', which is not defined. Defined: {', '.join(cfg.backends)}.")
    return cfg


def _check_fallbacks(cfg: Config, loc: _Locator) -> None:
    """Every `fallback` names a defined backend, and no chain comes back to where it started."""
    for name, b in cfg.backends.items():
        if b.fallback is None:
            continue
        where = loc.where(("backends", name), "fallback")
        if b.fallback not in cfg.backends:
            raise ConfigError(f"{where}: 'backends.{name}.fallback' names backend '{b.fallback}', which is not "
                              f"defined. Defined: {', '.join(cfg.backends)}.")
        chain: list[str] = [name]
        at: str | None = b.fallback
        while at is not None:
            if at in chain:
                raise ConfigError(f"{where}: the fallback chain {' -> '.join(chain + [at])} is a loop; "
                                  "end it at a backend without 'fallback'.")
            chain.append(at)
            at = cfg.backends[at].fallback


def port_problem(port: int) -> str | None:
    """Why `port` cannot be listened on (the same rule for server.port and --port), or None."""
    return None if 0 < port < 65536 else f"must be between 1 and 65535, got {port}"


def _allowed_host(value: Any, loc: _Locator) -> str:
    where = loc.where(("server",), "allowed_hosts")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: 'server.allowed_hosts' entries must be non-empty host names, got {value!r}.")
    host = value.strip().lower().rstrip(".")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "/" in bare or (":" in bare and not _is_ipv6(bare)):
        raise ConfigError(f"{where}: 'server.allowed_hosts' entry {value!r} must be a host name or address "
                          "without scheme or port, e.g. \"gateway.lan\" (any port is accepted).")
    return bare


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _allowed_origin(value: Any, loc: _Locator) -> str:
    where = loc.where(("server",), "allowed_origins")
    origin = value.strip().lower().rstrip("/") if isinstance(value, str) else ""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise ConfigError(f"{where}: 'server.allowed_origins' entries must be origins as browsers send them, "
                          f"scheme://host[:port] with no path, e.g. \"http://localhost:3000\"; got {value!r}.")
    return origin


def _glob_problem(key: str) -> str | None:
    """Why a model_mapping key cannot be used as a name or glob, or None."""
    if not key.strip():
        return "is empty"
    i = 0
    while (i := key.find("[", i)) != -1:
        # fnmatch: '[' opens a class closed by the next ']' (one right after '[' or '[!' is literal)
        j = i + 1 + (key[i + 1:i + 2] == "!")
        j += key[j:j + 1] == "]"
        end = key.find("]", j)
        if end == -1:
            return f"has a '[' at position {i + 1} that no ']' closes (a glob character class)"
        i = end + 1
    return None


def _backend(name: str, table: Any, loc: _Locator) -> BackendConfig:
    where = ("backends", name)
    if not isinstance(table, dict):
        raise ConfigError(f"{loc.where(('backends',), name)}: 'backends.{name}' must be a table.")
    _check_table(table, _BACKEND_KEYS, where, loc)
    kind = table.get("type")
    if kind not in BACKEND_TYPES:
        raise ConfigError(f"{loc.where(where, 'type' if kind else None)}: 'backends.{name}.type' must be one of "
                          f"{', '.join(BACKEND_TYPES)}" + (f", got {kind!r}." if kind else " (missing)."))
    mapping = table.get("model_mapping", {})
    for key, value in mapping.items():
        if (problem := _glob_problem(key)) is not None:
            raise ConfigError(f"{loc.where(where + ('model_mapping',), key)}: 'backends.{name}.model_mapping' key "
                              f"{key!r} {problem}; keys are exact model names or globs such as \"claude-*\".")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{loc.where(where + ('model_mapping',), key)}: 'backends.{name}.model_mapping.{key}' "
                              "must be a non-empty string (the backend model).")
    if kind in _REMOTE_TYPES and not table.get("base_url"):
        raise ConfigError(f"{loc.where(where)}: backend '{name}' (type {kind}) needs 'base_url', "
                          "e.g. base_url = \"http://127.0.0.1:8000\".")
    urls = _base_urls(name, kind, table.get("base_url"), loc) if "base_url" in table else []
    if kind == "mlx" and not table.get("model"):
        raise ConfigError(f"{loc.where(where)}: backend '{name}' (type mlx) needs 'model': a Hugging Face id "
                          "or a local path.")
    for other, keys in _TYPE_KEYS.items():
        for key in keys:
            if other != kind and key in table:
                raise ConfigError(f"{loc.where(where, key)}: 'backends.{name}.{key}' only applies to type = "
                                  f"\"{other}\" backends; backend '{name}' is type {kind}.")
    try:
        options = parse_options(kind, name, table, [table.get("model") or "", *mapping.values()])
    except OptionError as exc:
        raise ConfigError(f"{loc.where(where, exc.key)}: {exc.message}") from None
    if "tool_parser" in table and table["tool_parser"].strip().lower().replace("-", "_") not in _TOOL_PARSERS:
        raise ConfigError(f"{loc.where(where, 'tool_parser')}: 'backends.{name}.tool_parser' must be one of "
                          f"{', '.join(_TOOL_PARSERS)}, got {table['tool_parser']!r}.")
    if "system_messages" in table and table["system_messages"] not in _SYSTEM_MESSAGE_MODES:
        raise ConfigError(f"{loc.where(where, 'system_messages')}: 'backends.{name}.system_messages' must be one of "
                          f"{', '.join(_SYSTEM_MESSAGE_MODES)}, got {table['system_messages']!r}.")
    for edit in table.get("context_edits", []):
        if edit not in _CONTEXT_EDITS:
            raise ConfigError(f"{loc.where(where, 'context_edits')}: 'backends.{name}.context_edits' entries must be "
                              f"one of {', '.join(_CONTEXT_EDITS)}, got {edit!r}.")
    if table.get("keep_tool_results", 0) < 0:
        raise ConfigError(f"{loc.where(where, 'keep_tool_results')}: 'backends.{name}.keep_tool_results' "
                          "must be 0 or more.")
    for key in ("timeout_s", "context_window", "max_output_tokens"):
        if key in table and table[key] <= 0:
            raise ConfigError(f"{loc.where(where, key)}: 'backends.{name}.{key}' must be positive.")
    if table.get("fallback") == name:
        raise ConfigError(f"{loc.where(where, 'fallback')}: 'backends.{name}.fallback' names the backend itself; "
                          "name another backend.")
    fields = {k: v for k, v in table.items() if k not in ("model_mapping", "base_url") and k not in _BY_TYPE}
    split = [_split_credentials(u) for u in urls]
    auths = [auth for _, auth in split]
    if any(a is not None for a in auths) and (table.get("api_key") or table.get("api_key_env")):
        raise ConfigError(f"{loc.where(where, 'base_url')}: backend '{name}' has both credentials in "
                          "'base_url' (user:password@) and an API key; the server gets one Authorization "
                          "header, so keep one of them.")
    stripped = [u for u, _ in split]
    return BackendConfig(name=name, model_mapping=dict(mapping), base_url=stripped[0] if stripped else None,
                         base_urls=stripped, url_auths=auths, url_auth=auths[0] if auths else None, options=options,
                         **fields)


def _base_urls(name: str, kind: str, value: Any, loc: _Locator) -> list[str]:
    """base_url as a list of replica URLs (one string is a pool of one), each validated."""
    where = loc.where(("backends", name), "base_url")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: 'backends.{name}.base_url' is an empty list; give one URL or several, e.g. "
                          "base_url = [\"http://10.0.0.5:8000\", \"http://10.0.0.6:8000\"].")
    seen: set[str] = set()
    out = []
    for url in values:
        if not isinstance(url, str):
            raise ConfigError(f"{where}: 'backends.{name}.base_url' entries must be strings, got {url!r}.")
        if kind in _REMOTE_TYPES:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{where}: 'backends.{name}.base_url' must be an http:// or https:// URL with a "
                                  f"host, e.g. \"http://127.0.0.1:8000\"; got {_without_userinfo(url)!r}.")
        key = _split_credentials(url.strip())[0].rstrip("/").removesuffix("/v1")
        if key in seen:
            raise ConfigError(f"{where}: 'backends.{name}.base_url' lists {_without_userinfo(url)!r} twice.")
        seen.add(key)
        out.append(url.strip())
    return out


def _without_userinfo(url: str) -> str:
    """`url` as an error message may show it: anything before an '@' in its authority is a credential."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)?[^/@]*@", r"\1[REDACTED]@", url, flags=re.IGNORECASE)


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`url` without its user:password@ part, and that part (percent-decoded), sent as Basic auth."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    stripped = urlunsplit(parts._replace(netloc=host))
    return stripped, ((unquote(user), unquote(password)) if user or password else None)
