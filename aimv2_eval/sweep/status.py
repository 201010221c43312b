"""Where a sweep stands (done / running / failed / missing per cell) and what its cells will cost (--dry-run).

The record says done; otherwise the cell's state file (worker.py) says running, queued or failed. A state that says
running on this host with a dead pid was killed without a word (SIGKILL, out of memory): it counts as failed, and
the next sweep resumes it from its checkpoint. Jobs on other hosts are trusted to be alive.
"""

from __future__ import annotations

import json
import socket
import statistics
from pathlib import Path
from typing import Any

from aimv2_eval.errors import UserError
from aimv2_eval.io import pid_alive
from aimv2_eval.sweep.worker import read_state, sweep_dir

STATES = ("done", "running", "failed", "missing")


def manifest_path(out: Path, name: str) -> Path:
    return sweep_dir(out) / "sweeps" / f"{name}.json"


def write_manifest(out: Path, name: str, rows: list[dict[str, Any]], **fields: Any) -> Path:
    """The sweep's cells (key, backbone, task, seed, command, job id), merged with earlier submissions of it."""
    from aimv2_eval.io import write_json_atomic

    path = manifest_path(out, name)
    old = {r["key"]: r for r in _read_json(path).get("cells", [])} if path.exists() else {}
    for r in rows:
        old[r["key"]] = {**old.get(r["key"], {}), **{k: v for k, v in r.items() if v is not None}}
    return write_json_atomic(path, {"name": name, **fields, "cells": list(old.values())})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable sweep manifest ({exc}); delete it and rerun the sweep") from None
    cells = doc.get("cells", []) if isinstance(doc, dict) else None
    # a manifest is ours only if every cell has the fields status prints (else: someone else's JSON)
    if not isinstance(cells, list) or not all(isinstance(c, dict) and {"key", "backbone", "task", "seed"} <= set(c)
                                              for c in cells):
        raise UserError(f"{path} is not a sweep manifest (no list of cells with key, backbone, task and seed); "
                        "delete it and rerun the sweep")
    return doc


def _alive(pid: int | None) -> bool:
    return bool(pid) and pid_alive(int(pid))  # type: ignore[arg-type]


def last_error_line(log: str | None) -> str | None:
    """The last line of a log that looks like an error (else its last non-empty line)."""
    if not log or not Path(log).is_file():
        return None
    lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "exception" in ln.lower():
            return ln
    return lines[-1] if lines else None


def cell_state(out: Path, key: str, record: Path) -> tuple[str, str]:
    """(done|running|failed|missing, detail) of one cell."""
    if record.exists():
        return "done", ""
    st = read_state(out, key)
    if st is None:
        return "missing", "checkpoint kept: resumes" if record.with_suffix(".ckpt").exists() else ""
    state, here = st.get("state"), st.get("host") in (None, socket.gethostname())
    if state in ("running", "requeued"):
        if here and st.get("pid") and not _alive(st["pid"]):
            return "failed", "killed without an exit (no error recorded); the next sweep resumes it"
        return "running", f"{state} on {st.get('host')} (job {st.get('job_id')})" if st.get("job_id") else state
    if state == "queued":
        # a local submitter that is gone never started it; Slurm's queue holds it until it runs
        if st.get("cluster") != "slurm" and not _alive(st.get("submitter")):
            return "failed", "queued by a sweep that ended before the cell started"
        return "running", "queued"
    error = st.get("error") or last_error_line(st.get("log")) or "failed (no error line)"
    return "failed", error


def sweep_rows(out: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every cell of every sweep recorded under `out` (or of one sweep), with its state."""
    if not Path(out).is_dir():
        raise UserError(f"{out} is not a folder; give the --out folder of a sweep (`aimv2-eval sweep ... --out DIR`)")
    folder = sweep_dir(out) / "sweeps"
    paths = [manifest_path(out, name)] if name else sorted(folder.glob("*.json"))
    if not paths or not all(p.exists() for p in paths):
        raise UserError(f"no sweep recorded under {out}{f' named {name!r}' if name else ''}; "
                        "give the --out folder of a sweep (`aimv2-eval sweep ... --out DIR`)")
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        for cell in _read_json(path).get("cells", []):
            rows.setdefault(cell["key"], {**cell, "sweep": path.stem})
    for row in rows.values():
        row["state"], row["detail"] = cell_state(out, row["key"], Path(out) / f"{row['key']}.json")
    return list(rows.values())


def format_status(rows: list[dict[str, Any]]) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    lines = [f"{r['state']:<8} {r['backbone']} x {r['task']} seed {r['seed']}" + (f": {r['detail']}" if r["detail"] else "")
             for r in sorted(rows, key=lambda r: (STATES.index(r["state"]), r["key"]))]
    lines.append(", ".join(f"{counts[s]} {s}" for s in STATES) + f" ({len(rows)} cells)")
    return "\n".join(lines)


# ------------------------------------------------------------------ cost estimates for --dry-run
def cost_index(roots: list[Path]) -> list[dict[str, Any]]:
    from aimv2_eval.report.store import load_records

    out: list[dict[str, Any]] = []
    for root in roots:
        if Path(root).is_dir():
            out += load_records(root)
    return out


def _images_per_s(rec: dict[str, Any]) -> float | None:
    tp = rec.get("throughput") or {}
    for key in ("train_images_per_s", *sorted(tp)):
        if key.endswith("images_per_s") and isinstance(tp.get(key), int | float):
            return float(tp[key])
    return None


def estimate(records: list[dict[str, Any]], backbone: str, task: str) -> str:
    """Median wall time, peak memory and images/s of earlier records of the task (same backbone when there is one)."""
    same_task = [r for r in records if r["cell"]["task"] == task]
    same = [r for r in same_task if r["cell"]["backbone"] == backbone] or same_task
    if not same:
        return "no earlier record of this task"
    walls = [r["wall_time_s"] for r in same if r.get("wall_time_s") is not None]
    rss = [r["peak_memory_mb"].get("host_rss_mb") for r in same if r.get("peak_memory_mb", {}).get("host_rss_mb")]
    dev = [r["peak_memory_mb"].get("device_mb") for r in same if r.get("peak_memory_mb", {}).get("device_mb")]
    ips = [x for x in map(_images_per_s, same) if x]
    parts = []
    if walls:
        parts.append(f"~{statistics.median(walls):.0f} s")
    if rss:
        parts.append(f"{max(rss):.0f} MB RSS")
    if dev:
        parts.append(f"{max(dev):.0f} MB GPU")
    if ips:
        parts.append(f"{statistics.median(ips):.0f} img/s")
    whose = "this backbone" if same[0]["cell"]["backbone"] == backbone else "other backbones"
    return f"{', '.join(parts) or 'no cost fields'} (from {len(same)} record(s) of {task}, {whose})"
