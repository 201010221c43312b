"""The leaderboard: measured cells (seed mean and spread) beside their references, built from records only.

One row per (backbone, resolution, task, protocol hash): two protocols of one cell are two rows, never one number,
each with its salient settings (epochs, image size, batch size, precision, feature cache, limit) and the run
options that moved it off the task's default. A reference appears only beside a row of the protocol it measured
(`protocols.mismatch`), and a paper reference beside the paper-rule number of a probe cell, where it has one
(`find_reference`). Outputs: a CSV (per metric: mean, std, reference, delta), the same as markdown, the
paper's own layouts (Tables 3/B2, 4, 7, D3) rebuilt from default-protocol rows, and a PNG of measured vs reference.
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

from aimv2_eval.report import protocols
from aimv2_eval.report.references import Index, Reference, base_metric, paper_rule_metric, tolerance_for

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
    settings: dict[str, Any] = field(default_factory=dict)  # salient settings of the protocol
    overrides: dict[str, Any] = field(default_factory=dict)  # run options off the task's default ({}: default)
    selected_on: str = ""  # the split the record's head was chosen on (probe: 'val'); '': nothing chosen

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.backbone, self.resolution, self.task, self.protocol_hash, self.metric)

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


def _selection(record: dict[str, Any]) -> dict[str, Any]:
    selection = record.get("selection")
    return selection if isinstance(selection, dict) else {}


def record_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The record's metrics. A probe record written before `top1_paper_rule` existed gets it from
    selection.oracle_test_top1: the same number, the grid's best test top-1."""
    metrics = dict(record.get("metrics") or {})
    oracle = _selection(record).get("oracle_test_top1")
    if oracle is not None:
        metrics.setdefault(paper_rule_metric("top1"), oracle)
    return metrics


def measure(records: Sequence[dict[str, Any]]) -> list[Cell]:
    """Every numeric metric of every (backbone, resolution, task, protocol hash), over its seeds."""
    cells: dict[tuple[str, str, str, str, str], Cell] = {}
    for rec in sorted(records, key=lambda r: (r["cell"]["seed"], r.get("created", ""))):
        c = rec["cell"]
        res = _resolution(rec)
        for metric, raw in sorted(record_metrics(rec).items()):
            value = _number(raw)
            if value is None:
                continue
            key = (c["backbone"], res, c["task"], c["protocol_hash"], metric)
            cell = cells.get(key)
            if cell is None:  # one hash, one protocol: its settings are those of any of its records
                cell = cells[key] = Cell(c["backbone"], res, c["task"], c["protocol_hash"], metric,
                                         rec.get("main_metric"), settings=protocols.settings(rec),
                                         overrides=protocols.overrides(rec),
                                         selected_on=str(_selection(rec).get("split") or ""))
            cell.values.append(value)
            cell.seeds.append(int(c["seed"]))
            cell.created = max(cell.created, str(rec.get("created", "")))
    return list(cells.values())


def paper_rule_twin(cell: Cell, cells: dict[tuple[str, str, str, str, str], Cell]) -> Cell | None:
    """The same records' paper-rule number of this metric ('top1' -> 'top1_paper_rule'), if they hold one."""
    return cells.get((*cell.key[:-1], paper_rule_metric(cell.metric)))


def find_reference(index: Index, cell: Cell, cells: dict[tuple[str, str, str, str, str], Cell]) -> Reference | None:
    """The reference a cell faces, whatever its protocol (`protocols.mismatch` judges that). Like for like: the paper
    reports the best head of its sweep, so a paper reference faces the paper-rule twin where the records hold one,
    never the head chosen on validation; a pinned reference, measured with our own rule, faces the main metric."""
    base = base_metric(cell.metric)
    if base != cell.metric:  # a paper-rule number: paper references only
        ref = index.get(cell.backbone, cell.task, base, cell.main_metric)
        return ref if ref is not None and ref.is_paper else None
    ref = index.get(cell.backbone, cell.task, cell.metric, cell.main_metric)
    if ref is not None and ref.is_paper and paper_rule_twin(cell, cells) is not None:
        return None
    return ref


@dataclass
class Row:
    """One protocol of one (backbone, resolution, task): its settings and its metrics."""

    backbone: str
    resolution: str
    task: str
    protocol_hash: str
    settings: dict[str, Any]
    overrides: dict[str, Any]
    cells: dict[str, Cell]  # metric -> measured

    @property
    def main(self) -> Cell:
        first = next(iter(self.cells.values()))
        return self.cells.get(first.main_metric or "", first)


