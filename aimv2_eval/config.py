"""Nested config dicts (task YAMLs and their includes, pretraining recipes): one deep merge for all of them; and
`cache_home()`, the one root of the harness's caches.

A leaf module: every layer may import it.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aimv2_eval.errors import UserError


def unknown_key(key: str, known: Iterable[str], where: str = "") -> UserError:
    """The error for a config key that is not in `known`, with the closest known key (typos are the usual cause)."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {where}{close[0]}?" if close else f"; known: {', '.join(known)}"
    return UserError(f"unknown config key {where}{key}{hint}")


def deep_merge(base: dict[str, Any], over: dict[str, Any], strict: bool = False, where: str = "") -> dict[str, Any]:
    """A copy of `base` with `over` merged in: nested dicts merge key by key, anything else is replaced.

    With `strict`, every key of `over` must exist in `base` (a `UserError` names it, `where` is its dotted prefix);
    an empty dict in `base` is free-form (it has no keys to check against).
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if strict and key not in base:
            raise unknown_key(key, base, where)
        if strict and isinstance(base.get(key), dict) and not isinstance(value, dict):
            if value is None:  # an empty section (`model:` alone) keeps the defaults
                continue
            raise UserError(f"config key {where}{key} is a section: give a mapping of its keys, got {value!r}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = deep_merge(base[key], value, strict and bool(base[key]), f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def home() -> Path:
    """$AIMV2_EVAL_HOME, default ~/.cache/aimv2-eval: the one root of what the harness writes when not told where
    (records/, leaderboard/, and the caches), whatever the current folder; never the tracked results/."""
    return Path(os.environ.get("AIMV2_EVAL_HOME", "~/.cache/aimv2-eval")).expanduser()


def cache_home() -> Path:
    """$AIMV2_EVAL_CACHE, default home(): feature caches, tuned LLaVA and grounding models, built wheels."""
    return Path(os.environ.get("AIMV2_EVAL_CACHE") or home()).expanduser()


def records_home() -> Path:
    """Where `run` and `sweep` write records and `leaderboard` / `regress` read them by default."""
    return home() / "records"
