"""What a record's protocol is, in a few columns, and whether a reference measured the same protocol.

Leaderboard rows and regression checks are per (backbone, task, protocol hash); this module gives each protocol its
salient settings (a short list of well-known keys of the resolved protocol, when present) and the rule that decides
whether a reference applies:

- a pinned reference (results/embedded/, a `protocol_hash` column) applies only to records of that exact hash;
- a paper reference (no hash) applies only to records of the task's own default protocol: no `--epochs`,
  `--batch-size`, `--limit` or feature-cache switch that changed the protocol (`overrides` in the record, written
  by `aimv2-eval run`). Precision is allowed: it is how a cell runs (the paper's cells run in bf16), not what it
  measures.
"""

from __future__ import annotations

from typing import Any

# Well-known keys of a resolved protocol that tell two protocols apart at a glance, in column order.
SALIENT = ("epochs", "image_size", "batch_size", "precision", "feature_cache", "limit")
# Run options that change a task's protocol; older records without `overrides` are read from these keys.
OVERRIDABLE = ("epochs", "batch_size", "limit", "feature_cache")


def _resolved(record: dict[str, Any]) -> dict[str, Any]:
    return (record.get("task_config") or {}).get("resolved_protocol") or {}


def settings(record: dict[str, Any]) -> dict[str, Any]:
    """The salient settings of a record's resolved protocol (only the keys it has)."""
    resolved = _resolved(record)
    return {key: resolved[key] for key in SALIENT if key in resolved}


def overrides(record: dict[str, Any]) -> dict[str, Any]:
    """Run options that moved this record's protocol off its task's default ({} for a default run)."""
    if "overrides" in record:
        return dict(record["overrides"] or {})
    # records written before `overrides` existed: compare the resolved protocol with the task's own
    own = (record.get("task_config") or {}).get("protocol") or {}
    resolved = _resolved(record)
    defaults = {"limit": None, "feature_cache": False}
    return {k: resolved[k] for k in OVERRIDABLE if k in resolved and resolved[k] != own.get(k, defaults.get(k))}


def describe_overrides(found: dict[str, Any]) -> str:
    """`--epochs 1 --limit 80` for {'epochs': 1, 'limit': 80}; the feature cache as its switch."""
    parts = []
    for key, value in found.items():
        if key == "feature_cache":
            parts.append("--feature-cache" if value else "--no-feature-cache")
        else:
            parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def mismatch(pinned_hash: str, cell_hash: str, cell_overrides: dict[str, Any]) -> str | None:
    """Why a reference does not apply to a cell's protocol, or None when it does (the rule in the module doc)."""
    if pinned_hash:
        return None if pinned_hash == cell_hash else f"protocol differs from the pinned reference's ({pinned_hash})"
    if cell_overrides:
        return f"run with {describe_overrides(cell_overrides)}; paper references hold the task's default protocol"
    return None
