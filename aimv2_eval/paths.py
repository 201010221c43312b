"""Output paths checked before any work starts: a command that will write a folder or a file calls these first.

Nothing is created here; each check only asks whether the write could succeed later, so that a wrong `--out`
(inside a regular file, a folder that is not writable, a folder where a file is expected or the other way round)
fails in one line at the start, not with a traceback after an hour of training.
"""

from __future__ import annotations

import os
from pathlib import Path

from aimv2_eval.errors import UserError


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _check_creatable(path: Path, flag: str, shown: str) -> None:
    """`path` does not exist: its first existing ancestor must be a writable folder (then mkdir -p succeeds)."""
    for ancestor in path.parents:
        if os.path.lexists(ancestor) and not ancestor.exists():
            raise UserError(f"{flag} {shown}: {ancestor} is a broken symbolic link; remove it or choose another path")
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise UserError(f"{flag} {shown}: {ancestor} is a file, so no folder can be made inside it; "
                            "choose another path or remove the file")
        if not _writable(ancestor):
            raise UserError(f"{flag} {shown}: cannot create it, folder {ancestor} is not writable; "
                            "choose another path or fix the permissions")
        return


def writable_dir(path: str | Path, flag: str) -> Path:
    """`path` is a folder this process can write into, or can be created as one. Returns it as a Path."""
    shown = str(path)
    if not shown.strip():
        raise UserError(f"{flag} is empty; give a folder path")
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{flag} {shown} is a file, not a folder; give a folder path or remove the file")
        if not _writable(path):
            raise UserError(f"{flag} {shown}: folder is not writable; choose another folder or fix its permissions")
        return path
    if os.path.lexists(path):
        raise UserError(f"{flag} {shown} is a broken symbolic link; remove it or choose another folder")
    _check_creatable(path, flag, shown)
    return path


def writable_file(path: str | Path, flag: str, example: str = "out.csv") -> Path:
    """`path` can be written as a file: not a folder, and its folder exists writable or can be created.
    `example` is a file name suggested when a folder was given."""
    shown = str(path)
    if not shown.strip():
        raise UserError(f"{flag} is empty; give a file path such as {example}")
    if shown.endswith(("/", os.sep)):
        raise UserError(f"{flag} {shown} names a folder; give a file path such as {Path(shown) / example}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {shown} is a folder; give a file path such as {path / example}")
    if path.exists():
        # written by replacing the file (atomic rename): the folder must be writable, not the file
        if not _writable(path.parent):
            raise UserError(f"{flag} {shown}: folder {path.parent} is not writable; "
                            "choose another path or fix its permissions")
        return path
    if os.path.lexists(path):
        raise UserError(f"{flag} {shown} is a broken symbolic link; remove it or choose another path")
    if path.parent.exists():
        if not path.parent.is_dir():
            raise UserError(f"{flag} {shown}: {path.parent} is a file, not a folder; choose another path")
        if not _writable(path.parent):
            raise UserError(f"{flag} {shown}: folder {path.parent} is not writable; "
                            "choose another path or fix its permissions")
        return path
    _check_creatable(path, flag, shown)
    return path
