"""Metrics by name, so that a task YAML can say `metric: {main: top1}`."""

from __future__ import annotations

from aimv2_eval.metrics.classification import accuracy, topk_correct
from aimv2_eval.registry import Registry

# name -> k of a top-k accuracy; every recognition benchmark of Table 3 / B2 reports top-1 accuracy (%).
TOPK: Registry[int] = Registry("metric")
TOPK.register("top1", 1)
TOPK.register("top5", 5)

# COCO AP (metrics/coco.py) loads on first use: pycocotools is only needed by the detection tasks.
_COCO_NAMES = ("coco_eval", "coco_evaluate", "largest_box_baseline", "to_coco_results", "write_predictions")


def __getattr__(name: str) -> object:
    if name in _COCO_NAMES:
        from aimv2_eval.metrics import coco

        return getattr(coco, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TOPK", "accuracy", "topk_correct", *_COCO_NAMES]
