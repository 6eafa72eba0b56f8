"""Process-wide logging set-up, done once by the CLI before anything logs.

JSON by default, one object per line, so log pipelines index fields (the access log's method,
code, duration, peer, user id and request id) without parsing text; `LOG_FORMAT=text` for people.

Every line made during a call, whichever module logs it and on whichever edge, carries that
call's request id (`request_id`), so an operator can go from a caller's `x-request-id` to every
line it caused (a retried transaction, a database warning) and not only to its access line. The
formatters read it from the call's context (`taskservice.calls.context.current_call`) when
the line is written, which is synchronously in the logging call, so nothing that logs needs to
pass it. Likewise a line made while a traced call's span is recording carries its `trace_id`
and `span_id` (lowercase hex), so a log line leads to its trace and a trace to its lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from taskservice.calls.context import current_call
from taskservice.tracing.spans import current_ids

#: Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


#: `json.dumps(value, default=str)` without building an encoder per line.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extra fields, exception.

    It runs once per call (the access log), so it keeps per-line work small: the time's
    date-and-seconds part is formatted once a second, and one encoder serves every line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """`created` as ISO 8601 with milliseconds in UTC, like `isoformat(timespec=...)`."""
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one line of JSON."""
        entry = self._head(record.created, record.levelname, record.name, record.getMessage())
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES
        )
        if "request_id" not in entry and (call := current_call()) is not None:
            entry["request_id"] = call.request_id
        if "trace_id" not in entry and (ids := current_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)

    def line(self, created: float, logger: str, message: str, fields: Mapping[str, object]) -> str:
        """The line `format` renders for an INFO record with these `extra` fields."""
        entry = self._head(created, "INFO", logger, message)
        entry.update(fields)
        return _encode(entry)

    def _head(self, created: float, level: str, logger: str, message: str) -> dict[str, object]:
        """The fields every line starts with, in their order."""
        return {"time": self._time(created), "level": level, "logger": logger, "message": message}


class TextFormatter(logging.Formatter):
    """`LOG_FORMAT=text`: time, level, logger, message, and the call's request id if in a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The line before any traceback, ending with `[request_id=...]` during a call.

        During a traced call's span, `trace_id=... span_id=...` follow the request id.
        """
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None and (call := current_call()) is not None:
            request_id = call.request_id
        tags = [] if request_id is None else [f"request_id={request_id}"]
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            tags.append(f"trace_id={trace_id} span_id={getattr(record, 'span_id', '')}")
        elif (ids := current_ids()) is not None:
            tags.append(f"trace_id={ids[0]} span_id={ids[1]}")
        return f"{line} [{' '.join(tags)}]" if tags else line


#: Longest an access line made on an event loop waits to be written, in seconds.
ACCESS_LINES_DELAY_SECONDS = 0.05
#: Pending access lines that are written at once, however recent the first of them.
ACCESS_LINES_BATCH = 256


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The JSON handler: writes records as any StreamHandler does, and access lines in batches.

    An access line made on an event loop is written with the others made within
    ACCESS_LINES_DELAY_SECONDS of it (or once ACCESS_LINES_BATCH are pending), in one write: by
    profile, a write and flush per call cost 7% of the loop under GetTask, and a write per loop
    iteration saved nothing (about one call ends per iteration). A line made off a loop is
    written at once, unless a batch is pending, which it joins. Anything else written (a
    record, a flush, the shutdown's flush) writes the pending lines first, so the stream keeps
    their order.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def add_line(self, line: str) -> None:
        """Write `line` (with the terminator) within ACCESS_LINES_DELAY_SECONDS, or now."""
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line + self.terminator)
            pending = len(self._pending)
        if pending == 1:
            try:
                asyncio.get_running_loop().call_later(ACCESS_LINES_DELAY_SECONDS, self.flush)
                return
            except RuntimeError:  # no loop in this thread: write now
                pass
        elif pending < ACCESS_LINES_BATCH:
            return  # a write is already scheduled
        self.flush()

    def flush(self) -> None:
        """Write the pending lines, then flush the stream."""
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                try:
                    self.stream.write(text)
                except Exception:  # as logging does: a broken log stream must not fail calls
                    if logging.raiseExceptions:
                        logging.lastResort.handle(
                            logging.makeLogRecord({"msg": "access log write failed"})
                        )
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the pending lines, then the record, as StreamHandler does."""
        if self._pending:
            self.flush()
        super().emit(record)


#: The JSON handler `configure_logging` installed, while it is the root logger's only one.
_json_handler: JsonLinesHandler | None = None


def info_fields(logger: logging.Logger, message: str, fields: Mapping[str, object]) -> None:
    """Log `message` at INFO with `fields` (as `extra=`), one line per call for the access log.

    When all logging would do with the record is hand it to the JSON handler that
    `configure_logging` installed (nothing else listens: no other handler, no filter), the line
    goes straight to that handler, exactly as it would have formatted it, and is written in
    its next batch: by profile, building and dispatching the LogRecord cost more CPU than a
    GetTask's database read. Otherwise (text format, tests capturing
    records, other handlers) the record goes through logging as usual.
    """
    handler = _json_handler
    if (
        handler is None
        or not logger.isEnabledFor(logging.INFO)
        or logger.handlers
        or logger.filters
        or len(handlers := logging.root.handlers) != 1
        or handlers[0] is not handler
        or handler.filters
    ):
        logger.info("%s", message, extra=fields)
        return
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
    handler.add_line(formatter.line(time.time(), logger.name, message, fields))


#: Libraries that log statement parameters or result rows (password hashes among them) at
#: DEBUG: never let them, whatever LOG_LEVEL says.
_ROW_LOGGING_LOGGERS = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.orm", "aiosqlite")


def configure_logging(level: str, log_format: str = "json", stream: TextIO | None = None) -> None:
    """Send records at `level` and above to stderr (or `stream`), as JSON lines or plain text.

    SQLAlchemy's and aiosqlite's loggers are held at WARNING at least, whatever `level` is: at
    INFO they log every statement, at DEBUG every parameter and result row. Statements appear
    only with DEBUG=true (the engine's echo), parameters hidden.
    """
    global _json_handler
    handler: logging.StreamHandler  # type: ignore[type-arg]
    if log_format == "json":
        handler = _json_handler = JsonLinesHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        handler, _json_handler = logging.StreamHandler(stream), None
        handler.setFormatter(TextFormatter())
    # Record fields no line of ours shows, each a system call or a stack walk per record (the
    # logging HOWTO's "Optimization" section); the access log writes a record per call.
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _ROW_LOGGING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
