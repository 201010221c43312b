"""COCO box and mask AP through pycocotools (the numbers of Table D3), and the results format it reads.

Metric names: `box_ap, box_ap50, box_ap75, box_ap_s, box_ap_m, box_ap_l` and the same with `mask_` (COCOeval's
stats[0..5], in percent). A size range without ground truth is pycocotools' -1: it is reported as -1.0 (not scaled),
meaning "no ground truth of that size". Mask AP is computed on results without their `bbox` field, so that
small/medium/large use the mask area (as mmdet's CocoMetric and detectron2's COCOEvaluator do).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from aimv2_eval.io import atomic_write

STAT_NAMES = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")
PREFIX = {"bbox": "box", "segm": "mask"}


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch stays an optional import here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_coco_results(image_id: int, boxes_xyxy: Any, scores: Any, labels: Any, category_ids: Sequence[int],
                    masks: Any = None) -> list[dict]:
    """Detections of one image in COCO's results format: bbox [x, y, w, h], score, category_id (the COCO id of each
    contiguous label) and, with `masks` ((N, H, W) binary, or probabilities cut at 0.5), an RLE segmentation whose counts are a str (JSON-able)."""
    boxes = _array(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    scores, labels = _array(scores).reshape(-1), _array(labels).reshape(-1).astype(np.int64)
    rles = None
    if masks is not None:
        m = _array(masks)
        m = (m >= 0.5) if np.issubdtype(m.dtype, np.floating) else m  # probabilities: binarise as unmap does
        m = m.reshape(-1, *m.shape[-2:]).astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
    out = []
    for k in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        r = {"image_id": int(image_id), "category_id": int(category_ids[int(labels[k])]),
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
        if rles is not None:
            r["segmentation"] = {"size": [int(v) for v in rles[k]["size"]], "counts": rles[k]["counts"].decode("ascii")}
        out.append(r)
    return out


@dataclass
class CocoEvaluation:
    metrics: dict[str, float]  # box_ap, ..., mask_ap_l
    summary: dict[str, str]  # iou type -> pycocotools' printed summary (12 lines)


def _load_results(gt: COCO, results: list[dict]) -> COCO:
    if results:
        return gt.loadRes(results)
    res = COCO()  # loadRes indexes results[0]: an empty list needs building by hand
    res.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def coco_eval(gt: COCO, results: list[dict], iou_types: Iterable[str] = ("bbox", "segm"),
              img_ids: Sequence[int] | None = None) -> CocoEvaluation:
    """COCOeval per iou type over the ground truth's images (or `img_ids`); no detections gives zeros."""
    metrics: dict[str, float] = {}
    summary: dict[str, str] = {}
    known = set(gt.getImgIds())
    stray = {r["image_id"] for r in results} - known
    if stray:
        raise ValueError(f"results name {len(stray)} image ids that are not in the ground truth (first: {min(stray)})")
    for iou_type in iou_types:
        if iou_type not in PREFIX:
            raise ValueError(f"iou type {iou_type!r}; known: {', '.join(PREFIX)}")
        # loadRes writes into the dicts; for masks, the bbox is dropped so that areas are mask areas
        if iou_type == "segm":
            if any("segmentation" not in r for r in results):
                raise ValueError("mask AP needs a segmentation in every result; pass masks to to_coco_results")
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        else:
            dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev = COCOeval(gt, _load_results(gt, dets), iou_type)
            if img_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in img_ids)
            ev.evaluate()
            ev.accumulate()
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            ev.summarize()
        summary[iou_type] = text.getvalue().rstrip()
        for name, value in zip(STAT_NAMES, ev.stats[:6]):
            metrics[f"{PREFIX[iou_type]}_{name}"] = -1.0 if value < 0 else float(value) * 100.0
    return CocoEvaluation(metrics, summary)


def coco_evaluate(gt: COCO, results: list[dict], iou_types: Iterable[str] = ("bbox", "segm"),
                  img_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The metrics of `coco_eval` (see the module docstring for names and the -1.0 convention)."""
    return coco_eval(gt, results, iou_types, img_ids).metrics


def write_predictions(path: str | Path, results: list[dict]) -> Path:
    """Results as compact JSON (COCO val gives ~100 MB indented), written atomically; readable by `COCO.loadRes`."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results, separators=(",", ":"))))


def largest_box_baseline(dataset: Any, train: Any = None) -> list[dict]:
    """The trivial detector: every image predicted as one box covering it, of the most frequent class among the
    non-crowd objects of `train` (default: `dataset`), score 1, with the full-image mask. `dataset` / `train` are
    DetectionSets (anything with `.coco`, `.category_ids` and `label_counts()`)."""
    source = train if train is not None else dataset
    category_id = int(source.category_ids[int(np.argmax(source.label_counts()))])
    out = []
    for im in dataset.coco.dataset["images"]:
        h, w = int(im["height"]), int(im["width"])
        rle = mask_utils.encode(np.ones((h, w, 1), dtype=np.uint8, order="F"))[0]
        out.append({"image_id": im["id"], "category_id": category_id, "bbox": [0.0, 0.0, float(w), float(h)],
                    "score": 1.0, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    return out
