"""One run per cell at a time: a lock file beside the cell's record names the process that runs it.

Two identical cells started together would both train fully and the last writer would win; with the lock the second
one stops at once and says who holds the cell. A lock whose owner died (kill -9, a lost node of this host) is stale:
the next run removes it and goes on. Owners on other hosts of a shared filesystem cannot be checked from here, so
their locks are respected until someone deletes them (the message names the file).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aimv2_eval.errors import UserError
from aimv2_eval.io import owner_gone, owner_tag, remove_stale_temps, temp_prefix


def lock_path(record: Path) -> Path:
    return record.with_name(f".{record.stem}.lock")


@contextlib.contextmanager
def cell_lock(record: Path, what: str) -> Iterator[None]:
    """Hold the lock of the cell whose record is `record` for the duration of the block."""
    lock = lock_path(record)
    created = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]
    _acquire(lock, what)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        for d in created:  # a run that failed early leaves no empty records folders behind
            with contextlib.suppress(OSError):
                d.rmdir()


def lock_owner(lock: Path) -> dict | None:
    """The owner a lock file names, or None when there is no lock; an unreadable lock names no one."""
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def is_stale(owner: dict) -> bool:
    return owner_gone(str(owner.get("owner", "")))


def _acquire(lock: Path, what: str) -> None:
    lock.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(lock)
    owner = {"owner": owner_tag(), "pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    # The whole content is written first and then hard-linked into place: link fails when the lock exists, so
    # taking it is atomic and a lock file is never seen half-written.
    fd, tmp = tempfile.mkstemp(dir=lock.parent, prefix=temp_prefix(lock), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        for _ in range(2):
            try:
                os.link(tmp, lock)
                return
            except FileExistsError:
                held = lock_owner(lock)
                if held is None:  # released between our link and our read
                    continue
                if not is_stale(held):
                    since = f" since {held['started']}" if held.get("started") else ""
                    raise UserError(
                        f"{what} is already running (pid {held.get('pid', '?')} on {held.get('host', '?')}{since}); "
                        f"wait for it to finish, or delete {lock} if that run is gone") from None
                print(f"note: removing the stale lock {lock} of pid {held.get('pid')} (no longer running)",
                      file=sys.stderr)
                lock.unlink(missing_ok=True)
        raise UserError(f"cannot take the lock {lock}: other runs keep taking it; retry")
    finally:
        os.unlink(tmp)
