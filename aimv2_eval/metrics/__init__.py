"""Metrics by name, so that a task YAML can say `metric: {main: top1}`."""

from __future__ import annotations

from aimv2_eval.metrics.classification import accuracy, topk_correct
from aimv2_eval.registry import Registry

# name -> k of a top-k accuracy; every recognition benchmark of Table 3 / B2 reports top-1 accuracy (%).
TOPK: Registry[int] = Registry("metric")
TOPK.register("top1", 1)
TOPK.register("top5", 5)

__all__ = ["TOPK", "accuracy", "topk_correct"]
