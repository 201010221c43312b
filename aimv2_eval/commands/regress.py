"""`aimv2-eval regress`: measured cells vs the paper's and the pinned embedded references; exit 1 on a regression.

Each cell is compared only with a reference of its own protocol (aimv2_eval/report/protocols.py); the records left
out are counted, one line per reason. Exit 0 when every comparable cell passed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aimv2_eval.config import records_home
from aimv2_eval.errors import UserError
from aimv2_eval.report import references, regress, store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=records_home(),
                        help="folder of result records (default: $AIMV2_EVAL_HOME/records = %(default)s)")
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
    records = store.load_for_report(args.records, "regress")
    result = regress.compare(records, index, overall, per_metric)
    if not result.checks:
        for line in result.skip_lines():
            print(line)
        other_protocol = set(result.skipped) - {regress.NO_REFERENCE}
        hint = "the skipped lines above say why" if other_protocol else "is the backbone or task name the registry's?"
        raise UserError(
            f"none of the {len(records)} records under {args.records} has a reference of its protocol in "
            f"{', '.join(map(str, paths))}; nothing was checked ({hint})"
        )
    print(regress.format_table(result.checks))
    for line in result.skip_lines():  # one line per reason: a record never silently drops out of the check
        print(line)
    for line in result.warning_lines():  # checked, but not like for like (old records without the paper rule)
        print(line)
    return 0 if all(c.passed for c in result.checks) else 1
