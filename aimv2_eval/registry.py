"""A small typed registry with lazy construction, glob listing and did-you-mean errors.

Used for backbones, task plugins and tasks. A leaf module: every layer may import it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Generic, TypeVar

from aimv2_eval.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def decorator(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def wrap(entry: T) -> T:
            return self.register(name, entry, aliases)

        return wrap

    def canonical(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        # a name that differs only in case means the one entry it folds to (as backbone names already do)
        folded = {self._aliases.get(k, k) for k in (*self._entries, *self._aliases) if k.lower() == name.lower()}
        if len(folded) == 1:
            return folded.pop()
        raise UserError(self.unknown_message(name))

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, n in self._aliases.items() if n == name)

    def list(self, pattern: str | None = None) -> list[str]:
        """Names matching a glob pattern (case-insensitive), aliases included in the match."""
        if not pattern:
            return sorted(self._entries)
        pat = pattern.lower()
        hits = {n for n in self._entries if fnmatch.fnmatch(n.lower(), pat)}
        hits |= {n for a, n in self._aliases.items() if fnmatch.fnmatch(a.lower(), pat)}
        return sorted(hits)

    def unknown_message(self, name: str) -> str:
        known = sorted({*self._entries, *self._aliases})
        by_lower = {k.lower(): k for k in known}
        # Names hold no path separators: a path-like name was meant as a file, so say what is wrong with the file
        # and suggest from its stem (`tasks/digit_probe.yaml` -> digits_probe).
        pathlike = "/" in name or "\\" in name or name.endswith((".yaml", ".yml"))
        stem = PurePath(name.replace("\\", "/")).stem if pathlike else name
        close = [by_lower[c] for c in difflib.get_close_matches(stem.lower(), list(by_lower), n=3, cutoff=0.5)]
        hint = (f"did you mean {', '.join(close)}?" if close else f"give a {self.kind} name or an existing file"
                if pathlike else f"known: {', '.join(known[:20])}")
        what = f"unknown {self.kind} {name!r}"
        if pathlike:
            path = Path(name).expanduser()
            what += (": a folder, not a file" if path.is_dir() else ": no such file" if not path.exists()
                     else f": not a {self.kind} file")
        return f"{what}; {hint} (`aimv2-eval list {self.kind}s` shows all)"
