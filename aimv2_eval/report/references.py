"""Reference numbers to compare measured cells with: the paper's tables and the project's own pinned runs.

A reference CSV has one row per cell: backbone, task, metric, value, tolerance, table, resolution, setting, plus
provenance columns (the paper's row, benchmark and metric labels, or the pinned seeds and their spread).
results/paper/ is generated from ../shared/paper/tables/ by scripts/build_paper_refs.py; results/embedded/ is
pinned from measured runs by scripts/pin_embedded_refs.py.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aimv2_eval.errors import UserError
from aimv2_eval.report.names import REFERENCE_ALIASES, paper_label

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO_ROOT / "results" / "paper"
EMBEDDED_DIR = REPO_ROOT / "results" / "embedded"

COLUMNS = (
    "backbone",
    "task",
    "metric",
    "value",
    "tolerance",
    "table",
    "resolution",
    "setting",
    "pretrain_samples",
    "paper_model",
    "paper_architecture",
    "paper_benchmark",
    "paper_metric",
    "paper_note",
)
EMBEDDED_COLUMNS = (*COLUMNS[:8], "seeds", "std", "protocol_hash")

# How far a faithful reproduction may land from a paper number, in the metric's own units (points for
# percentages). The project's choice, not the paper's: the paper prints one decimal and no seed spread. Probe and
# detection headline numbers move by a few tenths between seeds; AP on small subsets (s, r), VQA-style scores,
# CIDEr and the MME score (out of 2000) move more.
DEFAULT_TOLERANCE = {
    "top1": 0.5,
    "ap": 0.5,
    "box_ap": 0.5,
    "mask_ap": 0.5,
    "p_at_1": 0.5,
    "ap_s": 1.0,
    "ap_m": 1.0,
    "ap_l": 1.0,
    "ap_r": 1.5,
    "ap_c": 1.0,
    "ap_f": 1.0,
    "box_ap_s": 1.0,
    "box_ap_m": 1.0,
    "box_ap_l": 1.0,
    "mask_ap_s": 1.0,
    "mask_ap_m": 1.0,
    "mask_ap_l": 1.0,
    "accuracy": 1.0,
    "anls": 1.0,
    "relaxed_accuracy": 1.0,
    "average_score": 1.0,
    "cider": 2.0,
    "mme_perception": 20.0,
}
# Pinned embedded references: tolerance = max(SPREAD_SIGMAS x seed std, seed range, MIN_EMBEDDED_TOLERANCE).
SPREAD_SIGMAS = 3.0
MIN_EMBEDDED_TOLERANCE = 1.0


# The paper's head-selection rule as a second metric. A plugin that chooses its reported head on a split other than
# the test split (the probe: lr x wd grid of Table A2, chosen on a validation split held out from training) also
# records the head with the best test top-1, the rule behind the paper's numbers, as '<metric>_paper_rule'. A paper
# reference is compared with that number (like for like); a pinned reference, measured with our own rule, with the
# main metric.
PAPER_RULE_SUFFIX = "_paper_rule"


def paper_rule_metric(metric: str) -> str:
    """'top1' -> 'top1_paper_rule'."""
    return metric + PAPER_RULE_SUFFIX


def base_metric(metric: str) -> str:
    """'top1_paper_rule' -> 'top1'; any other name unchanged."""
    return metric.removesuffix(PAPER_RULE_SUFFIX)


def default_tolerance(metric: str) -> float:
    if metric not in DEFAULT_TOLERANCE:
        raise KeyError(f"no default tolerance for metric {metric!r}; add it to DEFAULT_TOLERANCE")
    return DEFAULT_TOLERANCE[metric]


@dataclass(frozen=True)
class Reference:
    backbone: str
    task: str
    metric: str
    value: float | None  # None: the paper prints no number in this cell
    tolerance: float
    table: str
    resolution: str = ""
    setting: str = ""
    source: str = ""  # the CSV file it came from
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backbone, self.task, self.metric)

    @property
    def is_paper(self) -> bool:
        """A number from the paper (compared with the paper-rule metric), not one pinned from our own runs."""
        return self.table != "embedded"

    @property
    def label(self) -> str:
        """The paper's own row label, when the reference comes from the paper."""
        model = self.extra.get("paper_model", "")
        return paper_label(model, self.extra.get("paper_architecture", ""), self.resolution) if model else ""


