"""Structured JSON logs: one JSON object per line on stderr.

Callers pass fields with ``extra={"fields": {...}}``. Nothing here ever logs request headers, so a
bearer token cannot reach the logs; keep it that way (never put headers or claims into fields).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "receiver"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, message, then the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Give the receiver's logger a JSON handler on stderr (once) and return it."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_pull_events_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._pull_events_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def get_logger(name: str) -> logging.Logger:
    """A child of the receiver's logger, e.g. ``get_logger("batcher")``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def gunicorn_logconfig() -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for gunicorn's own loggers, in the same JSON format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }
