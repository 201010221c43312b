"""`aimv2-eval regress`: measured cells vs the paper's and the pinned embedded references; exit 1 on a regression."""

from __future__ import annotations

import argparse
from pathlib import Path

from aimv2_eval.errors import UserError
from aimv2_eval.report import references, regress, store

DEFAULT_RECORDS = Path("records")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="folder of result records (%(default)s)")
    parser.add_argument(
        "--references", type=Path, action="append",
        help="reference CSV file or folder (default: results/paper and results/embedded); repeatable",
    )
    parser.add_argument(
        "--tolerance", action="append", metavar="[METRIC=]NUMBER",
        help="override the references' tolerance: for every metric (0.5) or one metric (top1=0.3); repeatable",
    )


def main(args: argparse.Namespace) -> int:
    overall, per_metric = references.parse_tolerances(args.tolerance)
    paths = args.references or references.default_paths()
    index = references.Index(references.load(paths))
    records = store.load_records(args.records)
    checks = regress.compare(records, index, overall, per_metric)
    if not checks:
        raise UserError(
            f"none of the {len(records)} records under {args.records} has a reference in "
            f"{', '.join(map(str, paths))}; nothing was checked (is the backbone or task name the registry's?)"
        )
    print(regress.format_table(checks))
    return 0 if all(c.passed for c in checks) else 1