def _float(text: str, path: Path, column: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: column {column!r} has {text!r}, not a number; fix the reference file") from None


def read_csv(path: Path) -> list[Reference]:
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"backbone", "task", "metric", "value", "tolerance", "table"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{path} is not a reference table (missing columns {sorted(missing)})")
        refs = []
        for row in reader:
            tol = _float(row["tolerance"], path, "tolerance")
            refs.append(
                Reference(
                    backbone=row["backbone"],
                    task=row["task"],
                    metric=row["metric"],
                    value=_float(row["value"], path, "value"),
                    tolerance=default_tolerance(row["metric"]) if tol is None else tol,
                    table=row["table"],
                    resolution=row.get("resolution", ""),
                    setting=row.get("setting", ""),
                    source=str(path),
                    extra={k: v for k, v in row.items() if k not in Reference.__dataclass_fields__ and v},
                )
            )
    return refs


def load(paths: Iterable[Path]) -> list[Reference]:
    """All references in the given CSV files and folders (every *.csv inside), in a stable order."""
    refs: list[Reference] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(p.glob("*.csv"))
        elif p.is_file():
            files = [p]
        else:
            raise UserError(f"no reference table at {p}; pass --references with a CSV file or folder")
        for f in files:
            refs.extend(read_csv(f))
    return refs


def default_paths() -> list[Path]:
    """results/paper and results/embedded beside the package (a source checkout)."""
    paths = [p for p in (PAPER_DIR, EMBEDDED_DIR) if p.is_dir()]
    if not paths:
        raise UserError(f"no references found under {REPO_ROOT / 'results'}; pass --references DIR")
    return paths


class Index:
    """References by (backbone, task, metric). Where several tables hold the same cell (Table 3 and B2, Table 4
    and D1/D2) the values agree and the first one stands for all. Cells whose tables disagree (ablation rows that
    differ only by setting) are ambiguous: listed in `ambiguous`, never matched."""

    def __init__(self, refs: Sequence[Reference]) -> None:
        self.refs = list(refs)
        self._by_key: dict[tuple[str, str, str], Reference] = {}
        self.ambiguous: set[tuple[str, str, str]] = set()
        for r in refs:
            if r.value is None:
                continue
            first = self._by_key.get(r.key)
            if first is None:
                self._by_key[r.key] = r
            elif not math.isclose(first.value, r.value, abs_tol=1e-9):  # type: ignore[arg-type]
                self.ambiguous.add(r.key)
        for key in self.ambiguous:
            del self._by_key[key]
        self._metrics: dict[tuple[str, str], list[str]] = {}
        for b, t, m in self._by_key:
            self._metrics.setdefault((b, t), []).append(m)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, backbone: str, task: str, metric: str, main_metric: str | None = None) -> Reference | None:
        """The reference for a measured metric. A record's headline metric also matches the task's only
        reference metric when the names differ (e.g. a plugin calls top-1 'accuracy')."""
        backbone = REFERENCE_ALIASES.get((backbone, task), backbone)
        ref = self._by_key.get((backbone, task, metric))
        if ref is not None:
            return ref
        metrics = self._metrics.get((backbone, task), [])
        if metric == main_metric and len(metrics) == 1:
            return self._by_key[(backbone, task, metrics[0])]
        return None

    def tables(self) -> list[str]:
        return list(dict.fromkeys(r.table for r in self.refs))


def parse_tolerances(items: Sequence[str] | None) -> tuple[float | None, dict[str, float]]:
    """`--tolerance 0.5` (every metric) and/or `--tolerance top1=0.3` (one metric), repeatable."""
    overall: float | None = None
    per_metric: dict[str, float] = {}
    for item in items or ():
        name, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--tolerance {item!r}: expected a number or METRIC=NUMBER, e.g. top1=0.3") from None
        if number < 0:
            raise UserError(f"--tolerance {item!r}: a tolerance cannot be negative")
        if sep:
            per_metric[name] = number
        else:
            overall = number
    return overall, per_metric


def tolerance_for(ref: Reference, overall: float | None = None, per_metric: dict[str, float] | None = None) -> float:
    if per_metric and ref.metric in per_metric:
        return per_metric[ref.metric]
    if overall is not None:
        return overall
    return ref.tolerance


def pinned_tolerance(values: Sequence[float], sigmas: float = SPREAD_SIGMAS, floor: float = MIN_EMBEDDED_TOLERANCE) -> float:
    """Tolerance from the seed spread of a pinned cell, rounded up to 0.01."""
    spread = max(values) - min(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return math.ceil(max(sigmas * std, spread, floor) * 100 - 1e-9) / 100


def write_csv(path: Path, rows: Sequence[dict[str, object]], columns: Sequence[str]) -> Path:
    """Write reference rows (dicts) with a fixed column order; written whole, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    tmp.replace(path)
    return path
