"""Logging setup: readable lines by default, JSON lines on request (server.log_format).

Records are formatted where they are logged but written by a thread of their own
(QueueHandler/QueueListener): a write to a slow stderr pipe (a supervisor, a test
reading our output) must not hold up the event loop. The queue is drained at exit.
"""
from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_listener: logging.handlers.QueueListener | None = None


class _RecordQueueHandler(logging.handlers.QueueHandler):
    """Hands the record itself to the writer thread (the stock one pre-formats it for another
    process and drops exc_info, which JSON logs keep in their own field)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()  # the arguments as they are now
        record.args = None
        return record


def configure(log_format: str = "text", level: str = "INFO") -> None:
    global _listener
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Record fields no format here uses (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if _listener is not None:
        _listener.stop()
    else:
        atexit.register(flush)
    records: queue.SimpleQueue = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_RecordQueueHandler(records)]
    root.setLevel(level)
    # Library chatter at INFO would drown the one-line-per-connection log.
    for noisy in ("aiosmtpd", "mail.log", "sqlalchemy", "alembic", "twisted"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush() -> None:
    """Write out every queued record and stop the writer thread (at exit; safe to call twice)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
