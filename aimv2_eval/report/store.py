"""Result records: one JSON file per evaluated cell (backbone x task x protocol hash x seed), written atomically.

Layout: {root}/{backbone}/{task}/{protocol_hash}-seed{seed}.json. Schema (version 1):
  cell: {backbone, task, protocol_hash, seed}
  metrics: {name: value}; main_metric: the name of the headline metric (percent for accuracies)
  task_config: the fully resolved task config; backbone: {name, family, weights_id, resolution, params}
  overrides: {option: value} of the run options (epochs, batch_size, limit, feature_cache) that moved the protocol
    off the task's default; {} for a default run (report/protocols.py reads older records without it)
  selection: how reported hyperparameters were chosen (rule, split, and every candidate's scores)
  environment: {versions, git_revision, device}; wall_time_s, peak_memory_mb, throughput: {...}; created (UTC ISO)
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aimv2_eval.errors import UserError
from aimv2_eval.io import write_json_atomic

SCHEMA_VERSION = 1
_PACKAGES = ("aimv2-eval", "torch", "torchvision", "timm", "open-clip-torch", "transformers", "numpy")


def protocol_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a resolved config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def cell_path(root: Path, backbone: str, task: str, phash: str, seed: int) -> Path:
    return Path(root) / safe_name(backbone) / safe_name(task) / f"{phash}-seed{seed}.json"


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"versions": versions, "git_revision": git_revision(), "python": platform.python_version()}


def new_record(backbone_name: str, task: str, phash: str, seed: int, **fields: Any) -> dict[str, Any]:
    record = {
        "schema": SCHEMA_VERSION,
        "cell": {"backbone": backbone_name, "task": task, "protocol_hash": phash, "seed": seed},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }
    record.update(fields)
    return record


def write_record(root: Path, record: dict[str, Any]) -> Path:
    c = record["cell"]
    return write_json_atomic(cell_path(root, c["backbone"], c["task"], c["protocol_hash"], c["seed"]), record)


RECORD_KEYS = ("schema", "cell", "metrics", "main_metric")  # a JSON file with any of these means to be a record
_RECORD_NAME = re.compile(r".+-seed-?\d+\.json")
_CELL_FIELDS = {"backbone": str, "task": str, "protocol_hash": str, "seed": int}


def record_problem(rec: Any) -> str | None:
    """Why a decoded JSON value is not a usable result record (None: it is one)."""
    if not isinstance(rec, dict):
        return f"not a result record (a JSON {type(rec).__name__}, not an object)"
    missing = [k for k in ("cell", "metrics") if k not in rec]
    if missing:
        return f"not a result record (missing {', '.join(map(repr, missing))})"
    cell = rec["cell"]
    if not isinstance(cell, dict):
        return "not a result record ('cell' is not an object)"
    missing = [k for k in _CELL_FIELDS if k not in cell]
    if missing:
        return f"not a result record (missing {', '.join(f'cell.{k}' for k in missing)})"
    for key, kind in _CELL_FIELDS.items():
        value = cell[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
            return f"not a result record (cell.{key} is {value!r}, not a{'n integer' if kind is int else ' name'})"
    if not isinstance(rec["metrics"], dict):
        return "not a result record ('metrics' is not an object)"
    return None


def scan_records(root: Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every record under `root`, and (path, reason) for each .json file meant as a record that cannot be used.

    Files in hidden folders (`.sweep/`, a run's `.partial` outputs) and temporary files are not looked at; other
    JSON beside records (caches, reports: none of the record keys, not named like a record) is left out silently.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"no records folder at {root}; run `aimv2-eval run ...` first or pass --records DIR")
    if not root.is_dir():
        raise UserError(f"--records {root} is a file, not a folder; pass the folder `aimv2-eval run --out` wrote")
    records, problems = [], []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((path, f"cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"))
            continue
        if not text.strip():
            problems.append((path, "empty file (a run killed while writing it?)"))
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append((path, f"not valid JSON ({exc})"))
            continue
        looks_like_record = bool(_RECORD_NAME.fullmatch(path.name)) or (
            isinstance(rec, dict) and any(k in rec for k in RECORD_KEYS))
        if not looks_like_record:
            continue  # other JSON (caches, reports) may live beside records
        problem = record_problem(rec)
        if problem:
            problems.append((path, problem))
            continue
        rec["_path"] = str(path)
        records.append(rec)
    return records, problems


def skip_message(path: Path, reason: str) -> str:
    """The warning for a file `scan_records` left out: which file, why, what to do (one line)."""
    return f"skipping {path}: {reason}; delete or fix it"


def load_records(root: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every record under `root`; each file meant as a record that cannot be used is left out with one warning
    line (`warn`, default: stderr) naming it."""
    records, problems = scan_records(root)
    for path, reason in problems:
        message = skip_message(path, reason)
        if warn is None:
            print(f"warning: {message}", file=sys.stderr)
        else:
            warn(message)
    return records


def load_for_report(root: Path, command: str) -> list[dict[str, Any]]:
    """Records for `aimv2-eval <command>`: the bad files warned about one line each, and an error when no record
    is left to report on."""
    root = Path(root)
    records, problems = scan_records(root)
    for path, reason in problems:
        print(f"aimv2-eval {command}: warning: {skip_message(path, reason)}", file=sys.stderr)
    if records:
        return records
    if problems:
        raise UserError(f"none of the {len(problems)} record file(s) under {root} is usable (each is named above); "
                        "fix or delete them, or rerun those cells")
    raise UserError(f"no result records under {root} (expected {root}/<backbone>/<task>/<hash>-seed<N>.json); "
                    "run `aimv2-eval run ... --out DIR` first or pass --records DIR")


def to_frame(records: list[dict[str, Any]]):
    """Records as a pandas DataFrame: one row per record, its cell, headline value, every numeric metric, the
    protocol's salient settings and overrides (`protocols`), and where it came from."""
    import pandas as pd

    from aimv2_eval.report import protocols

    rows = []
    for rec in records:
        metrics = {k: v for k, v in (rec.get("metrics") or {}).items() if isinstance(v, int | float)}
        main = rec.get("main_metric")
        rows.append({
            **{k: rec["cell"].get(k) for k in ("backbone", "task", "protocol_hash", "seed")},
            "resolution": (rec.get("backbone") or {}).get("resolution"),
            "main_metric": main,
            "value": metrics.get(main),
            **metrics,
            **protocols.settings(rec),
            "overrides": protocols.describe_overrides(protocols.overrides(rec)),
            "created": rec.get("created"),
            "path": rec.get("_path"),
        })
    return pd.DataFrame(rows)
