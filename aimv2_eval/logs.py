"""Logging helpers shared by the family modules and engines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(logger: logging.Logger, level: int = logging.WARNING) -> Iterator[None]:
    """Raise `logger`'s level for a block (libraries that log routine work as warnings or per-tensor INFO)."""
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
