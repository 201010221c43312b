"""`aimv2-eval leaderboard`: leaderboard CSV, markdown, paper-layout tables and a plot, built from result records."""

from __future__ import annotations

import argparse
from pathlib import Path

from aimv2_eval.report import leaderboard, references, store

DEFAULT_RECORDS = Path("records")
DEFAULT_OUT = Path("results/leaderboard/leaderboard.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="folder of result records (%(default)s)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help="leaderboard CSV; the .md, per-table CSVs and .png are written beside it (%(default)s)",
    )
    parser.add_argument(
        "--references", type=Path, action="append",
        help="paper reference CSV file or folder (default: results/paper); repeatable",
    )


def main(args: argparse.Namespace) -> int:
    records = store.load_records(args.records)
    paths = args.references or [references.PAPER_DIR]
    index = references.Index(references.load(paths))
    board = leaderboard.build(records, index)
    for path in leaderboard.write_all(board, args.out):
        print(path)
    if not records:
        print(f"note: no records under {args.records}; the tables are empty")
    for note in board.notes:
        print(f"note: {note}")
    return 0
