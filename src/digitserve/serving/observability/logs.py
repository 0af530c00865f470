"""The server's logs: one JSON object per line on stdout (python-json-logger), or readable text on
a terminal (`DIGITSERVE_LOG_FORMAT`: auto, json, text).

Every HTTP request is one line of the `digitserve.access` logger (`requests.py` writes it, the
protocol's early refusals included); application and error logs carry the `request_id` of the
request they happened in, from a context variable the edge middleware sets. uvicorn's own loggers
use the same handler, so a worker's whole output is one format.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from typing import Any

from digitserve.config import Observability, stdout_is_terminal

ACCESS_LOGGER = "digitserve.access"
# (the request's id, the task handling it): a task the request started, which copies the context,
# is not the request (a batcher, a comparison pump) and its lines carry no id
REQUEST_ID: ContextVar[tuple[str, object] | None] = ContextVar("digitserve_request_id", default=None)
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"  # and `time` (ISO 8601, UTC) first
RENAMED = {"levelname": "level", "name": "logger"}


def current_request(request_id: str) -> None:
    """Name the request the current task handles, for the lines it logs."""
    REQUEST_ID.set((request_id, _current_task()))


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # not in the event loop's thread
        return None


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to a record made while it is handled (and has none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            current = REQUEST_ID.get()
            if current is not None and current[1] is _current_task():
                record.request_id = current[0]
        return True


class BatchedStreamHandler(logging.StreamHandler):
    """Writes every line at once, but makes the system call that hands them to stdout only for
    warnings and errors, when the stream's buffer fills, and when drained -- every 50 ms by the
    event-loop probe (observability/loop.py) and at exit. An access line then costs no system
    call of its own; a worker killed outright loses at most its last 50 ms of info lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def drain() -> None:
    """Hand the lines written so far to stdout (each handler of ours, flushed)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


class TextFormatter(logging.Formatter):
    """A line for a terminal: time, level, logger, message (an access line's says method, route
    and status), then the request's `id=`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} id={request_id}" if request_id else line


def lean_records() -> None:
    """Records without the caller's frame, thread and process names, which no line here shows:
    the logging cookbook's optimisation, a third of an access line's cost; Python's warnings
    become log lines too. Per process."""
    logging._srcfile = None  # no findCaller()
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.captureWarnings(True)


def log_format(settings: Observability) -> str:
    if settings.log_format != "auto":
        return settings.log_format
    return "text" if stdout_is_terminal() else "json"


def logging_config(settings: Observability, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for uvicorn and digitserve: one stdout handler, one format."""
    formatter: dict[str, Any]
    if log_format(settings) == "json":
        formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": RENAMED,
            "timestamp": "time",
        }
    else:
        formatter = {"()": TextFormatter}
    handler = {
        "()": BatchedStreamHandler,
        "stream": "ext://sys.stdout",
        "formatter": "digitserve",
        "filters": ["request_id"],
    }
    quiet = {"handlers": ["stdout"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"digitserve": formatter},
        "handlers": {"stdout": handler},
        "loggers": {
            "uvicorn": quiet,
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "propagate": False},  # requests.py writes the access log
            "digitserve": quiet,
            ACCESS_LOGGER: {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["stdout"], "level": "WARNING"},  # asyncio's, OpenTelemetry's, warnings
    }
