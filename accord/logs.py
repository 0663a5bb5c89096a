"""Logging set-up for the CLIs: one line per event, as ``key=value`` text or as JSON lines.

Library code only calls ``logging.getLogger(__name__)``; only the CLIs configure handlers
(``configure(level, log_format)``, from ``--log-level`` and ``--log-format``). Both formats
stamp each line with an RFC 3339 time with the local offset
(``2026-11-25T10:00:00.123+01:00``) and carry the record's ``extra`` fields: ids and counts,
never patient fields or tokens (the callers' rule; ``tests/test_logs.py`` checks it end to end).
"""

from __future__ import annotations

import enum
import json
import logging
import sys
from datetime import datetime

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class LogFormat(enum.StrEnum):
    """What ``--log-format`` accepts."""

    TEXT = "text"
    JSON = "json"


def timestamp(record: logging.LogRecord) -> str:
    """The record's time in RFC 3339 with this machine's UTC offset, to the millisecond."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a caller passed as ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25T10:00:00.123+01:00 INFO accord.relay.server: peer connected peer=ws://... calendar=c1``"""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={v}" for k, v in extras(record).items())
        line = f"{base} {fields}" if fields else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the extra fields, and
    ``exception`` (the traceback text) when there is one. An extra field named like one of
    those keys is kept as ``extra.<name>``; values JSON cannot hold are written as ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": timestamp(record), "level": record.levelname, "logger": record.name,
                                   "message": record.getMessage()}
        for key, value in extras(record).items():
            line[f"extra.{key}" if key in line or key == "exception" else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str = LogFormat.TEXT) -> None:
    """Send logs to stderr at ``level``, as ``key=value`` text or JSON lines (``log_format``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if LogFormat(log_format) is LogFormat.JSON else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
