"""Logging set-up for the CLIs: one line per event, ``key=value`` pairs from ``extra``.

Library code only calls ``logging.getLogger(__name__)``; only the CLIs configure handlers.
"""

from __future__ import annotations

import logging
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25T10:00:00 INFO accord.relay.server: peer connected peer=ws://... calendar=c1``"""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        line = f"{base} {extras}" if extras else base
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "INFO") -> None:
    """Send logs to stderr with :class:`KeyValueFormatter` at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
    # aiosqlite's DEBUG lines quote SQL parameters, i.e. stored updates with patient data: never show them.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
