"""structlog set-up: key=value lines on a terminal, JSON lines otherwise."""
from __future__ import annotations

import logging
import sys

import structlog

from gateway.terminal import escape_controls


def _escape_for_terminal(_logger: object, _method: str, event_dict: dict) -> dict:
    """structlog processor: the console renderer prints str values raw (others via repr(), which
    escapes controls), so escape them; a traceback keeps its line breaks."""
    return {escape_controls(k): (v if not isinstance(v, str) else
                                 "\n".join(map(escape_controls, v.split("\n"))) if k == "exception" else
                                 escape_controls(v))
            for k, v in event_dict.items()}


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Route structlog (and stdlib logging) to stderr at `level`."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *(() if json else (_escape_for_terminal,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
