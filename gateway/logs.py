"""structlog set-up: key=value lines on a terminal, JSON lines otherwise."""
from __future__ import annotations

import logging
import sys

import structlog

from gateway.redact import scrub
from gateway.terminal import escape_controls


def _escape_for_terminal(_logger: object, _method: str, event_dict: dict) -> dict:
    """structlog processor: the console renderer prints str values raw (others via repr(), which
    escapes controls), so escape them; a traceback keeps its line breaks."""
    return {escape_controls(k): (v if not isinstance(v, str) else
                                 "\n".join(map(escape_controls, v.split("\n"))) if k == "exception" else
                                 escape_controls(v))
            for k, v in event_dict.items()}


class SecretScrubber(logging.Filter):
    """Configured secrets out of every console line: a structlog processor for our events and a
    logging filter for the stdlib's (aiohttp's parser errors quote the header they choked on)."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, _logger: object, _method: str, event_dict: dict) -> dict:
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

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg, record.args = scrub(record.getMessage(), self.secrets), None
        if record.exc_info:
            # Formatted here, scrubbed, and cached where Formatter.format looks for it first.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


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
            structlog.processors.format_exc_info,
            scrubber,  # before escaping: a secret must match as configured
            *(() if json else (_escape_for_terminal,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # filters on handlers also see records of child loggers
        handler.addFilter(scrubber)
