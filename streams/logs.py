"""Structured logging: one JSON object per line, or readable text with ``key=value`` extras.

``configure_logging(level, json=True)`` makes every record a single line of
JSON with ``ts``, ``level``, ``logger``, ``message`` and every ``extra`` field
given to the logging call (``request_id`` first of all). ``request_logger``
wraps a logger so that every line about one request carries its
``request_id`` without each call having to pass it.

``logging_config(level, json)`` returns the same setup as a ``dictConfig``
mapping, for frameworks that configure logging themselves (Faust's
``logging_config`` setting).
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import logging
import logging.config
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "KeyValueFormatter",
    "RequestLogger",
    "configure_logging",
    "logging_config",
    "request_logger",
]

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

_LEVELS = ("critical", "error", "warning", "warn", "info", "debug")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of ``record``, ``request_id`` first, private ones left out."""
    found = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }
    if "request_id" in found:
        found = {"request_id": found.pop("request_id"), **found}
    return found


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON.

    Guarantees: the output is a single line (newlines inside strings are
    escaped), parses as a JSON object with ``ts`` (UTC, ISO 8601 with
    milliseconds), ``level``, ``logger``, ``message``, plus every ``extra``
    field (values JSON cannot encode are written as their ``str``), plus
    ``exc`` with the traceback when the record carries an exception.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        document: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # An extra named like a core field must not overwrite it.
            document[key if key not in document else f"extra_{key}"] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(document, default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """Readable text: ``<time> <level> <logger>: <message> key=value ...`` for the extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in extras.items())
        # The traceback (if any) follows the first line; keep the extras on it.
        head, sep, tail = line.partition("\n")
        return f"{head} {pairs}{sep}{tail}"


def logging_config(level: str = "info", json: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping: one stderr handler on the root logger.

    Raises ``ValueError`` for an unknown ``level`` (names as in ``XSP_LOG_LEVEL``).
    """
    name = level.strip().lower()
    if name not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    formatter = JsonFormatter if json else KeyValueFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"xsp": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "xsp": {
                "class": "logging.StreamHandler",
                "formatter": "xsp",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "WARNING" if name == "warn" else name.upper(), "handlers": ["xsp"]},
    }


def configure_logging(
    level: str = "info", json: bool = False, stream: TextIO | None = None
) -> None:
    """Send every log record of the process to ``stream`` (default stderr) at ``level``.

    Guarantees: the root logger has exactly one handler afterwards (earlier
    handlers are replaced, so calling it twice does not double lines); with
    ``json=True`` each record is one JSON line (``JsonFormatter``).
    """
    logging.config.dictConfig(logging_config(level, json))
    if stream is not None:
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)


class RequestLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A ``LoggerAdapter`` that adds its fields (``request_id``) to every record.

    Unlike the standard adapter (before Python 3.13) it merges them with the
    ``extra`` of each call instead of replacing it; the call's own values win.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        own: Mapping[str, Any] = self.extra or {}
        kwargs["extra"] = {**own, **(kwargs.get("extra") or {})}
        return msg, kwargs


def request_logger(logger: logging.Logger | str, request_id: str, **fields: Any) -> RequestLogger:
    """A logger whose every line carries ``request_id`` (and ``fields``, e.g. campaign_id)."""
    base = logging.getLogger(logger) if isinstance(logger, str) else logger
    return RequestLogger(base, {"request_id": request_id, **fields})


if __name__ == "__main__":  # pragma: no cover - manual check: python -m streams.logs
    configure_logging("debug", json="--json" in sys.argv)
    request_logger("xsp.demo", "r-1", campaign_id="c-1").info("decision published")
