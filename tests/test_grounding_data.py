"""Grounding data: every source on a tiny file written here, the embedded scene sets (held-out property,
determinism) and one helpful UserError per kind of bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from aimv2_eval.data.grounding import (
    SCENE_CATEGORIES,
    open_grounding_split,
    open_lvis,
    open_mdetr,
    open_odvg,
    scene_ovd,
    scene_rec,
)
from aimv2_eval.data.scenes import SceneDataset, grounding_expressions
from aimv2_eval.errors import UserError


def _image(path, w=64, h=48, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------- ODVG
@pytest.fixture
def odvg_det(tmp_path):
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    rows = [
        {"filename": "a.png", "height": 48, "width": 64, "detection": {"instances": [
            {"bbox": [1, 2, 20, 30], "label": 0, "category": "cat"},
            {"bbox": [50, 40, 80, 60], "label": 3, "category": "dog"},  # partly outside: clipped
            {"bbox": [70, 50, 90, 60], "label": 3, "category": "dog"}]}},  # entirely outside: dropped
        {"filename": "b.png", "height": 48, "width": 64, "detection": {"instances": []}},
    ]
    (tmp_path / "labels.json").write_text(json.dumps({"3": "dog", "0": "cat"}))
    return tmp_path, _jsonl(tmp_path / "od.jsonl", rows)


def test_odvg_detection(odvg_det):
    root, ann = odvg_det
    ds = open_odvg(root / "img", ann, root / "labels.json")
    assert ds.kind == "detection" and len(ds) == 2
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [0, 3]
    s = ds[0]
    assert s.image.mode == "RGB" and s.caption == "" and s.spans == [[], []]
    assert s.boxes.tolist() == [[1, 2, 20, 30], [50, 40, 64, 48]] and s.labels.tolist() == [0, 1]
    assert ds.report["clipped"] == 1 and ds.report["dropped_outside"] == 1 and ds.report["samples_without_boxes"] == 1
    assert len(ds.coco.getAnnIds()) == 2 and ds.coco.loadAnns(ds.coco.getAnnIds())[1]["bbox"] == [50, 40, 14, 8]
    assert ds.coco.getCatIds() == [0, 3]


def test_odvg_grounding_spans(tmp_path):
    _image(tmp_path / "img" / "a.png")
    caption = "a red ball and two blue cubes"
    row = {"filename": "a.png", "height": 48, "width": 64, "grounding": {"caption": caption, "regions": [
        {"bbox": [0, 0, 10, 10], "phrase": "a red ball", "tokens_positive": [[0, 10]]},
        {"bbox": [[20, 20, 30, 30], [40, 5, 60, 25]], "phrase": "two blue cubes", "tokens_positive": [[15, 29]]},
        {"bbox": [5, 5, 15, 15], "phrase": "ball"}]}}  # no tokens_positive: the phrase is located in the caption
    ds = open_odvg(tmp_path / "img", _jsonl(tmp_path / "vg.jsonl", [row]))
    assert ds.kind == "phrases" and ds.class_names is None
    s = ds[0]
    assert s.caption == caption and len(s.boxes) == 4 and (s.labels == -1).all()
    assert s.spans == [[(0, 10)], [(15, 29)], [(15, 29)], [(6, 10)]]
    assert [caption[a:b] for a, b in s.spans[1]] == ["two blue cubes"]
    rec = open_odvg(tmp_path / "img", tmp_path / "vg.jsonl", kind="rec")
    assert rec[0].spans == [[(0, len(caption))]] * 4


# ---------------------------------------------------------------- MDETR
def _mdetr(tmp_path, **over):
    _image(tmp_path / "coco" / "x.jpg", 64, 48)
    d = {"images": [
        {"id": 7, "original_id": 1234, "file_name": "x.jpg", "height": 48, "width": 64, "caption": "left red cup",
         "dataset_name": "refcoco"},
        {"id": 8, "original_id": 1234, "file_name": "x.jpg", "height": 48, "width": 64, "caption": "cup on the right",
         "dataset_name": "refcoco"}],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [2, 3, 10, 12], "tokens_positive": [[9, 12]], "category_id": 1},
            {"id": 2, "image_id": 8, "bbox": [40, 10, 30, 20], "tokens_positive": [[0, 3]], "category_id": 1},
            {"id": 3, "image_id": 8, "bbox": [41, 11, 20, 20], "tokens_positive": [], "category_id": 1}]}
    d.update(over)
    path = tmp_path / "final_refcoco_val.json"
    path.write_text(json.dumps(d))
    return path


def test_mdetr_rec_and_phrases(tmp_path):
    ann = _mdetr(tmp_path)
    ds = open_mdetr(tmp_path / "coco", ann)
    assert ds.kind == "rec" and len(ds) == 2 and ds.report["images"] == 1 and ds.report["clipped"] == 1
    a, b = ds[0], ds[1]
    assert (a.caption, a.sample_id, a.image_id) == ("left red cup", 7, 1234) and b.sample_id == 8
    assert a.boxes.tolist() == [[2, 3, 12, 15]] and b.boxes.tolist() == [[40, 10, 64, 30], [41, 11, 61, 31]]
    assert a.spans == [[(0, 12)]] and (a.labels == -1).all()
    assert [t.tolist() for t in ds.targets()] == [[[2, 3, 12, 15]], [[40, 10, 64, 30], [41, 11, 61, 31]]]
    assert ds.sizes() == [(64, 48), (64, 48)]
    assert b.spans == [[(0, 16)], [(0, 16)]]
    ph = open_mdetr(tmp_path / "coco", _mdetr(tmp_path, annotations=json.loads(ann.read_text())["annotations"][:2]),
                    kind="phrases")
    assert ph[0].spans == [[(9, 12)]] and ph[0].caption[9:12] == "cup"
    with pytest.raises(UserError, match="tokens_positive"):  # phrase grounding needs every span
        open_mdetr(tmp_path / "coco", _mdetr(tmp_path), kind="phrases")
    with pytest.raises(ValueError):
        _ = ds.coco


# ---------------------------------------------------------------- COCO / LVIS
def _lvis_file(tmp_path, categories=None, **over):
    for i in (1, 2):
        _image(tmp_path / "coco" / ("val2017" if i == 1 else "train2017") / f"{i:012d}.jpg", 64, 48)
    d = {"images": [{"id": i, "width": 64, "height": 48, "neg_category_ids": [], "not_exhaustive_category_ids": [],
                     "coco_url": f"http://images.cocodataset.org/{'val2017' if i == 1 else 'train2017'}/{i:012d}.jpg"}
                    for i in (1, 2)],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 20, 20], "area": 400.0},
                         {"id": 2, "image_id": 2, "category_id": 9, "bbox": [30, 10, 20, 30], "area": 600.0},
                         {"id": 3, "image_id": 2, "category_id": 5, "bbox": [100, 100, 5, 5], "area": 25.0}],
         "categories": categories if categories is not None else [
             {"id": 9, "name": "zebra", "frequency": "f"}, {"id": 5, "name": "aardvark", "frequency": "r"}]}
    d.update(over)
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(d))
    return path


def test_lvis_source(tmp_path):
    ds = open_lvis(tmp_path / "coco", _lvis_file(tmp_path))
    assert ds.kind == "detection" and ds.class_names == ["aardvark", "zebra"] and ds.frequencies == ["r", "f"]
    assert ds[1].boxes.tolist() == [[30, 10, 50, 40]] and ds[1].labels.tolist() == [1]
    assert ds.report["dropped_outside"] == 1 and ds.report["boxes"] == 2
    assert "neg_category_ids" in ds.gt["images"][0] and sorted(ds.coco.getCatIds()) == [5, 9]
    pytest.importorskip("lvis")
    from aimv2_eval.metrics.grounding import lvis_evaluate

    perfect = [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 20, 20], "score": 1.0},
               {"image_id": 2, "category_id": 9, "bbox": [30, 10, 20, 30], "score": 1.0}]
    m = lvis_evaluate(ds.gt, perfect)
    assert m["ap_f"] == pytest.approx(100.0) and m["ap_c"] == -1.0


def test_coco_source_with_novel_classes_through_a_data_block(tmp_path):
    _image(tmp_path / "coco" / "val2017" / "a.jpg")
    d = {"images": [{"id": 3, "file_name": "a.jpg", "width": 64, "height": 48}],
         "annotations": [{"id": 1, "image_id": 3, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 100},
                         {"id": 2, "image_id": 3, "category_id": 7, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 1}],
         "categories": [{"id": 2, "name": "cat"}, {"id": 7, "name": "umbrella"}]}
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(d))
    cfg = {"source": "coco", "coco": {"novel": ["umbrella"],
                                      "val": {"images": "{root}/coco/val2017", "annotations": "{root}/coco/ann.json"}}}
    ds = open_grounding_split(cfg, "val", root=tmp_path)
    assert ds.novel_ids == [7] and ds.base_ids == [2]
    assert ds[0].boxes.tolist() == [[1, 1, 11, 11]]  # the crowd region is ground truth for AP only
    assert len(ds.coco.getAnnIds()) == 2
    cfg["coco"]["novel"] = ["giraffe"]
    with pytest.raises(UserError, match="giraffe"):
        open_grounding_split(cfg, "val", root=tmp_path)


# ---------------------------------------------------------------- embedded scenes
def test_scene_expressions_are_richer_and_true():
    scenes = SceneDataset(30, seed=0, image_size=96, text_prob=0.0)
    texts = [r.text for i in range(30) for r in grounding_expressions(scenes[i])]
    assert any(t.count(" ") >= 6 and " of the " in t for t in texts)  # "the small red circle left of the blue square"
    assert any(t.startswith("the leftmost") for t in texts) and "the largest object" in texts
    for i in range(30):
        s = scenes[i]
        exprs = grounding_expressions(s)
        assert exprs[: len(s.referring)] == s.referring  # the scene's own expressions come first, unchanged
        assert len({r.text for r in exprs}) == len(exprs)
        for r in exprs:
            if r.text.startswith("the leftmost object"):
                assert s.boxes[r.target][0] == s.boxes[:, 0].min()
        flipped = [r.text for r in grounding_expressions(s.flip())]
        assert all(("left" in a) == ("right" in b) for a, b in zip([r.text for r in exprs], flipped))


def test_scene_rec_is_deterministic_and_matches_the_scenes():
    a, b = scene_rec(6, seed=2, image_size=80), scene_rec(6, seed=2, image_size=80)
    assert a.identity == b.identity and a.captions() == b.captions()
    assert all(np.array_equal(x, y) for x, y in zip(a.targets(), b.targets()))
    assert len(a) > 6 and a.kind == "rec"
    scenes = SceneDataset(6, seed=2, image_size=80, text_prob=0.0)
    s = a[3]
    scene = scenes[s.image_id - 1]
    ref = next(r for r in grounding_expressions(scene) if r.text == s.caption)
    assert s.boxes.tolist() == [scene.boxes[ref.target].tolist()] and s.spans == [[(0, len(s.caption))]]
    assert np.array_equal(np.asarray(s.image), np.asarray(scene.image))
    assert len({x.sample_id for x in (a[i] for i in range(len(a)))}) == len(a)
    assert scene_rec(6, seed=3, image_size=80).captions() != a.captions()


def test_scene_ovd_holds_out_categories():
    held = ["red circle", "blue square", "green star"]
    cfg = {"source": "scenes_ovd", "scenes_ovd": {"image_size": 64, "held_out": held,
                                                  "train": {"n": 40, "seed": 0}, "val": {"n": 40, "seed": 1}}}
    train, val = open_grounding_split(cfg, "train"), open_grounding_split(cfg, "val")
    names = lambda ds: {ds.class_names[int(k)] for r in ds._records for k in r.labels}  # noqa: E731
    assert len(train) == 40 and not names(train) & set(held) and train.report["skipped_held_out"] > 0
    assert set(held) <= names(val)
    assert val.class_names == list(SCENE_CATEGORIES) and len(val.novel_ids) == 3
    assert len(val.base_ids) == len(SCENE_CATEGORIES) - 3
    again = open_grounding_split(cfg, "train")
    assert again.identity == train.identity and [r.image_id for r in again._records] == [r.image_id for r in train._records]
    assert len(val.coco.getAnnIds()) == val.report["boxes"]
    s = val[0]
    assert s.image.size == (64, 64) and [val.class_names[k] for k in s.labels]
    with pytest.raises(UserError, match="purple dragon"):
        scene_ovd(4, 0, held_out=["purple dragon"], train=True)
    with pytest.raises(UserError, match="raise n"):
        scene_ovd(1, 1, held_out=held, train=False, image_size=64)


# ---------------------------------------------------------------- Hugging Face
def test_hf_rec_from_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [Image.new("RGB", (64, 48), (i * 40, 0, 0)) for i in range(2)]
    ds = datasets.Dataset.from_dict({"image": imgs, "answer": [["red thing", "the left one"], ["a box"]],
                                     "bbox": [[1, 2, 10, 10], [50, 30, 30, 30]]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "answer": datasets.Sequence(datasets.Value("string")),
                                                                "bbox": datasets.Sequence(datasets.Value("float32"))}))
    ds.save_to_disk(str(tmp_path / "refcoco"))
    g = open_grounding_split({"source": "hf", "hf": {"id": str(tmp_path / "refcoco")}}, "val")
    assert g.captions() == ["red thing", "the left one", "a box"] and g.report["clipped"] == 1
    assert g[2].boxes.tolist() == [[50, 30, 64, 48]] and g[0].image.getpixel((0, 0)) == (0, 0, 0)


def test_hf_offline_is_one_line(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        open_grounding_split({"source": "hf", "hf": {"id": "lmms-lab/no-such-refcoco-xyz"}}, "val")
    assert "\n" not in str(e.value) and "did not load" in str(e.value)


# ---------------------------------------------------------------- bad input: one helpful line each
def _odvg_line(tmp_path, row, label_map=None):
    _image(tmp_path / "img" / "a.png")
    return lambda: open_odvg(tmp_path / "img", _jsonl(tmp_path / "x.jsonl", [row]), label_map)


def _g(regions, caption="a cat"):
    return {"filename": "a.png", "height": 48, "width": 64, "grounding": {"caption": caption, "regions": regions}}


BAD = {
    "expression without a box (mdetr)": (
        lambda p: open_mdetr(p / "coco", _mdetr(p, annotations=[])), "has no box"),
    "region without a box (odvg)": (
        lambda p: _odvg_line(p, _g([{"bbox": [], "phrase": "cat", "tokens_positive": [[2, 5]]}]))(), "has no box"),
    "REC box entirely outside": (
        lambda p: open_mdetr(p / "coco", _mdetr(p, annotations=[{"image_id": 7, "bbox": [100, 100, 5, 5]},
                                                                {"image_id": 8, "bbox": [1, 1, 5, 5]}])),
        "outside the 64x48 image"),
    "tokens_positive outside the caption": (
        lambda p: _odvg_line(p, _g([{"bbox": [0, 0, 9, 9], "phrase": "cat", "tokens_positive": [[2, 9]]}]))(),
        "outside the caption"),
    "mdetr tokens_positive outside the caption": (
        lambda p: open_mdetr(p / "coco", _mdetr(p, annotations=[
            {"image_id": 7, "bbox": [1, 1, 5, 5], "tokens_positive": [[0, 99]]},
            {"image_id": 8, "bbox": [1, 1, 5, 5], "tokens_positive": [[0, 3]]}])), "outside the caption"),
    "empty LVIS categories": (lambda p: open_lvis(p / "coco", _lvis_file(p, categories=[])), "`categories` is empty"),
    "LVIS category without frequency": (
        lambda p: open_lvis(p / "coco", _lvis_file(p, categories=[{"id": 5, "name": "a"}, {"id": 9, "name": "b"}])),
        "frequency"),
    "empty label map": (
        lambda p: (p.joinpath("lm.json").write_text("{}"),
                   _odvg_line(p, {"filename": "a.png", "height": 48, "width": 64, "detection": {"instances": []}},
                              p / "lm.json")())[1], "label map is empty"),
    "missing image file": (
        lambda p: open_mdetr(p / "elsewhere", _mdetr(p)) if (p / "elsewhere").mkdir() is None else None,
        "not under"),
    "unreadable json": (
        lambda p: (p.joinpath("bad.json").write_text("{not json"), open_mdetr(p, p / "bad.json"))[1],
        "is not valid JSON"),
    "unreadable jsonl line": (
        lambda p: (p.joinpath("bad.jsonl").write_text(json.dumps(_g([])) + "\n{oops\n"),
                   _image(p / "img" / "a.png"), open_odvg(p / "img", p / "bad.jsonl"))[2], "line 2"),
    "unknown odvg label": (
        lambda p: (p.joinpath("lm.json").write_text('{"0": "cat"}'),
                   _odvg_line(p, {"filename": "a.png", "height": 48, "width": 64,
                                  "detection": {"instances": [{"bbox": [0, 0, 5, 5], "label": 4}]}}, p / "lm.json")())[1],
        "not in the label map"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_helpful_line(tmp_path, case):
    make, expected = BAD[case]
    with pytest.raises(UserError) as e:
        make(tmp_path)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and len(msg) < 400
    assert str(tmp_path) in msg or "HF" in msg  # names the file


def test_data_block_errors(tmp_path):
    with pytest.raises(UserError, match="unknown grounding data.source"):
        open_grounding_split({"source": "nope"}, "val")
    with pytest.raises(UserError, match="no split 'val'"):
        open_grounding_split({"source": "mdetr", "mdetr": {"train": {"images": "x", "annotations": "y"}}}, "val")
    with pytest.raises(UserError, match="data missing"):
        open_grounding_split({"source": "lvis", "lvis": {"val": {"images": "{root}/coco",
                                                                "annotations": "{root}/lvis.json"}}}, "val", root=tmp_path)
