"""Thread control for per-sample data work done in the main process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Per-image transforms are tiny tensor ops: intra-op threads only add synchronisation (up to 100x slower on a
    busy 2-core machine). DataLoader workers run single-threaded anyway; this does the same in the main process."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)
