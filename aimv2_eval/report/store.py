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
import subprocess
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


def load_records(root: Path) -> list[dict[str, Any]]:
    """Every record under `root`; a file that is not a record fails with its path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no records folder at {root}; run `aimv2-eval run ...` first or pass --records DIR")
    records = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc}); delete it and rerun that cell") from None
        if not isinstance(rec, dict) or "cell" not in rec or "metrics" not in rec:
            continue  # other JSON (caches, reports) may live beside records
        rec["_path"] = str(path)
        records.append(rec)
    return records


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