@dataclass
class Leaderboard:
    rows: list[Row]
    metrics: list[str]  # every measured metric, in the references' order
    index: Index
    notes: list[str]
    # default-protocol cells by (backbone, resolution, task, metric): what the paper layouts show
    paper_cells: dict[tuple[str, str, str, str], Cell]
    # per row (backbone, resolution, task, protocol hash): its main metric's baselines and random-init twin
    context: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)  # task -> plugin, for the plot's panels
    cells: dict[tuple[str, str, str, str, str], Cell] = field(default_factory=dict)  # Cell.key -> cell

    def reference(self, cell: Cell) -> Reference | None:
        """The reference of this cell's protocol; None when there is none or it measured another protocol."""
        ref = find_reference(self.index, cell, self.cells)
        return ref if ref is not None and self.mismatch(cell, ref) is None else None

    def mismatch(self, cell: Cell, ref: Reference) -> str | None:
        return protocols.mismatch(ref.extra.get("protocol_hash", ""), cell.protocol_hash, cell.overrides)

    def compared(self, row: Row) -> Cell:
        """The row's cell that faces its main metric's reference: the paper-rule twin for a paper reference (where
        the records hold one), else the main metric."""
        twin = paper_rule_twin(row.main, self.cells)
        return twin if twin is not None and find_reference(self.index, twin, self.cells) is not None else row.main

    def note(self, row: Row) -> str:
        """Why a row's main metric has no reference beside it, when one exists for another protocol."""
        cell = self.compared(row)
        ref = find_reference(self.index, cell, self.cells)
        return "" if ref is None or ref.value is None else self.mismatch(cell, ref) or ""

    def delta(self, cell: Cell) -> float | None:
        ref = self.reference(cell)
        return None if ref is None or ref.value is None else cell.mean - ref.value

    def check(self, cell: Cell) -> str:
        """`pinned reference (seeds 1 2 3) 74.56 ± 7.24: pass` for a cell with a reference of its protocol."""
        from aimv2_eval.report.context import check_text

        ref = self.reference(cell)
        if ref is None or ref.value is None:
            return ""
        from aimv2_eval.report.regress import Check  # regress builds on this module: imported when used

        return check_text(Check(cell, ref, tolerance_for(ref)))

    @property
    def setting_keys(self) -> list[str]:
        return [k for k in protocols.SALIENT if any(k in r.settings for r in self.rows)]


def _rows(cells: Sequence[Cell]) -> list[Row]:
    rows: dict[tuple[str, str, str, str], Row] = {}
    for c in cells:
        key = (c.backbone, c.resolution, c.task, c.protocol_hash)
        if key not in rows:
            rows[key] = Row(*key, c.settings, c.overrides, {})
        rows[key].cells[c.metric] = c
    # per (backbone, resolution, task): the default protocol first, then the newest (two stable sorts)
    order = sorted(rows.values(), key=lambda r: max(c.created for c in r.cells.values()), reverse=True)
    return sorted(order, key=lambda r: (r.backbone, r.resolution, r.task, bool(r.overrides)))


def _paper_cells(cells: Sequence[Cell]) -> tuple[dict[tuple[str, str, str, str], Cell], list[str]]:
    """The default-protocol cell of each (backbone, resolution, task, metric); the newest where several."""
    chosen: dict[tuple[str, str, str, str], Cell] = {}
    notes = set()
    for c in sorted((c for c in cells if not c.overrides), key=lambda c: c.created):
        key = (c.backbone, c.resolution, c.task, c.metric)
        if key in chosen and chosen[key].protocol_hash != c.protocol_hash:
            notes.add(f"{c.backbone} {c.task}: several default protocols; the paper layouts show the newest, "
                      f"{c.protocol_hash}")
        chosen[key] = c
    return chosen, sorted(notes)


def build(records: Sequence[dict[str, Any]], index: Index) -> Leaderboard:
    cells = measure(records)
    order: dict[str, int] = {}
    for r in index.refs:
        order.setdefault(r.metric, len(order))
    # each paper-rule number right after its main metric ('top1', 'top1_paper_rule', 'top5', ...)
    metrics = sorted({c.metric for c in cells},
                     key=lambda m: (order.get(base_metric(m), len(order)), base_metric(m), m != base_metric(m)))
    paper_cells, notes = _paper_cells(cells)
    rows = _rows(cells)
    return Leaderboard(rows, metrics, index, notes, paper_cells, _context(rows, records),
                       {r["cell"]["task"]: (r.get("task_config") or {}).get("plugin") or "other" for r in records},
                       {c.key: c for c in cells})


