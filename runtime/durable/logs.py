"""Structured logging: JSON lines when stderr is not a TTY, with run id and step when known."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STD and not k.startswith("_"))
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        base = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        text = f"{base} {extra}" if extra else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(level: str = "INFO", json_logs: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger("durable")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
