"""Regression checks: every measured cell that has a reference, its seed mean against the reference value.

A cell passes when |measured - reference| <= tolerance. Both directions count: a number far above the paper or the
pinned value (a label leak, evaluation on the training split) is as suspicious as one below it. A cell is compared
only with a reference of its own protocol (`protocols.mismatch`: a pinned reference's hash, or the task's default
protocol for a paper reference); the others are skipped and counted with the reason. Like for like: a paper
reference is compared with the paper's head-selection rule (`top1_paper_rule`: the probe head with the best test
top-1), a pinned reference with the main metric (`top1`: the head chosen on validation); the metric column says which.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aimv2_eval.errors import UserError
from aimv2_eval.report import protocols
from aimv2_eval.report.context import describe_source
from aimv2_eval.report.leaderboard import Cell, find_reference, measure
from aimv2_eval.report.references import (
    MIN_EMBEDDED_TOLERANCE,
    PAPER_RULE_SUFFIX,
    SPREAD_SIGMAS,
    Index,
    Reference,
    base_metric,
    paper_rule_metric,
    pinned_tolerance,
    tolerance_for,
)
from aimv2_eval.report.tables import text_table


@dataclass(frozen=True)
class Check:
    cell: Cell
    reference: Reference
    tolerance: float

    @property
    def delta(self) -> float:
        return self.cell.mean - self.reference.value  # type: ignore[operator]

    @property
    def passed(self) -> bool:
        # a hair of slack so that a value printed exactly at the tolerance passes despite float rounding
        return abs(self.delta) <= self.tolerance + 1e-9


@dataclass
class Comparison:
    checks: list[Check]
    # reason -> the records (backbone, task, protocol hash, seed) skipped for it
    skipped: dict[str, set[tuple[str, str, str, int]]] = field(default_factory=dict)
    # warning -> the records (backbone, task, protocol hash, seed) it concerns: checked, but not like for like
    warnings: dict[str, set[tuple[str, str, str, int]]] = field(default_factory=dict)

    def skip_lines(self) -> list[str]:
        return [f"skipped {len(recs)} record(s): {reason}" for reason, recs in sorted(self.skipped.items())]

    def warning_lines(self) -> list[str]:
        return [f"warning: {len(recs)} record(s) {text}" for text, recs in sorted(self.warnings.items())]


NO_REFERENCE = "no reference for this backbone and task"


def not_like_for_like(cell: Cell) -> str:
    return (f"chose their head on {cell.selected_on} and hold neither {paper_rule_metric(cell.metric)} nor "
            f"selection.oracle_test_top1: compared with the paper on {cell.metric}, not like for like")


def compare(
    records: Sequence[dict[str, Any]],
    index: Index,
    overall: float | None = None,
    per_metric: dict[str, float] | None = None,
) -> Comparison:
    """One check per measured (backbone, task, protocol, metric) that has a reference of its own protocol; the
    records of every other cell are skipped, by reason."""
    cells = measure(records)
    by_key = {c.key: c for c in cells}
    checks, skipped, warnings = [], defaultdict(set), defaultdict(set)
    checked: set[tuple[str, str, str]] = set()
    for cell in cells:
        ref = find_reference(index, cell, by_key)  # a paper reference: the paper-rule twin, where there is one
        if ref is None or ref.value is None:
            continue
        reason = protocols.mismatch(ref.extra.get("protocol_hash", ""), cell.protocol_hash, cell.overrides)
        if reason:
            skipped[reason].update(_record_keys(cell))
            continue
        checks.append(Check(cell, ref, tolerance_for(ref, overall, per_metric)))
        checked.add((cell.backbone, cell.task, cell.protocol_hash))
        if ref.is_paper and cell.selected_on and cell.metric == base_metric(cell.metric):
            warnings[not_like_for_like(cell)].update(_record_keys(cell))
    for cell in cells:  # a record none of whose metrics has a reference at all
        keys = _record_keys(cell)
        if (cell.backbone, cell.task, cell.protocol_hash) not in checked and not any(keys & s for s in skipped.values()):
            skipped[NO_REFERENCE].update(keys)
    checks.sort(key=lambda c: (c.cell.backbone, c.cell.task, c.cell.metric, c.cell.protocol_hash))
    return Comparison(checks, dict(skipped), dict(warnings))


def _record_keys(cell: Cell) -> set[tuple[str, str, str, int]]:
    return {(cell.backbone, cell.task, cell.protocol_hash, seed) for seed in cell.seeds}


def format_table(checks: Sequence[Check]) -> str:
    header = ("status", "backbone", "task", "metric", "seeds", "measured", "reference", "delta", "tolerance", "source")
    rows = []
    for c in checks:
        std = f" ± {c.cell.std:.2f}" if c.cell.std is not None else ""
        source = describe_source(c.reference)
        rows.append((
            "pass" if c.passed else "FAIL",
            c.cell.backbone,
            c.cell.task,
            c.cell.metric if c.cell.metric == c.reference.metric else f"{c.cell.metric}->{c.reference.metric}",
            str(c.cell.n),
            f"{c.cell.mean:.2f}{std}",
            f"{c.reference.value:g}",
            f"{c.delta:+.2f}",
            f"{c.tolerance:g}",
            source,
        ))
    failed = sum(not c.passed for c in checks)
    text = text_table(header, rows) + f"\n{len(checks)} checked, {len(checks) - failed} passed, {failed} failed"
    if any(c.cell.metric.endswith(PAPER_RULE_SUFFIX) for c in checks):
        text += ("\n<metric>_paper_rule: the probe head with the best test top-1, the paper's rule, compared with "
                 "paper references; <metric>: the head chosen on validation, compared with pinned references")
    return text


def pin_rows(
    records: Sequence[dict[str, Any]],
    setting: str = "",
    min_seeds: int = 2,
    sigmas: float = SPREAD_SIGMAS,
    floor: float = MIN_EMBEDDED_TOLERANCE,
) -> list[dict[str, str]]:
    """Reference rows (EMBEDDED_COLUMNS) pinned from measured records: the headline metric of each
    (backbone, task), its seed mean as the value and its seed spread as the tolerance (`pinned_tolerance`)."""
    cells = [c for c in measure(records) if c.metric == c.main_metric]
    rows: list[dict[str, str]] = []
    seen: dict[tuple[str, str], str] = {}
    for c in sorted(cells, key=lambda c: (c.backbone, c.task)):
        key = (c.backbone, c.task)
        if key in seen:
            raise UserError(
                f"{c.backbone} {c.task} was measured under two protocols ({seen[key]}, {c.protocol_hash}); "
                "pin from a records folder that holds one run per seed"
            )
        seen[key] = c.protocol_hash
        if c.n < min_seeds:
            raise UserError(f"{c.backbone} {c.task}: {c.n} seed(s), pinning needs at least {min_seeds}")
        rows.append({
            "backbone": c.backbone,
            "task": c.task,
            "metric": c.metric,
            "value": f"{c.mean:.2f}",
            "tolerance": f"{pinned_tolerance(c.values, sigmas, floor):.2f}",
            "table": "embedded",
            "resolution": c.resolution,
            "setting": setting,
            "seeds": " ".join(str(s) for s in c.seeds),
            "std": f"{c.std:.3f}",
            "protocol_hash": c.protocol_hash,
        })
    return rows