def _context(rows: Sequence[Row], records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, str], str]:
    """Each row's baselines (chance, trivial predictors) and random-init twin, from one of its records."""
    from aimv2_eval.report.context import context_parts

    first = {}
    for rec in records:
        c = rec["cell"]
        first.setdefault((c["backbone"], _resolution(rec), c["task"], c["protocol_hash"]), rec)
    out = {}
    for row in rows:
        key = (row.backbone, row.resolution, row.task, row.protocol_hash)
        rec = first.get(key)
        if rec is not None and rec.get("main_metric") in (rec.get("metrics") or {}):
            out[key] = "; ".join(context_parts(rec, records, value=row.main.mean))
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{round(x, digits):g}" if abs(x) < 1e6 else f"{x:.{digits}g}"


def _setting(value: Any) -> str:
    if value is None:
        return ""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _head(lb: Leaderboard) -> list[str]:
    return ["backbone", "resolution", "task", "protocol", *lb.setting_keys, "overrides", "seeds", "main metric",
            "baselines", "check"]


def _head_values(lb: Leaderboard, row: Row) -> list[str]:
    return [row.backbone, row.resolution, row.task, row.protocol_hash,
            *[_setting(row.settings.get(k)) for k in lb.setting_keys],
            protocols.describe_overrides(row.overrides), str(row.main.n), row.main.metric,
            lb.context.get((row.backbone, row.resolution, row.task, row.protocol_hash), ""), lb.check(lb.compared(row))]


def write_csv(lb: Leaderboard, path: Path) -> Path:
    header = _head(lb)
    for metric in lb.metrics:
        header += [f"{metric} {part}" for part in ("mean", "std", "reference", "delta")]
    header.append("note")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in lb.rows:
            line = _head_values(lb, row)
            for metric in lb.metrics:
                cell = row.cells.get(metric)
                ref = lb.reference(cell) if cell else None
                line += [""] * 4 if cell is None else [  # never measured: empty, never filled from a reference
                    _fmt(cell.mean), _fmt(cell.std), "" if ref is None else _fmt(ref.value), _fmt(lb.delta(cell))
                ]
            w.writerow([*line, lb.note(row)])
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
        source = "pinned" if ref.table == "embedded" else "paper"
        text += f" ({source} {ref.value:g}, Δ {cell.mean - ref.value:+.2f})"
    return text


PAPER_RULE_LEGEND = ("probe cells: `top1` / `top5` are the grid head chosen on a validation split held out from the "
                     "training data (the main number, beside pinned references); `top1_paper_rule` / `top5_paper_rule` "
                     "are the head with the best test top-1, the paper's rule, beside the paper's reference")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(lb: Leaderboard) -> str:
    header = [*_head(lb), *lb.metrics, "note"]
    rows = [[*_head_values(lb, r), *[_md_cell(lb, r.cells.get(m)) for m in lb.metrics], lb.note(r)] for r in lb.rows]
    text = ("# Leaderboard\n\none row per protocol; mean ± std over seeds [number of seeds] "
            "(reference of the same protocol, Δ = measured − reference)\n\n")
    if any(m != base_metric(m) for m in lb.metrics):
        text += PAPER_RULE_LEGEND + "\n\n"
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
    measured = sorted({(b, res) for b, res, t, m in lb.paper_cells if (t, base_metric(m)) in columns})
    paper_order = {b: i for i, b in enumerate(labels)}
    measured.sort(key=lambda k: (paper_order.get(k[0], len(paper_order)), k))
    return Layout(
        name,
        title,
        [(t, m, h) for (t, m), h in columns.items()],
        [(b, res, labels.get(b, "")) for b, res in measured],
    )


def _layout_cell(lb: Leaderboard, backbone: str, res: str, task: str, metric: str) -> Cell | None:
    """What a paper layout shows: the paper-rule number where the records hold one (like for like), else the metric."""
    cells = lb.paper_cells
    return cells.get((backbone, res, task, paper_rule_metric(metric))) or cells.get((backbone, res, task, metric))


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
                cell = _layout_cell(lb, b, res, t, m)
                ref = lb.reference(cell) if cell else None
                line += ["", "", ""] if cell is None else [
                    _fmt(cell.mean), "" if ref is None else _fmt(ref.value), _fmt(lb.delta(cell))
                ]
            w.writerow(line)
    return Path(path)


