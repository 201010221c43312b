"""The leaderboard: measured cells (seed mean and spread) beside the paper's numbers, built from records only.

Outputs: a CSV (one row per backbone and resolution, five columns per task metric: mean, std, n, paper, delta), the
same as markdown, the paper's own layouts (Tables 3/B2, 4, 7, D3) rebuilt from records, and a PNG of measured vs
paper. A cell that was never measured stays empty; paper numbers appear only beside measured ones.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimv2_eval.report.references import Index, Reference

# The paper layouts rebuilt from records: output suffix -> (title, the paper tables whose rows and columns it uses).
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "table3": ("Table 3 / B2: attentive probe, frozen trunk (top-1 %)", ("3", "B2")),
    "table4": ("Table 4: open-vocabulary detection and referring expressions", ("4",)),
    "table7": ("Table 7: LLaVA-style instruction tuning", ("7",)),
    "tableD3": ("Table D3: ViTDet Mask R-CNN on COCO17 val", ("D3",)),
}


@dataclass
class Cell:
    """One metric of one (backbone, resolution, task, protocol) over its seeds."""

    backbone: str
    resolution: str
    task: str
    protocol_hash: str
    metric: str
    main_metric: str | None
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    created: str = ""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _resolution(record: dict[str, Any]) -> str:
    res = (record.get("backbone") or {}).get("resolution")
    return "" if res is None else str(res)


def measure(records: Sequence[dict[str, Any]]) -> list[Cell]:
    """Every numeric metric of every (backbone, resolution, task, protocol hash), over its seeds."""
    cells: dict[tuple[str, str, str, str, str], Cell] = {}
    for rec in sorted(records, key=lambda r: (r["cell"]["seed"], r.get("created", ""))):
        c = rec["cell"]
        res = _resolution(rec)
        for metric, raw in sorted(rec.get("metrics", {}).items()):
            value = _number(raw)
            if value is None:
                continue
            key = (c["backbone"], res, c["task"], c["protocol_hash"], metric)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = Cell(c["backbone"], res, c["task"], c["protocol_hash"], metric, rec.get("main_metric"))
            cell.values.append(value)
            cell.seeds.append(int(c["seed"]))
            cell.created = max(cell.created, str(rec.get("created", "")))
    return list(cells.values())


def latest_protocol(cells: Sequence[Cell]) -> tuple[list[Cell], list[str]]:
    """One protocol per (backbone, resolution, task): the most recently measured one. Returns the kept cells and a
    note for every protocol left out, so a leaderboard never mixes two protocols in one number."""
    created: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for c in cells:
        seen = created[(c.backbone, c.resolution, c.task)]
        seen[c.protocol_hash] = max(seen.get(c.protocol_hash, ""), c.created)
    chosen, notes = {}, []
    for key, seen in created.items():
        chosen[key] = newest = max(seen, key=lambda h: (seen[h], h))
        if len(seen) > 1:
            older = ", ".join(sorted(set(seen) - {newest}))
            notes.append(f"{key[0]} {key[2]}: protocol {newest} shown; older protocol(s) {older} left out")
    kept = [c for c in cells if chosen[(c.backbone, c.resolution, c.task)] == c.protocol_hash]
    return kept, notes


@dataclass
class Leaderboard:
    rows: list[tuple[str, str]]  # (backbone, resolution)
    columns: list[tuple[str, str]]  # (task, metric)
    cells: dict[tuple[str, str, str, str], Cell]  # (backbone, resolution, task, metric) -> measured
    index: Index
    notes: list[str]

    def reference(self, cell: Cell) -> Reference | None:
        return self.index.get(cell.backbone, cell.task, cell.metric, cell.main_metric)

    def delta(self, cell: Cell) -> float | None:
        ref = self.reference(cell)
        return None if ref is None or ref.value is None else cell.mean - ref.value


def build(records: Sequence[dict[str, Any]], index: Index) -> Leaderboard:
    cells, notes = latest_protocol(measure(records))
    order: dict[tuple[str, str], int] = {}
    for r in index.refs:
        order.setdefault((r.task, r.metric), len(order))
    columns = sorted({(c.task, c.metric) for c in cells}, key=lambda k: (order.get(k, len(order)), k))
    rows = sorted({(c.backbone, c.resolution) for c in cells})
    by_key = {(c.backbone, c.resolution, c.task, c.metric): c for c in cells}
    return Leaderboard(rows, columns, by_key, index, notes)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{round(x, digits):g}" if abs(x) < 1e6 else f"{x:.{digits}g}"


def write_csv(lb: Leaderboard, path: Path) -> Path:
    header = ["backbone", "resolution"]
    for task, metric in lb.columns:
        header += [f"{task}/{metric} {part}" for part in ("mean", "std", "n", "paper", "delta")]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for backbone, res in lb.rows:
            line = [backbone, res]
            for task, metric in lb.columns:
                cell = lb.cells.get((backbone, res, task, metric))
                if cell is None:
                    line += [""] * 5  # never measured: empty, never filled from the paper
                    continue
                ref = lb.reference(cell)
                line += [
                    _fmt(cell.mean),
                    _fmt(cell.std),
                    str(cell.n),
                    "" if ref is None else _fmt(ref.value),
                    _fmt(lb.delta(cell)),
                ]
            w.writerow(line)
    return path


def _md_cell(lb: Leaderboard, cell: Cell | None, with_paper: bool = True) -> str:
    if cell is None:
        return ""
    text = f"{cell.mean:.2f}"
    if cell.std is not None:
        text += f" ± {cell.std:.2f}"
    text += f" [{cell.n}]"
    ref = lb.reference(cell)
    if with_paper and ref is not None and ref.value is not None:
        text += f" (paper {ref.value:g}, Δ {cell.mean - ref.value:+.2f})"
    return text


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(lb: Leaderboard) -> str:
    header = ["backbone", "resolution", *[f"{t} {m}" for t, m in lb.columns]]
    rows = [
        [b, r, *[_md_cell(lb, lb.cells.get((b, r, t, m))) for t, m in lb.columns]] for b, r in lb.rows
    ]
    text = "# Leaderboard\n\nmean ± std over seeds [number of seeds] (paper value, Δ = measured − paper)\n\n"
    text += _md_table(header, rows) + "\n"
    if lb.notes:
        text += "\n" + "\n".join(f"- {n}" for n in lb.notes) + "\n"
    return text


@dataclass
class Layout:
    """A paper table rebuilt from records: its columns, and one row per measured backbone."""

    name: str
    title: str
    columns: list[tuple[str, str, str]]  # (task, metric, header)
    rows: list[tuple[str, str, str]]  # (backbone, resolution, paper row label)


def layout(lb: Leaderboard, name: str) -> Layout:
    title, tables = LAYOUTS[name]
    refs = [r for r in lb.index.refs if r.table in tables]
    bench_metrics: dict[str, set[str]] = defaultdict(set)
    for r in refs:
        bench_metrics[r.extra.get("paper_benchmark", r.task)].add(r.metric)
    columns: dict[tuple[str, str], str] = {}
    for r in refs:
        bench = r.extra.get("paper_benchmark", r.task)
        header = bench if len(bench_metrics[bench]) == 1 else f"{bench} {r.extra.get('paper_metric', r.metric)}"
        columns.setdefault((r.task, r.metric), header)
    labels: dict[str, str] = {}
    for r in refs:
        labels.setdefault(r.backbone, r.label)
    measured = [(b, res) for b, res in lb.rows if any((b, res, t, m) in lb.cells for t, m in columns)]
    paper_order = {b: i for i, b in enumerate(labels)}
    measured.sort(key=lambda k: (paper_order.get(k[0], len(paper_order)), k))
    return Layout(
        name,
        title,
        [(t, m, h) for (t, m), h in columns.items()],
        [(b, res, labels.get(b, "")) for b, res in measured],
    )


def write_layout_csv(lb: Leaderboard, lay: Layout, path: Path) -> Path:
    header = ["backbone", "resolution", "paper row"]
    for _, _, h in lay.columns:
        header += [h, f"{h} paper", f"{h} delta"]
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for b, res, label in lay.rows:
            line = [b, res, label]
            for t, m, _ in lay.columns:
                cell = lb.cells.get((b, res, t, m))
                ref = lb.reference(cell) if cell else None
                line += ["", "", ""] if cell is None else [
                    _fmt(cell.mean), "" if ref is None else _fmt(ref.value), _fmt(lb.delta(cell))
                ]
            w.writerow(line)
    return Path(path)


def layout_markdown(lb: Leaderboard, lay: Layout) -> str:
    header = ["backbone", "paper row", *[h for _, _, h in lay.columns]]
    rows = []
    for b, res, label in lay.rows:
        line = [f"{b} ({res})" if res else b, label]
        for t, m, _ in lay.columns:
            cell = lb.cells.get((b, res, t, m))
            delta = lb.delta(cell) if cell else None
            line.append("" if cell is None else f"{cell.mean:.1f}" + ("" if delta is None else f" ({delta:+.1f})"))
        rows.append(line)
    body = _md_table(header, rows) if rows else "(no measured cell in this table's benchmarks)"
    return f"## {lay.title}\n\nmeasured seed mean (measured − paper)\n\n{body}\n"


def plot(lb: Leaderboard, path: Path) -> Path | None:
    """Measured vs paper, one panel per task metric that has at least one measured cell with a paper value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[tuple[float, Cell]]] = defaultdict(list)
    for cell in lb.cells.values():
        ref = lb.reference(cell)
        if ref is not None and ref.value is not None:
            panels[(cell.task, cell.metric)].append((ref.value, cell))
    if not panels:
        return None
    keys = [k for k in lb.columns if k in panels]
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = panels[key]
        xs, ys = [p for p, _ in pts], [c.mean for _, c in pts]
        errs = [c.std or 0.0 for _, c in pts]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3)
        lo, hi = min(xs + ys) - 1, max(xs + ys) + 1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = paper")
        for x, (_, c) in zip(xs, pts):
            ax.annotate(c.backbone, (x, c.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{key[0]} {key[1]}", fontsize=9)
        ax.set_xlabel("paper")
        ax.set_ylabel("measured (seed mean ± std)")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(lb: Leaderboard, out_csv: Path) -> list[Path]:
    """leaderboard.csv, .md (with the paper layouts), one CSV per paper layout, and the PNG, side by side."""
    out_csv = Path(out_csv)
    written = [write_csv(lb, out_csv)]
    md = to_markdown(lb)
    for name in LAYOUTS:
        lay = layout(lb, name)
        written.append(write_layout_csv(lb, lay, out_csv.with_name(f"{out_csv.stem}_{name}.csv")))
        md += "\n" + layout_markdown(lb, lay)
    md_path = out_csv.with_suffix(".md")
    md_path.write_text(md)
    written.append(md_path)
    png = plot(lb, out_csv.with_suffix(".png"))
    if png is not None:
        written.append(png)
    return written
