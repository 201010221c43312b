"""Build results/paper/*.csv (the project's reference tables) from the paper's cleaned tables.

    python scripts/build_paper_refs.py [--tables ../shared/paper/tables] [--out results/paper]

Every result row of the paper's Tables 3, 4, 5, 6, 7, 8, 9, B2, C3, D1, D2, D3 is copied with its value string
untouched, and given project names (aimv2_eval/report/names.py) and a tolerance (aimv2_eval/report/references.py).
Run it again after changing either module; tests/test_paper_refs.py checks the output cell for cell.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from aimv2_eval.report import names
from aimv2_eval.report.references import COLUMNS, Index, default_tolerance, read_csv, write_csv

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TABLES = REPO.parent / "shared" / "paper" / "tables"
DEFAULT_OUT = REPO / "results" / "paper"

# Output file -> the paper's CSV it comes from (../shared/paper/tables/).
SOURCES = {
    "table3.csv": "table3_frozen_trunk_probe.csv",
    "table4.csv": "table4_grounding.csv",
    "table5.csv": "table5_zero_shot_lit.csv",
    "table6.csv": "table6_native_resolution.csv",
    "table7.csv": "table7_multimodal_instruction_tuning.csv",
    "table8.csv": "table8_icl_fewshot.csv",
    "table9.csv": "table9_ablations.csv",
    "tableB2.csv": "tableB2_highres_probe.csv",
    "tableC3.csv": "tableC3_cambrian_tiling.csv",
    "tableD1.csv": "tableD1_ovd_breakdown.csv",
    "tableD2.csv": "tableD2_window_size_ablation.csv",
    "tableD3.csv": "tableD3_coco_vitdet_maskrcnn.csv",
}


def convert_row(row: dict[str, str]) -> dict[str, str]:
    table, model, arch = row["table"], row["model"], row["architecture"]
    res, samples, setting = row["resolution"], row["pretrain_samples"], row["setting"]
    registered = names.registry_backbone(table, model, arch, res, samples, setting)
    metric = names.metric_name(row["metric"])
    return {
        "backbone": registered or names.paper_label(model, arch),
        "task": names.task_name(table, row["benchmark"], setting),
        "metric": metric,
        "value": row["value"],  # the paper's string, unchanged (empty: no number printed)
        "tolerance": f"{default_tolerance(metric):g}",
        "table": table,
        "resolution": res,
        "setting": setting,
        "pretrain_samples": samples,
        "paper_model": model,
        "paper_architecture": arch,
        "paper_benchmark": row["benchmark"],
        "paper_metric": row["metric"],
        "paper_note": row["source_note"],
    }


def build(tables: Path, out: Path) -> list[Path]:
    if not tables.is_dir():
        sys.exit(f"no paper tables at {tables}; pass --tables DIR (a copy of ../shared/paper/tables)")
    written, registered = [], set()
    for name, source in SOURCES.items():
        with (tables / source).open(newline="") as f:
            source_rows = list(csv.DictReader(f))
        rows = [convert_row(r) for r in source_rows]
        registered |= {c["backbone"] for r, c in zip(source_rows, rows) if c["backbone"] != names.paper_label(
            r["model"], r["architecture"])}
        keys = [(r["table"], r["backbone"], r["task"], r["metric"], r["resolution"], r["setting"],
                 r["pretrain_samples"]) for r in rows]
        if len(set(keys)) != len(keys):
            sys.exit(f"{source}: two paper cells map to the same reference key; fix aimv2_eval/report/names.py")
        written.append(write_csv(out / name, rows, COLUMNS))
    # A registered backbone's cell must have one value across tables, or `regress` could not match it.
    index = Index([r for p in written for r in read_csv(p)])
    clash = sorted(k for k in index.ambiguous if k[0] in registered)
    if clash:
        sys.exit(f"cells with different values share a key {clash[:3]}; give them different task names in names.py")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=DEFAULT_TABLES, help="the paper's cleaned tables")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the reference CSVs go")
    args = parser.parse_args(argv)
    for path in build(args.tables, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
