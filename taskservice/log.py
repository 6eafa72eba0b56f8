"""Process-wide logging set-up, done once by the CLI before anything logs."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Send records at `level` and above to stderr, one line each, with time and logger name."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
