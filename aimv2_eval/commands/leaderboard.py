"""`aimv2-eval leaderboard`: leaderboard CSV, markdown, paper-layout tables and a plot, built from result records."""

from __future__ import annotations

import argparse
from pathlib import Path

from aimv2_eval.config import home, records_home
from aimv2_eval.errors import UserError
from aimv2_eval.report import leaderboard, references, store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=Path, default=records_home(),
                        help="folder of result records (default: $AIMV2_EVAL_HOME/records = %(default)s)")
    parser.add_argument(
        "--out", default=str(home() / "leaderboard" / "leaderboard.csv"),
        help="leaderboard CSV; the .md, per-table CSVs and .png are written beside it (%(default)s)",
    )
    parser.add_argument(
        "--references", type=Path, action="append",
        help="reference CSV file or folder (default: results/paper and the pinned results/embedded); repeatable",
    )


def check_out(raw: str) -> Path:
    """Every file the leaderboard writes can be written: checked before any record is read."""
    from aimv2_eval.paths import writable_file

    out = writable_file(raw, "--out", example="leaderboard.csv")
    for path in leaderboard.output_paths(out)[1:]:
        if path.is_dir():
            raise UserError(f"--out {raw}: the leaderboard also writes {path}, which is a folder; remove it or "
                            "choose another --out")
    return out


def main(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    records = store.load_for_report(args.records, "leaderboard")
    paths = args.references or references.default_paths()
    index = references.Index(references.load(paths))
    board = leaderboard.build(records, index)
    for path in leaderboard.write_all(board, out):
        print(path)
    for note in board.notes:
        print(f"note: {note}")
    return 0