def layout_markdown(lb: Leaderboard, lay: Layout) -> str:
    header = ["backbone", "paper row", *[h for _, _, h in lay.columns]]
    rows, paper_rule = [], False
    for b, res, label in lay.rows:
        line = [f"{b} ({res})" if res else b, label]
        for t, m, _ in lay.columns:
            cell = _layout_cell(lb, b, res, t, m)
            delta = lb.delta(cell) if cell else None
            paper_rule |= cell is not None and cell.metric != m
            line.append("" if cell is None else f"{cell.mean:.1f}" + ("" if delta is None else f" ({delta:+.1f})"))
        rows.append(line)
    body = _md_table(header, rows) if rows else "(no measured cell in this table's benchmarks)"
    rule = "; probe cells: the head with the best test top-1 (`top1_paper_rule`), as the paper chose" if paper_rule else ""
    return f"## {lay.title}\n\nmeasured seed mean of the task's default protocol (measured − paper){rule}\n\n{body}\n"


def plot(lb: Leaderboard, path: Path) -> Path | None:
    """Measured vs reference, one panel per task family (plugin): a point per measured cell that has a reference of
    its protocol, the seed std as its vertical bar and the reference's tolerance as its horizontal bar, a colour per
    backbone (legend), each point labelled with its task and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[tuple[Reference, Cell]]] = defaultdict(list)
    for cell in (c for row in lb.rows for c in row.cells.values()):
        ref = lb.reference(cell)
        if ref is not None and ref.value is not None:
            panels[lb.families.get(cell.task, "other")].append((ref, cell))
    if not panels:
        return None
    families = sorted(panels)
    backbones = sorted({c.backbone for pts in panels.values() for _, c in pts})
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 5), squeeze=False)
    for ax, family in zip(axes.flat, families):
        pts = panels[family]
        for backbone in sorted({c.backbone for _, c in pts}):
            mine = [(r, c) for r, c in pts if c.backbone == backbone]
            ax.errorbar([r.value for r, _ in mine], [c.mean for _, c in mine],
                        xerr=[tolerance_for(r) for r, _ in mine], yerr=[c.std or 0.0 for _, c in mine],
                        fmt="o", capsize=3, color=colours[backbone], label=backbone)
            for r, c in mine:
                ax.annotate(f"{c.task} {c.metric}", (r.value, c.mean), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        values = [v for r, c in pts for v in (r.value - tolerance_for(r), r.value + tolerance_for(r),
                                               c.mean - (c.std or 0.0), c.mean + (c.std or 0.0))]
        lo, hi = min(values) - 1, max(values) + 1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = reference")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(family)
        ax.set_xlabel("reference (± tolerance)")
        ax.set_ylabel("measured (seed mean ± std)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def output_paths(out_csv: Path) -> list[Path]:
    """What `write_all` may write, the CSV first: the markdown, one CSV per paper layout, the PNG."""
    out_csv = Path(out_csv)
    return [out_csv, out_csv.with_suffix(".md"), *(out_csv.with_name(f"{out_csv.stem}_{name}.csv") for name in LAYOUTS),
            out_csv.with_suffix(".png")]


def write_all(lb: Leaderboard, out_csv: Path) -> list[Path]:
    """leaderboard.csv, .md (with the paper layouts), one CSV per paper layout, and the PNG, side by side."""
    out_csv = Path(out_csv)
    written = [write_csv(lb, out_csv)]
    md = to_markdown(lb)
    for name in LAYOUTS:
        lay = layout(lb, name)
        path = out_csv.with_name(f"{out_csv.stem}_{name}.csv")
        if lay.rows:
            written.append(write_layout_csv(lb, lay, path))
            md += "\n" + layout_markdown(lb, lay)
        else:  # no empty table for a family without records (and none left from an earlier leaderboard)
            path.unlink(missing_ok=True)
    md_path = out_csv.with_suffix(".md")
    md_path.write_text(md)
    written.append(md_path)
    png = plot(lb, out_csv.with_suffix(".png"))
    if png is not None:
        written.append(png)
    return written
