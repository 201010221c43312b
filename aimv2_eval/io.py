"""Atomic file writes: readers (and a run killed half-way) never see half a file.

Every writer goes to a temporary file in the destination folder, is flushed and fsynced, then renamed over the
target (`os.replace` is atomic on POSIX within one filesystem). One helper for records, checkpoints, caches and
predictions, instead of one copy per module.

A temporary name carries its writer (`.NAME.<pid>-<host>.<random>.tmp`), so the next write of the same target
removes what a killed writer left, while a live writer's file (another process, same host) is never touched.
Writers on other hosts of a shared filesystem cannot be checked from here: their files are left alone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aimv2_eval.faults import fail_point


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is fsynced and renamed to `path`, on an error it
    is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; results are shared like any file
        fail_point(f"replace{path.suffix}")  # the crash tests kill here: written, not yet in place
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def owner_tag() -> str:
    """This process, as temporary names and lock files record it: pid and a short hash of the host name."""
    return f"{os.getpid()}-{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def owner_gone(tag: str) -> bool:
    """True when `tag` names a process of this host that no longer exists. Processes of other hosts count as
    alive (nothing here can tell), and so does anything that is not a tag (another target's temporary file)."""
    pid, _, host = tag.partition("-")
    if not pid.isdigit() or host != owner_tag().partition("-")[2]:
        return False
    return not pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def temp_prefix(path: str | Path) -> str:
    return f".{Path(path).name}.{owner_tag()}."


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files and folders that killed writers of `path` left beside it; returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tag = tmp.name[len(path.name) + 2 :].split(".")[0]
        if owner_gone(tag):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)`, then move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str)))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def torch_save_atomic(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
