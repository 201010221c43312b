"""`aimv2-eval list backbones|tasks|plugins [PATTERN]`: what the harness knows, filtered by a glob pattern."""

from __future__ import annotations

import argparse
import importlib
import json

from aimv2_eval.errors import UserError

KINDS = ("backbones", "tasks", "plugins")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what to list")
    parser.add_argument("pattern", nargs="?", default=None, help="glob pattern on names, e.g. 'aimv2-*' or '*siglip*'")
    parser.add_argument("--json", action="store_true", help="one JSON list of rows (raw values), for scripts")


def _params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _table(rows: list[dict], columns: list[str]) -> str:
    from aimv2_eval.report.tables import text_table

    return text_table(columns, [[r.get(c, "") for c in columns] for r in rows])


def _backbones(pattern: str | None, raw: bool = False) -> list[dict]:
    from aimv2_eval.backbones import backbone_rows

    rows = backbone_rows(pattern)
    for r in [] if raw else rows:
        r["params"] = _params(r["params"])
        r["weights"] = "yes" if r["weights"] else "no"
    return rows


def _other(kind: str, pattern: str | None) -> list[dict] | None:
    """Rows from the task / plugin registries, whose modules other parts of the project provide."""
    module, func = {"tasks": ("aimv2_eval.tasks", "task_rows"), "plugins": ("aimv2_eval.plugins", "plugin_rows")}[kind]
    try:
        rows_fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError):
        return None
    return list(rows_fn(pattern))


def _registry(kind: str):
    if kind == "backbones":
        from aimv2_eval.backbones import BACKBONES, list_backbones

        list_backbones()  # registers every family
        return BACKBONES
    if kind == "tasks":
        from aimv2_eval.tasks import task_registry

        return task_registry()
    from aimv2_eval.plugins import PLUGINS

    return PLUGINS


def main(args: argparse.Namespace) -> int:
    rows: list[dict] | None
    if args.kind == "backbones":
        rows = _backbones(args.pattern, raw=args.json)
        columns = ["name", "family", "params", "resolution", "weights", "aliases"]
    else:
        rows = _other(args.kind, args.pattern)
        if rows is None:
            print(f"no {args.kind} yet: this installation has no {args.kind} registry")
            return 0
        columns = list(dict.fromkeys(k for r in rows for k in r))
    if args.json:
        print(json.dumps(rows, default=str))
        return 0 if rows else 1
    if not rows:
        if args.pattern and not any(c in args.pattern for c in "*?["):  # a name, not a pattern: say which was meant
            raise UserError(_registry(args.kind).unknown_message(args.pattern))
        print(f"no {args.kind} match {args.pattern!r}")
        return 1
    print(_table(rows, columns))
    if args.kind == "backbones":
        print(_open_ended())
    return 0


def _open_ended() -> str:
    """The name forms the resolvers accept besides the registered names (one line each, from their docstrings)."""
    from aimv2_eval.backbones.base import RESOLVERS

    forms = [(r.__doc__ or r.__name__).strip().splitlines()[0] for r in RESOLVERS]
    return "\nalso accepted as --backbone (not listed above):\n" + "\n".join(f"  {f}" for f in forms)
