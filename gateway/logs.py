"""structlog set-up: key=value lines on a terminal, JSON lines otherwise; one line per event, never
a traceback (aiohttp's and asyncio's own log records included)."""
from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import Any

import structlog
from aiohttp import http_exceptions
from structlog.typing import EventDict

from gateway.protocol.redact import scrub
from gateway.terminal import escape_controls


def _escape_for_terminal(_logger: object, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the console renderer prints str values raw (others via repr(), which
    escapes controls), so escape them."""
    return {escape_controls(k): escape_controls(v) if isinstance(v, str) else v for k, v in event_dict.items()}


class SecretScrubber:
    """structlog processor: configured secrets out of every console line (stdlib records, such as
    aiohttp's parser errors quoting the header they choked on, reach it through StdlibToStructlog)."""

    def __init__(self, secrets: tuple[str, ...]):
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, _logger: object, _method: str, event_dict: EventDict) -> EventDict:
        if not self.secrets:
            return event_dict
        return {k: self._value(v) for k, v in event_dict.items()}

    def _value(self, value: object) -> object:
        if isinstance(value, str):
            return scrub(value, self.secrets)
        if value is None or isinstance(value, (int, float)):
            return value
        text = repr(value)  # what the renderers print for anything else
        cleaned = scrub(text, self.secrets)
        return value if cleaned == text else cleaned


def configure_logging(level: str = "info", json: bool | None = None, secrets: tuple[str, ...] = ()) -> None:
    """Route structlog (and stdlib logging) to stderr at `level`, `secrets` scrubbed from every line."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    scrubber = SecretScrubber(secrets)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            one_line_exc_info,
            scrubber,  # after the exception became text, before escaping: a secret must match as configured
            *(() if json else (_escape_for_terminal,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(StdlibToStructlog())
    root.setLevel(max(lvl, logging.WARNING))
    threading.excepthook = _thread_crashed


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one line (Python would print its traceback)."""
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("gateway").error("thread_crashed", thread=getattr(args.thread, "name", None),
                                          exc_info=args.exc_value)


def one_line_exc_info(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """structlog processor: an exception becomes `error` ("Type: message") and `where` (its innermost
    frame) instead of a multi-line traceback."""
    exc = _exception(event.pop("exc_info", None))
    if exc is not None:
        event.setdefault("error", _describe(exc))
        if isinstance(exc, http_exceptions.HttpProcessingError):
            return event  # the client's fault: where aiohttp's parser noticed says nothing
        if (where := _where(exc)) is not None:
            event.setdefault("where", where)
    return event


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    if exc_info:
        return sys.exc_info()[1]
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http_exceptions.HttpProcessingError):
        # aiohttp's parser messages quote the raw request bytes (a header can carry a credential)
        return f"{type(exc).__name__} (HTTP {exc.code})"
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


# aiohttp reports every request it could not handle as an error; most are the client's doing.
_LEVELS = {"bad_http_request": "warning", "client_disconnected": "info"}


class StdlibToStructlog(logging.Handler):
    """Writes stdlib log records (aiohttp, asyncio, libraries) as one structlog line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            exc = record.exc_info[1] if record.exc_info else None
            if record.name == "aiohttp.server" and record.msg == "Error handling request from %s":
                event = _aiohttp_event(exc)
                fields["peer"] = str(record.args[0]) if isinstance(record.args, tuple) and record.args else None
            else:
                event = record.getMessage().splitlines()[0][:300] if record.getMessage() else record.name
            if exc is not None:
                fields["exc_info"] = exc
            logger = structlog.get_logger(record.name)
            level = _LEVELS.get(event) or record.levelname.lower()
            getattr(logger, level if level in ("debug", "info", "warning", "error", "critical") else "error")(
                event, **fields)
        except Exception:  # noqa: BLE001 — logging must never take the server down
            self.handleError(record)


def _aiohttp_event(exc: BaseException | None) -> str:
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return "bad_http_request"  # the client got aiohttp's 400; nothing is wrong with the server
    if isinstance(exc, ConnectionError):
        return "client_disconnected"
    return "server_error"
