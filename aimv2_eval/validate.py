"""Type and range checks of task files and protocols, shared by `tasks.py` and the plugins' `resolve`.

Each check takes the value and `where` (the file and the dotted field, `at(task, "protocol.lr")`) and either returns
it or raises a one-line `UserError` that names the field, shows what it got and says what it must be. Checks return
the value as given (the list checks return floats, for callers that convert them anyway): they only read, so a valid
protocol resolves, and hashes, exactly as before. A leaf module: it imports only `errors`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from aimv2_eval.errors import UserError

Check = Callable[[Any, str], Any]


def at(task: Any, field: str) -> str:
    """`<task file>: <field>` (the task's name where it has no file: one built in a test)."""
    where = getattr(task, "path", None) or f"task {getattr(task, 'name', '?')}"
    return f"{where}: {field}"


def fail(where: str, want: str, value: Any, hint: str = "fix it in the task file") -> UserError:
    return UserError(f"{where} must be {want}, got {shown(value)}; {hint}")


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    parts = [f"{op} {b:g}" for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None]
    return f" {' and '.join(parts)}" if parts else ""


def _in_bounds(x: float, ge: float | None, gt: float | None, le: float | None, lt: float | None) -> bool:
    return ((ge is None or x >= ge) and (gt is None or x > gt) and (le is None or x <= le)
            and (lt is None or x < lt))


def as_float(value: Any) -> float | None:
    """The value as a finite float, or None. Numeric strings count: YAML 1.1 reads `1e-4` (no dot) as a string,
    and float() has always accepted it where protocols are converted."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def number(value: Any, where: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    x = as_float(value)
    if x is None or not _in_bounds(x, ge, gt, le, lt):
        raise fail(where, f"a number{_bounds(ge, gt, le, lt)}", value)
    return value


def integer(value: Any, where: str, *, ge: int | None = None, le: int | None = None) -> Any:
    # a real int only: `epochs: 2.5` or `epochs: "10"` is a mistake, not something to round
    if isinstance(value, bool) or not isinstance(value, int) or not _in_bounds(value, ge, None, le, None):
        raise fail(where, f"an integer{_bounds(ge, None, le, None)}", value)
    return value


def positive_int(value: Any, where: str) -> Any:
    return integer(value, where, ge=1)


def nonneg_int(value: Any, where: str) -> Any:
    return integer(value, where, ge=0)


def positive_number(value: Any, where: str) -> Any:
    x = as_float(value)
    if x is None or x <= 0:
        raise fail(where, "a positive number", value)
    return value


def nonneg_number(value: Any, where: str) -> Any:
    return number(value, where, ge=0)


def probability(value: Any, where: str) -> Any:
    return number(value, where, ge=0, le=1)


def boolean(value: Any, where: str) -> Any:
    if not isinstance(value, bool):
        raise fail(where, "true or false", value)
    return value


def string(value: Any, where: str, choices: Iterable[str] | None = None) -> Any:
    if choices is not None:
        choices = list(choices)
        if not isinstance(value, str) or value not in choices:
            raise fail(where, f"one of {', '.join(choices)}", value)
    elif not isinstance(value, str) or not value.strip():
        raise fail(where, "a non-empty string", value)
    return value


def text(value: Any, where: str) -> Any:
    """Any string, empty included (a description, a prompt)."""
    if not isinstance(value, str):
        raise fail(where, "a string (quote it if it holds a colon)", value)
    return value


def string_list(value: Any, where: str, nonempty: bool = True) -> Any:
    if not isinstance(value, list) or (nonempty and not value) or not all(isinstance(v, str) and v for v in value):
        raise fail(where, f"a {'non-empty ' if nonempty else ''}list of strings", value)
    return value


def mapping(value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise fail(where, "a mapping (key: value lines)", value)
    return value


def numbers(value: Any, where: str, *, length: int | None = None, scalar: bool = False, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None) -> list[float]:
    """A non-empty list of numbers (exactly `length` of them if given; with `scalar`, one number stands for a list
    of one), returned as floats."""
    items = [value] if scalar and not isinstance(value, list | tuple) else value
    floats = [as_float(v) for v in items] if isinstance(items, list | tuple) else []
    ok = floats and all(x is not None and _in_bounds(x, ge, gt, le, lt) for x in floats)
    if not ok or (length is not None and len(floats) != length):
        size = f"a list of {length}" if length is not None else "a non-empty list of"
        raise fail(where, f"{size} numbers{_bounds(ge, gt, le, lt)}", value)
    return floats  # type: ignore[return-value]


def betas(value: Any, where: str) -> list[float]:
    return numbers(value, where, length=2, ge=0, lt=1)


def int_list(value: Any, where: str, *, ge: int | None = None, nonempty: bool = True) -> Any:
    if (not isinstance(value, list) or (nonempty and not value)
            or not all(not isinstance(v, bool) and isinstance(v, int) and _in_bounds(v, ge, None, None, None)
                       for v in value)):
        raise fail(where, f"a {'non-empty ' if nonempty else ''}list of integers{_bounds(ge, None, None, None)}", value)
    return value


def scale_range(value: Any, where: str, high: float | None = 1.0) -> list[float]:
    """[low, high] with 0 < low <= high (<= `high` when given): a crop or jitter scale."""
    lo, hi = ([as_float(x) for x in value] if isinstance(value, list | tuple) and len(value) == 2 else (None, None))
    if lo is None or hi is None or not 0 < lo <= hi <= (math.inf if high is None else high):
        top = f" <= {high:g}" if high is not None else ""
        raise fail(where, f"[low, high] with 0 < low <= high{top}", value)
    return [lo, hi]


def counts(value: Any, where: str, keys: Iterable[str]) -> Any:
    """A mapping from some of `keys` to integers >= 1 (e.g. images per split: `{train: 50000, test: 10000}`)."""
    mapping(value, where)
    known_keys(value, keys, where)
    for key, n in value.items():
        positive_int(n, f"{where}.{key}")
    return value


def optional(check: Check) -> Check:
    """`check`, with null allowed (a field whose null means "none" or "the default")."""
    return lambda value, where: value if value is None else check(value, where)


def known_keys(block: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Unknown keys are typos more often than not (`crop_sise`), and a typo silently falls back to a default."""
    allowed = list(allowed)
    for key in block:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(allowed)}, or remove it"
            raise UserError(f"{where} has an unknown key {key!r}; {hint}")


def fields(block: dict[str, Any], checks: dict[str, Check], where: str) -> None:
    """Apply `checks` to the keys of `block` that are present (missing keys are each plugin's own business)."""
    for key, check in checks.items():
        if key in block:
            check(block[key], f"{where}.{key}")


def metric_names(task: Any, produced: set[str], plugin: str) -> None:
    """metric.main and every metric.report name must be among what the plugin produces for this task."""
    metric = task.metric
    names = [("metric.main", metric.get("main"))]
    names += [(f"metric.report[{i}]", n) for i, n in enumerate(metric.get("report") or [])]
    for field, name in names:
        if name not in produced:
            raise UserError(f"{at(task, field)} {name!r} is not a metric the {plugin} plugin produces for this task; "
                            f"use one of {', '.join(sorted(produced))}")


# Protocol fields that mean the same in every plugin that has them; each plugin adds its own checks to these.
TRAINING_FIELDS: dict[str, Check] = {
    "lr": positive_number, "min_lr": nonneg_number, "weight_decay": nonneg_number, "betas": betas,
    "epochs": positive_int, "batch_size": positive_int, "eval_batch_size": positive_int, "warmup_iters": nonneg_int,
    "limit": optional(positive_int),
}
