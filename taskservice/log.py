"""Process-wide logging set-up, done once by the CLI before anything logs.

JSON by default, one object per line, so log pipelines index fields (the access log's method,
code, duration, peer, user id and request id) without parsing text; `LOG_FORMAT=text` for people.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TextIO

#: Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one line of JSON."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


#: Libraries that log statement parameters or result rows (password hashes among them) at
#: DEBUG: never let them, whatever LOG_LEVEL says.
_ROW_LOGGING_LOGGERS = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.orm", "aiosqlite")


def configure_logging(level: str, log_format: str = "json", stream: TextIO | None = None) -> None:
    """Send records at `level` and above to stderr (or `stream`), as JSON lines or plain text.

    SQLAlchemy's and aiosqlite's loggers are held at WARNING at least, whatever `level` is: at
    INFO they log every statement, at DEBUG every parameter and result row. Statements appear
    only with DEBUG=true (the engine's echo), parameters hidden.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _ROW_LOGGING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
