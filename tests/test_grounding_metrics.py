"""Grounding metrics: REC precision@k against hand-computed IoUs, LVIS AP against the lvis package called directly,
COCO OVD base/novel AP against COCOeval restricted by catIds."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from aimv2_eval.metrics.coco import coco_eval
from aimv2_eval.metrics.grounding import (
    _numpy_float_alias,
    largest_box_baseline,
    lvis_evaluate,
    ovd_metrics,
    precision_at_k,
    random_box_baseline,
    rec_metrics,
)


def test_precision_at_k_matches_hand_computed_ious():
    gt = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]),
          np.array([[0, 0, 4, 4], [20, 20, 30, 30]])]
    preds = [
        np.array([[0, 0, 10, 5]]),  # IoU 50/100 = 0.5 exactly: a hit (>=)
        np.array([[5, 5, 15, 15], [0, 0, 10, 10]]),  # IoU 25/175 = 0.14 at rank 1, 1.0 at rank 2
        np.zeros((0, 4)),  # no prediction: a miss at every k
        np.array([[21, 21, 30, 30], [0, 0, 4, 4]]),  # 81/100 with the second gt box: a hit at rank 1
    ]
    assert precision_at_k(preds, gt, k=1) == pytest.approx(50.0)
    assert precision_at_k(preds, gt, k=5) == pytest.approx(75.0)
    assert precision_at_k(preds, gt, k=1, iou=0.9) == pytest.approx(0.0)
    assert rec_metrics(preds, gt) == pytest.approx({"p_at_1": 50.0, "p_at_5": 75.0, "p_at_10": 75.0})
    with pytest.raises(ValueError):
        precision_at_k(preds[:2], gt)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_precision_at_k_matches_an_independent_loop_on_random_boxes():
    rng = np.random.default_rng(0)

    def boxes(n):
        xy = rng.uniform(0, 50, size=(n, 2))
        return np.concatenate([xy, xy + rng.uniform(5, 40, size=(n, 2))], axis=1)

    gt = [boxes(int(rng.integers(1, 3))) for _ in range(200)]
    preds = [boxes(int(rng.integers(0, 12))) for _ in range(200)]
    for k in (1, 5, 10):
        ref = np.mean([any(_iou(p, g) >= 0.5 for p in ps[:k] for g in gs) for ps, gs in zip(preds, gt)]) * 100
        assert precision_at_k(preds, gt, k=k) == pytest.approx(ref)


def test_trivial_baselines():
    sizes = [(64, 48), (32, 32)]
    whole = largest_box_baseline(sizes)
    assert [b.tolist() for b in whole] == [[[0, 0, 64, 48]], [[0, 0, 32, 32]]]
    assert precision_at_k(whole, [np.array([[0, 0, 64, 40]]), np.array([[0, 0, 8, 8]])]) == pytest.approx(50.0)
    r1, r2 = random_box_baseline(sizes, seed=3), random_box_baseline(sizes, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(r1, r2)) and r1[0].shape == (10, 4)
    for (w, h), b in zip(sizes, r1):
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()


# ---------------------------------------------------------------- COCO OVD
def _coco_gt():
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = []
    for img, cat, box in ((1, 1, [10, 10, 30, 30]), (1, 2, [50, 50, 40, 40]), (2, 3, [0, 0, 60, 60]),
                          (2, 1, [70, 70, 20, 20]), (3, 2, [5, 5, 10, 10]), (3, 3, [40, 40, 50, 30])):
        anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0})
    d = {"images": images, "annotations": anns,
         "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "zebra"}]}
    gt = COCO()
    gt.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _results():
    rng = np.random.default_rng(1)
    out = []
    for a in _coco_gt().dataset["annotations"]:
        jitter = rng.uniform(-4, 4, size=4)
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [float(v) for v in np.array(a["bbox"]) + jitter], "score": float(rng.uniform(0.3, 1))})
        out.append({"image_id": a["image_id"], "category_id": 3, "bbox": [1.0, 1.0, 20.0, 20.0], "score": 0.2})
    return out


def test_ovd_metrics_match_cocoeval_restricted_by_catids():
    gt, res = _coco_gt(), _results()
    m = ovd_metrics(gt, res, base_ids=[1, 2], novel_ids=[3])
    assert set(m) == {"ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l", "ap_base", "ap50_base", "ap_novel", "ap50_novel"}
    assert m["ap"] == pytest.approx(coco_eval(gt, res, iou_types=("bbox",)).metrics["box_ap"])
    for ids, key in (([3], "ap_novel"), ([1, 2], "ap_base")):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(copy.deepcopy(res)), "bbox")
            ev.params.catIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert m[key] == pytest.approx(ev.stats[0] * 100)
        assert m[key.replace("ap_", "ap50_")] == pytest.approx(ev.stats[1] * 100)
    assert "ap_novel" not in ovd_metrics(gt, res)
    empty = ovd_metrics(gt, [], novel_ids=[3])
    assert empty["ap"] == 0.0 and empty["ap_novel"] == 0.0


# ---------------------------------------------------------------- LVIS
def _lvis_gt():
    d = _coco_gt().dataset
    d = copy.deepcopy(d)
    for c, f in zip(d["categories"], "rcf"):
        c["frequency"] = f
    for im in d["images"]:
        im["neg_category_ids"] = [3] if im["id"] == 1 else []
        im["not_exhaustive_category_ids"] = []
        im["coco_url"] = f"http://images.cocodataset.org/val2017/{im['id']:012d}.jpg"
    for a in d["annotations"]:
        a["segmentation"] = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1],
                              a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]]
    return d


def test_lvis_evaluate_matches_the_lvis_package(tmp_path):
    lvis = pytest.importorskip("lvis")
    gt, res = _lvis_gt(), _results()
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(gt))
    ev = lvis.LVISEval(str(path), lvis.LVISResults(lvis.LVIS(str(path)), copy.deepcopy(res)), iou_type="bbox")
    with _numpy_float_alias():  # lvis 0.5.3 on numpy >= 1.24
        ev.run()
    ref = ev.get_results()
    for m in (lvis_evaluate(gt, res), lvis_evaluate(path, res)):
        assert {"ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l", "ap_r", "ap_c", "ap_f"} <= set(m)
        for key, name in (("AP", "ap"), ("AP50", "ap50"), ("APr", "ap_r"), ("APc", "ap_c"), ("APf", "ap_f"),
                          ("APs", "ap_s"), ("APl", "ap_l")):
            assert m[name] == pytest.approx(ref[key] * 100 if ref[key] >= 0 else -1.0)
    assert gt == _lvis_gt()  # the caller's dict is not modified
    assert "float" not in np.__dict__  # the alias for lvis 0.5.3 is scoped to its run
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert lvis_evaluate(gt, perfect)["ap"] == pytest.approx(100.0)


def test_lvis_evaluate_without_results_and_with_stray_ids():
    pytest.importorskip("lvis")
    m = lvis_evaluate(_lvis_gt(), [])
    assert m["ap"] == 0.0 and m["ap_r"] == 0.0 and m["ap_f"] == 0.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        lvis_evaluate(_lvis_gt(), [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
