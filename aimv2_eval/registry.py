"""A small typed registry with lazy construction, glob listing and did-you-mean errors.

Used for backbones, task plugins and tasks. A leaf module: every layer may import it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
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
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known[:20])}"
        return f"unknown {self.kind} {name!r}; {hint} (`aimv2-eval list {self.kind}s` shows all)"
