"""Grounding metrics (paper Tables 4, D1, D2): REC precision@k, LVIS AP and open-vocabulary COCO AP.

Names (percent): `p_at_1, p_at_5, p_at_10` (MM-Grounding-DINO's RefExpMetric: a sample counts at k when one of its
k best-ranked boxes reaches IoU 0.5 with a ground-truth box; fewer than k predictions use what there is, none is a
miss); `ap, ap50, ap75, ap_s, ap_m, ap_l` plus `ap_r, ap_c, ap_f` (LVIS, through the `lvis` package's LVISEval, 300
detections per image) or `ap_base, ap50_base, ap_novel, ap50_novel` (COCO OVD, COCOeval restricted to those category
ids). -1.0 means "no ground truth in that group", as pycocotools and LVISEval say it (not scaled).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from aimv2_eval.errors import UserError
from aimv2_eval.metrics.coco import STAT_NAMES, _load_results, coco_eval

REC_TOPK = (1, 5, 10)
LVIS_NAMES = {"AP": "ap", "AP50": "ap50", "AP75": "ap75", "APs": "ap_s", "APm": "ap_m", "APl": "ap_l",
              "APr": "ap_r", "APc": "ap_c", "APf": "ap_f"}


# ---------------------------------------------------------------- REC
def _boxes(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1, 4))


def precision_at_k(pred_boxes_ranked: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray], k: int = 1,
                   iou: float = 0.5) -> float:
    """Percent of samples where one of the top-`k` predicted boxes (best first, xyxy pixels) has IoU >= `iou` with
    one of the sample's ground-truth boxes."""
    if len(pred_boxes_ranked) != len(gt_boxes):
        raise ValueError(f"{len(pred_boxes_ranked)} predictions for {len(gt_boxes)} samples")
    if not gt_boxes:
        return 0.0
    hits = 0
    for pred, gt in zip(pred_boxes_ranked, gt_boxes):
        p, g = _boxes(pred)[:k], _boxes(gt)
        hits += bool(len(p) and len(g) and (box_iou(p, g) >= iou).any())
    return 100.0 * hits / len(gt_boxes)


def rec_metrics(pred_boxes_ranked: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                topk: Sequence[int] = REC_TOPK, iou: float = 0.5) -> dict[str, float]:
    """`p_at_<k>` for every k of `topk` (RefExpMetric reports 1, 5 and 10)."""
    return {f"p_at_{k}": precision_at_k(pred_boxes_ranked, gt_boxes, k, iou) for k in topk}


def largest_box_baseline(sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The ground-truth-free trivial answer: the whole image, (1, 4) xyxy per sample (`sizes` = (width, height))."""
    return [np.array([[0.0, 0.0, float(w), float(h)]], dtype=np.float32) for w, h in sizes]


def random_box_baseline(sizes: Sequence[tuple[int, int]], seed: int = 0, k: int = 10) -> list[np.ndarray]:
    """`k` random boxes per sample (corners uniform in the image, sorted), ranked in draw order; seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for w, h in sizes:
        xs = np.sort(rng.uniform(0, w, size=(k, 2)), axis=1)
        ys = np.sort(rng.uniform(0, h, size=(k, 2)), axis=1)
        out.append(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1).astype(np.float32))
    return out


# ---------------------------------------------------------------- COCO open-vocabulary detection
def _restricted_stats(gt: COCO, results: list[dict], cat_ids: Sequence[int],
                      img_ids: Sequence[int] | None) -> np.ndarray:
    """COCOeval bbox stats over `cat_ids` only."""
    dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, _load_results(gt, dets), "bbox")
        ev.params.catIds = sorted(int(c) for c in cat_ids)
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _pct(v: float) -> float:
    return -1.0 if v < 0 else float(v) * 100.0


def ovd_metrics(gt: COCO, results: list[dict], base_ids: Sequence[int] | None = None,
                novel_ids: Sequence[int] | None = None, img_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box AP as `ap, ap50, ap75, ap_s, ap_m, ap_l`, plus `ap_<group>` and `ap50_<group>` over the base and
    novel category ids when given (OV-COCO reports novel AP50)."""
    box = coco_eval(gt, results, iou_types=("bbox",), img_ids=img_ids).metrics
    out = {name: box[f"box_{name}"] for name in STAT_NAMES}
    for group, ids in (("base", base_ids), ("novel", novel_ids)):
        if ids:
            stats = _restricted_stats(gt, results, ids, img_ids)
            out[f"ap_{group}"], out[f"ap50_{group}"] = _pct(stats[0]), _pct(stats[1])
    return out


# ---------------------------------------------------------------- LVIS
@contextlib.contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """lvis 0.5.3, its last release, calls `np.float` (removed in numpy 1.24): alias it while LVISEval runs."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


def lvis_evaluate(gt_json_or_dict: str | Path | dict, results: list[dict], max_dets: int = 300) -> dict[str, float]:
    """LVIS box AP (ap ... ap_l, ap_r, ap_c, ap_f in percent) of COCO-format `results` ({image_id, category_id, bbox
    xywh, score}); at most `max_dets` per image, the highest-scoring (LVIS's protocol). No results gives 0 (-1 for a
    group without ground truth)."""
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as exc:
        raise UserError(f"LVIS AP needs the lvis package ({exc}); run `pip install lvis==0.5.3`") from None

    if isinstance(gt_json_or_dict, dict):
        dataset = copy.deepcopy(gt_json_or_dict)
    else:
        with open(gt_json_or_dict, encoding="utf-8") as f:
            dataset = json.load(f)
    for im in dataset["images"]:  # hand-made files may lack the federated lists LVISEval reads
        im.setdefault("neg_category_ids", [])
        im.setdefault("not_exhaustive_category_ids", [])
    for a in dataset["annotations"]:
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))

    class _Loaded(LVIS):  # lvis 0.5.3 reads only paths: index a dict the way its constructor does
        def __init__(self, d: dict) -> None:
            self.logger = logging.getLogger("lvis.lvis")
            self.dataset = d
            self._create_index()

    class _NoResults(LVISResults):  # LVISResults indexes results[0]: an empty list is built by hand
        def __init__(self, lvis_gt: Any) -> None:
            self.logger = logging.getLogger("lvis.results")
            self.dataset = {**lvis_gt.dataset, "annotations": []}
            self._create_index()

    gt = _Loaded(dataset)
    stray = {r["image_id"] for r in results} - set(gt.imgs)
    if stray:
        raise ValueError(f"results name {len(stray)} image ids that are not in the ground truth (first: {min(stray)})")
    logging.getLogger("lvis").setLevel(logging.ERROR)  # it logs every phase, and warns on every in-memory result list
    dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]  # LVISResults writes into them
    dt = LVISResults(gt, dets, max_dets=max_dets) if dets else _NoResults(gt)
    ev = LVISEval(gt, dt, iou_type="bbox")
    ev.params.max_dets = max_dets
    with contextlib.redirect_stdout(io.StringIO()), _numpy_float_alias():
        ev.run()
    res = ev.get_results()
    return {name: _pct(float(res[key])) for key, name in LVIS_NAMES.items()}
