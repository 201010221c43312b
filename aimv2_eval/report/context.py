"""What a measured number means: its chance level or trivial baseline, the random-init twin, and the reference
(paper or pinned) with its tolerance and verdict. The last line of `run` prints it; the leaderboard's columns hold
the same values.

Baselines come from the record: chance from the task's class count (or the candidates a LiT evaluation scored
against), and the trivial predictors the plugins measure beside every cell (answer prior, largest box, whole image).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Where each plugin keeps its trivial predictors' metrics in the record's details: name -> detail key.
_BASELINE_DETAILS = {"answer prior": "baseline_answer_prior", "largest box": "baseline_largest_box"}


def chance(record: dict[str, Any]) -> float | None:
    """The main metric's value for uniform guessing (top-k over C classes: 100 k / C), where it is defined."""
    main = record.get("main_metric") or ""
    lit = (record.get("details") or {}).get("chance_top1") or {}
    if main in lit:
        return float(lit[main])
    classes = ((record.get("task_config") or {}).get("data") or {}).get("num_classes")
    if classes and main in ("top1", "top5"):
        return 100.0 * min(int(main[3:]), classes) / classes
    return None


def baselines(record: dict[str, Any]) -> dict[str, float]:
    """name -> the main metric of each trivial predictor the record holds (chance included)."""
    main = record.get("main_metric")
    details = record.get("details") or {}
    found = {}
    if (c := chance(record)) is not None:
        found["chance"] = c
    named = {name: details.get(key) for name, key in _BASELINE_DETAILS.items()}
    named |= {name.replace("_", " "): m for name, m in (details.get("baselines") or {}).items()}
    for name, metrics in named.items():
        if isinstance(metrics, dict) and isinstance(metrics.get(main), int | float):
            found[name] = float(metrics[main])
    return found


def random_init_twin(record: dict[str, Any], others: Sequence[dict[str, Any]]) -> list[float]:
    """The main metric of every record of the same task and resolved protocol whose backbone is this one with
    random weights (`<name>-random`)."""
    c = record["cell"]
    protocol = (record.get("task_config") or {}).get("resolved_protocol")
    return [float(o["metrics"][record["main_metric"]]) for o in others
            if o["cell"]["backbone"] == f"{c['backbone']}-random" and o["cell"]["task"] == c["task"]
            and (o.get("task_config") or {}).get("resolved_protocol") == protocol
            and isinstance((o.get("metrics") or {}).get(record["main_metric"]), int | float)]


def reference_check(record: dict[str, Any]):
    """The regression check of the record's main metric against its own protocol's reference, or None."""
    from aimv2_eval.errors import UserError
    from aimv2_eval.report import references, regress

    try:
        index = references.Index(references.load(references.default_paths()))
    except UserError:  # an installed package without results/: no references to compare with
        return None
    checks = regress.compare([record], index).checks  # a paper reference faces the paper-rule twin of the metric
    return next((c for c in checks if references.base_metric(c.cell.metric) == record["main_metric"]), None)


def check_text(check: Any) -> str:
    """`pinned reference (seeds 1 2 3) 74.56 ± 7.24: pass`; where the number compared is not the main metric, it is
    named: `paper Table 3 86.6 ± 0.5 on top1_paper_rule 86.90: pass`."""
    cell, ref = check.cell, check.reference
    on = "" if cell.metric == cell.main_metric else f" on {cell.metric} {cell.mean:.2f}"
    return f"{describe_source(ref)} {ref.value:g} ± {check.tolerance:g}{on}: {'pass' if check.passed else 'FAIL'}"


def describe_source(ref: Any) -> str:
    """'pinned (seeds 1 2 3)' for the project's own references, 'paper Table 3' for the paper's."""
    if ref.table == "embedded":
        seeds = ref.extra.get("seeds", "")
        return f"pinned reference (seeds {seeds})" if seeds else "pinned reference"
    return f"paper Table {ref.table}"


def context_parts(record: dict[str, Any], others: Sequence[dict[str, Any]] = (), value: float | None = None) -> list[str]:
    """`chance 10.00 (at chance)`, `answer prior 31.20`, `random-init 70.00`: the baselines of the record's main
    metric, and its random-init twin among `others`; `value`: the number to judge (default: the record's own)."""
    value = float(record["metrics"][record["main_metric"]]) if value is None else value
    parts = []
    for name, base in baselines(record).items():
        at = " (at chance)" if name == "chance" and value <= base + max(1.0, 0.05 * base) else ""
        parts.append(f"{name} {base:.2f}{at}")
    twins = random_init_twin(record, others)
    if twins:
        parts.append(f"random-init {sum(twins) / len(twins):.2f}")
    return parts


def context_line(record: dict[str, Any], records_root: Path | None = None) -> str:
    """`chance 10.0 (at chance) | random-init 70.1 | pinned reference (seeds 1 2 3) 74.56 ± 7.24: pass`."""
    others: list[dict[str, Any]] = []
    if records_root is not None and Path(records_root).is_dir():
        from aimv2_eval.report.store import scan_records

        others = scan_records(Path(records_root))[0]
    parts = context_parts(record, others)
    check = reference_check(record)
    if check is not None:
        parts.append(check_text(check))
    return " | ".join(parts)
