"""Logging: one event per line, `key=value` text or JSON, never a secret.

Call sites log an event name and fields: `event(log, "replica_created",
database="db1")`. Every formatted line passes through `secret.redact`, so a
password that slipped into an exception message still prints as `***`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

from reconciler.secret import redact


def event(logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields: Any) -> None:
    logger.log(level, name, extra={"fields": fields})


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields = getattr(record, "fields", {})
        parts = [stamp, record.levelname.lower(), record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None]
        if record.exc_info and record.exc_info[0] is not None and record.levelno >= logging.ERROR:
            parts.append("error=" + _text_value(f"{record.exc_info[0].__name__}: {record.exc_info[1]}"))
        return redact(" ".join(parts))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any]
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            if value is not None:
                out[key] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_info and record.exc_info[0] is not None and record.levelno >= logging.ERROR:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return redact(json.dumps(out, default=str))


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # third-party chatter stays at warning whatever our level
    for noisy in ("apscheduler", "botocore", "boto3", "urllib3", "paramiko", "s3transfer", "waitress"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    sys.excepthook = _uncaught
    threading.excepthook = lambda hook: _uncaught(hook.exc_type, hook.exc_value, hook.exc_traceback,
                                                   hook.thread.name if hook.thread else None)


def _uncaught(exc_type, exc_value, exc_traceback, thread: str | None = None) -> None:
    """An exception nobody caught, in any thread: one scrubbed log line
    instead of Python's traceback on stderr (which bypasses the scrubber).
    The traceback only with REPLICATOR_DEBUG."""
    if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
        return
    fields = {"thread": thread, "error": f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"}
    if os.environ.get("REPLICATOR_DEBUG"):
        import traceback
        fields["traceback"] = "".join(traceback.format_exception(exc_type, exc_value, exc_traceback))
    event(logging.getLogger("reconciler"), "uncaught_exception", logging.CRITICAL, **fields)
