"""Multimodal benchmark data (aimv2_eval.data.multimodal): HF datasets through a `fields:` map (built locally: the
hub is never reached), JSON-lines folders, procedural scenes, LLaVA training conversations, and the Table C2
benchmark blocks (aimv2_eval.data.mm_benchmarks)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from aimv2_eval.data.mm_benchmarks import BENCHMARKS, KINDS, METRICS
from aimv2_eval.data.multimodal import (
    CAPTION_PROMPT,
    FIELDS,
    VQA_PROMPT,
    FieldMap,
    FieldPath,
    SampleError,
    open_conversations,
    open_mm_split,
    scene_conversations,
)
from aimv2_eval.data.scenes import CAPTION_OPENERS, COLORS, SceneDataset, plural
from aimv2_eval.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _img(color: tuple[int, int, int], mode: str = "RGB", size: int = 12) -> Image.Image:
    img = Image.new("RGB", (size, size), color)
    if mode == "P":  # an adaptive palette keeps the colour exact
        return img.convert("P", palette=Image.Palette.ADAPTIVE)
    return img.convert(mode) if mode != "RGB" else img


def _save(tmp: Path, name: str, columns: dict, features: dict) -> Path:
    path = tmp / name
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(str(path))
    return path


def _hf(path: Path | str, fields: dict, split: str = "validation", **hf) -> dict:
    return {"source": "hf", "hf": {"id": str(path), "split": split, **hf}, "fields": fields}


# ---------------------------------------------------------------- source: hf
VQA_FEATURES = {
    "question_id": datasets.Value("int64"), "image_id": datasets.Value("int64"), "image": datasets.Image(),
    "question": datasets.Value("string"), "question_type": datasets.Value("string"),
    "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string")}],
}
VQA_FIELDS = {"sample_id": "question_id", "image": "image", "question": "question", "answers": "answers[].answer",
              "question_type": "question_type", "image_id": "image_id"}


def _vqav2(tmp: Path) -> Path:
    answers = [[{"answer": a, "answer_confidence": "yes"} for a in ["red"] * 7 + ["dark red"] * 3],
               [{"answer": a, "answer_confidence": "maybe"} for a in ["2"] * 9 + ["two"]]]
    return _save(tmp, "vqav2", {
        "question_id": [101, 102], "image_id": [7, 7],
        "image": [_img((200, 10, 10), "P"), {"bytes": b"not an image", "path": None}],
        "question": ["  What color is the bus?", "How many buses?"], "question_type": ["what color", "how many"],
        "answers": answers}, VQA_FEATURES)


def test_hf_vqav2_list_of_dicts_answers(tmp_path):
    split = open_mm_split(_hf(_vqav2(tmp_path), VQA_FIELDS), "eval")
    assert len(split) == 2
    s = split[0]
    assert (s.sample_id, s.question, s.question_type, s.image_id) == ("101", "What color is the bus?", "what color", "7")
    assert s.answers == ["red"] * 7 + ["dark red"] * 3 and s.choices is None
    assert s.image.mode == "RGB" and s.image.getpixel((3, 3)) == (200, 10, 10)  # palette image converted
    m = split.meta(1)  # text without decoding the (corrupt) image
    assert m.image is None and m.answers == ["2"] * 9 + ["two"] and m.image_id == "7"
    with pytest.raises(SampleError, match="sample 102"):
        split[1]
    assert split.identity["source"] == "hf" and split.identity["rows"] == 2 and split.identity["fingerprint"]


def test_hf_identity_changes_with_the_data(tmp_path):
    a = open_mm_split(_hf(_vqav2(tmp_path / "a"), VQA_FIELDS), "eval").identity
    path = _vqav2(tmp_path / "b")
    ds = datasets.load_from_disk(str(path)).map(lambda r: {"question": r["question"] + "?"})
    ds.save_to_disk(str(tmp_path / "c"))
    b = open_mm_split(_hf(tmp_path / "c", VQA_FIELDS), "eval").identity
    assert a["fingerprint"] != b["fingerprint"]


def test_hf_seed_choice_columns_frame_list_and_filter_via_load_dataset(tmp_path):
    """SEED-Bench's layout: four choice columns, a letter answer, a list of frames, video rows filtered out; read
    through `datasets.load_dataset("parquet", ...)` (the hub code path)."""
    feats = {"question_id": datasets.Value("string"), "question": datasets.Value("string"),
             "choice_a": datasets.Value("string"), "choice_b": datasets.Value("string"),
             "choice_c": datasets.Value("string"), "choice_d": datasets.Value("string"),
             "answer": datasets.Value("string"), "data_type": datasets.Value("string"),
             "question_type_id": datasets.Value("int16"), "image": datasets.Sequence(datasets.Image())}
    ds = datasets.Dataset.from_dict({
        "question_id": ["v1", "i1", "i2"], "question": ["What happens?", "Which animal?", "Which colour?"],
        "choice_a": ["run", "cat", "red"], "choice_b": ["jump", "dog", "blue"], "choice_c": ["sit", "cow", ""],
        "choice_d": ["walk", "pig", ""], "answer": ["B", "C", "A"], "data_type": ["video", "image", "image"],
        "question_type_id": [10, 3, 4],
        "image": [[_img((0, 0, 0)), _img((1, 1, 1))], [_img((0, 200, 0), "RGBA")], [_img((0, 0, 200), "L")]],
    }, features=datasets.Features(feats))
    ds.to_parquet(str(tmp_path / "seed.parquet"))
    cfg = _hf("parquet", {"sample_id": "question_id", "image": "image[0]", "question": "question",
                          "choices": ["choice_a", "choice_b", "choice_c", "choice_d"], "answers": "answer",
                          "question_type": "question_type_id"},
              split="train", filter={"column": "data_type", "equals": "image"},
              load_kwargs={"data_files": str(tmp_path / "seed.parquet"), "cache_dir": str(tmp_path / "cache")})
    split = open_mm_split(cfg, "eval")
    assert len(split) == 2
    s = split[0]
    assert (s.sample_id, s.choices, s.answers, s.question_type) == ("i1", ["cat", "dog", "cow", "pig"], ["C"], "3")
    assert s.image.getpixel((0, 0)) == (0, 200, 0)
    assert split.meta(1).choices == ["red", "blue"]  # trailing empty options dropped
    assert split.identity["filter"] == {"column": "data_type", "equals": "image"}


SQA_FEATURES = {"image": datasets.Image(), "question": datasets.Value("string"), "hint": datasets.Value("string"),
                "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("int8")}
SQA_FIELDS = {"image": "image", "question": "question", "context": "hint", "choices": "choices",
              "answer_index": "answer"}


def test_hf_scienceqa_int_answer_becomes_a_letter(tmp_path):
    path = _save(tmp_path, "sqa", {
        "image": [_img((1, 2, 3)), _img((4, 5, 6)), _img((7, 8, 9))],
        "question": ["Which is a mammal?", "Which is hot?", "Broken?"],
        "hint": ["Look at the animals.", "", ""],
        "choices": [["frog", "whale", "trout"], ["ice", "fire"], ["a", "b"]], "answer": [1, 0, 5]}, SQA_FEATURES)
    split = open_mm_split(_hf(path, SQA_FIELDS, split="test"), "eval")
    s = split[0]
    assert s.answers == ["B"] and s.choices == ["frog", "whale", "trout"]
    assert s.question == "Context: Look at the animals.\nWhich is a mammal?"
    assert split[1].answers == ["A"] and split[1].question == "Which is hot?"
    assert s.sample_id == "0" and s.image_id == "0"  # defaults: the row number
    with pytest.raises(SampleError, match="answer index 5 is outside its 2 choices"):
        split.meta(2)


def test_hf_mme_pairs_share_an_image_id(tmp_path):
    path = _save(tmp_path, "mme", {
        "question_id": ["count/000.png", "count/000.png", "OCR/001.jpg", "OCR/001.jpg"],
        "image": [_img((9, 9, 9))] * 2 + [_img((8, 8, 8))] * 2,
        "question": ["Are there two dogs? Please answer yes or no."] * 2 + ["Is the word 'stop'?"] * 2,
        "answer": ["Yes", "No", "No", "Yes"], "category": ["count", "count", "OCR", "OCR"]},
        {"question_id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
         "answer": datasets.Value("string"), "category": datasets.Value("string")})
    split = open_mm_split(_hf(path, {"image": "image", "question": "question", "answers": "answer",
                                     "question_type": "category", "image_id": "question_id"}, split="test"), "eval")
    samples = [split[i] for i in range(len(split))]
    assert [s.image_id for s in samples] == ["count/000.png"] * 2 + ["OCR/001.jpg"] * 2
    assert [s.answers for s in samples] == [["Yes"], ["No"], ["No"], ["Yes"]]
    assert [s.question_type for s in samples] == ["count", "count", "OCR", "OCR"]
    assert len({s.sample_id for s in samples}) == 4


def test_hf_gqa_images_joined_from_a_second_dataset(tmp_path):
    root = tmp_path / "gqa"
    _save(root, "testdev_balanced_instructions", {
        "id": ["q1", "q2", "q3"], "imageId": ["n2", "n1", "n9"], "question": ["Is it red?", "What is it?", "?"],
        "answer": ["yes", "cup", "x"]},
        {"id": datasets.Value("string"), "imageId": datasets.Value("string"), "question": datasets.Value("string"),
         "answer": datasets.Value("string")})
    _save(root, "testdev_balanced_images", {"id": ["n1", "n2"], "image": [_img((10, 0, 0)), _img((0, 10, 0))]},
          {"id": datasets.Value("string"), "image": datasets.Image()})
    cfg = _hf(root, {"sample_id": "id", "image": "imageId", "question": "question", "answers": "answer",
                     "question_type": "types.detailed?"}, split="testdev", config="testdev_balanced_instructions",
              images={"config": "testdev_balanced_images", "key": "id", "column": "image"})
    split = open_mm_split(cfg, "eval")
    s0, s1 = split[0], split[1]
    assert s0.image.getpixel((0, 0)) == (0, 10, 0) and s1.image.getpixel((0, 0)) == (10, 0, 0)
    assert (s0.image_id, s0.answers, s0.question_type) == ("n2", ["yes"], "")  # optional field absent
    with pytest.raises(SampleError, match="sample q3.*'n9' is not in the images dataset"):
        split[2]
    assert split.identity["images"]["rows"] == 2


def test_unknown_field_column_is_a_user_error_naming_the_columns(tmp_path):
    path = _vqav2(tmp_path)
    with pytest.raises(UserError, match=r"fields.answers names column 'answer'.*columns: question_id, image_id"):
        open_mm_split(_hf(path, {**VQA_FIELDS, "answers": "answer"}), "eval")
    with pytest.raises(UserError, match=r"fields.answers 'answers\[\].text' does not fit") as e:
        open_mm_split(_hf(path, {**VQA_FIELDS, "answers": "answers[].text"}), "eval")
    assert not isinstance(e.value, SampleError)  # a wrong mapping is the task's error, not one sample's
    with pytest.raises(UserError, match="unknown data.fields caption"):
        open_mm_split(_hf(path, {**VQA_FIELDS, "caption": "question"}), "eval")
    with pytest.raises(UserError, match="not a column path"):
        open_mm_split(_hf(path, {**VQA_FIELDS, "question": "question[x]"}), "eval")
    with pytest.raises(UserError, match="exactly one of"):
        open_mm_split(_hf(path, {**VQA_FIELDS, "answer_index": "question_id"}), "eval")
    with pytest.raises(UserError, match="filter.column 'kind'"):
        open_mm_split(_hf(path, VQA_FIELDS, filter={"column": "kind", "equals": "image"}), "eval")


def test_hf_missing_says_how_to_get_the_data(tmp_path):
    cfg = {**_hf(tmp_path / "absent", VQA_FIELDS), "local": {"annotations": "{root}/vqav2/val.jsonl",
                                                            "images": "{root}/vqav2/images"}}
    with pytest.raises(UserError, match=r"data missing: HF dataset .*absent.*local copy at .*/vqav2/val.jsonl") as e:
        open_mm_split(cfg, "eval", root=tmp_path / "data")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="only the eval split"):
        open_mm_split(cfg, "train")


# ---------------------------------------------------------------- source: local
def _local(tmp: Path, rows: list[dict], images: dict[str, Image.Image | bytes]) -> dict:
    (tmp / "bench" / "images").mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        if isinstance(im, bytes):
            (tmp / "bench" / "images" / name).write_bytes(im)
        else:
            im.save(tmp / "bench" / "images" / name)
    (tmp / "bench" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"source": "local", "local": {"annotations": "{root}/bench/val.jsonl", "images": "{root}/bench/images"}}


ROWS = [
    {"sample_id": "q1", "image": "a.png", "question": "What color?", "answers": ["red", "red"], "question_type": "c"},
    {"sample_id": "q2", "image": "a.png", "question": "Which?", "answers": "B", "choices": ["x", "y"]},
    {"sample_id": "q3", "image": "gone.png", "question": "?", "answers": ["no"]},
    {"sample_id": "q4", "image": "bad.png", "question": "?", "answers": ["no"]},
]


def test_local_jsonl_samples_and_per_sample_errors(tmp_path):
    cfg = _local(tmp_path, ROWS, {"a.png": _img((5, 6, 7), "RGBA"), "bad.png": b"\x89PNG broken"})
    split = open_mm_split(cfg, "eval", root=tmp_path)
    assert len(split) == 4
    s = split[0]
    assert (s.sample_id, s.answers, s.question_type, s.image_id) == ("q1", ["red", "red"], "c", "a.png")
    assert s.image.getpixel((0, 0)) == (5, 6, 7)
    assert split[1].choices == ["x", "y"] and split[1].answers == ["B"] and split[1].image_id == "a.png"
    with pytest.raises(SampleError, match="sample q3: image .*gone.png is missing"):
        split[2]
    with pytest.raises(SampleError, match="sample q4"):
        split[3]
    assert split.meta(3).answers == ["no"]


def test_local_missing_annotation_file_is_a_user_error(tmp_path):
    cfg = {"source": "local", "local": {"annotations": "{root}/vqav2/val.jsonl", "images": "{root}/vqav2/images"}}
    with pytest.raises(UserError, match=r"data missing: .*vqav2/val.jsonl and .*vqav2/images not found"):
        open_mm_split(cfg, "eval", root=tmp_path)
    bad = _local(tmp_path, [], {})
    (tmp_path / "bench" / "val.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(UserError, match=r"val.jsonl:1: each line needs `image`.*`answers`"):
        open_mm_split(bad, "eval", root=tmp_path)


def test_local_identity_changes_when_an_image_is_replaced(tmp_path):
    cfg = _local(tmp_path, ROWS[:2], {"a.png": _img((10, 20, 30))})
    first = open_mm_split(cfg, "eval", root=tmp_path).identity
    assert open_mm_split(cfg, "eval", root=tmp_path).identity == first
    path = tmp_path / "bench" / "images" / "a.png"
    size = path.stat().st_size
    _img((30, 20, 10)).save(path)
    assert path.stat().st_size == size  # same size in bytes, new content: only the mtime tells
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse filesystem clock cannot hide it
    assert open_mm_split(cfg, "eval", root=tmp_path).identity != first


def test_local_copy_is_preferred_over_the_hub(tmp_path):
    cfg = {**_hf("org/not-on-this-machine", VQA_FIELDS), **{"local": _local(tmp_path, ROWS[:1],
                                                                          {"a.png": _img((3, 3, 3))})["local"]}}
    split = open_mm_split(cfg, "eval", root=tmp_path)
    assert split.identity["source"] == "local" and split[0].sample_id == "q1"


# ---------------------------------------------------------------- source: scenes
def _scenes(kind: str) -> dict:
    return {"source": "scenes", "scenes": {"kind": kind, "image_size": 64, "max_objects": 4,
                                           "train": {"n": 6, "seed": 0}, "eval": {"n": 5, "seed": 1}}}


def _true_of(scene, question: str, answer: str) -> bool:
    objs = scene.objects
    if question == "how many objects are there?":
        return answer == str(len(objs))
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return answer == str(sum(plural(o.shape) == m.group(1) for o in objs))
    if m := re.fullmatch(r"what color is the (.+)\?", question):
        target = [o for o in objs if m.group(1) in (o.shape, o.phrase(color=False))]
        cx, cy = target[0].center  # the shape's pixel at its centre is the answer's colour
        return len(target) == 1 and target[0].color == answer and \
            scene.image.getpixel((int(cx), int(cy))) == COLORS[answer]
    if question == "which shape is the leftmost?":
        return answer == min(objs, key=lambda o: o.center[0]).shape
    if m := re.fullmatch(r"is the (.+) to the left or to the right of the (.+)\?", question):
        def find(p):
            return next(o for o in objs if p in (o.shape, o.phrase(size=False), o.phrase(color=False), o.phrase()))
        a, b = find(m.group(1)), find(m.group(2))
        return answer == ("left" if a.center[0] < b.center[0] else "right")
    if question.startswith("what word") or question.startswith("what digit"):
        return scene.text_item is not None and answer == scene.text_item.text
    raise AssertionError(f"unknown scene question {question!r}")


def test_scene_vqa_is_deterministic_and_true_of_the_scene():
    a, b = open_mm_split(_scenes("vqa"), "eval"), open_mm_split(_scenes("vqa"), "eval")
    assert len(a) == len(b) > 5
    scenes = SceneDataset(5, 1, 64, max_objects=4)
    kinds = set()
    for i in range(len(a)):
        s, t = a[i], b[i]
        assert (s.sample_id, s.question, s.answers, s.question_type) == (t.sample_id, t.question, t.answers,
                                                                         t.question_type)
        assert np.array_equal(np.asarray(s.image), np.asarray(t.image)) and s.image.size == (64, 64)
        scene = scenes[int(s.image_id.rsplit("-", 1)[1])]
        assert _true_of(scene, s.question, s.answers[0]), (s.question, s.answers)
        kinds.add(s.question_type)
    assert {"count", "color"} <= kinds
    train = open_mm_split(_scenes("vqa"), "train")  # the train block's own scenes
    assert (train.identity["seed"], train.identity["n"], train.meta(0).image_id) == (0, 6, "scene-0-0")


def test_scene_captions_are_deterministic_and_name_every_object():
    split = open_mm_split(_scenes("caption"), "eval")
    assert len(split) == 5
    scenes = SceneDataset(5, 1, 64, max_objects=4)
    for i in range(5):
        s = split[i]
        assert s.question == "" and s.choices is None
        assert s.answers[0] == scenes[i].caption and len(s.answers) == len(CAPTION_OPENERS) == len(set(s.answers))
        for ref in s.answers:
            assert all(o.phrase() in ref for o in scenes[i].objects), ref
        assert s.answers == open_mm_split(_scenes("caption"), "eval")[i].answers


def test_scene_config_errors():
    cfg = _scenes("vqa")
    cfg["scenes"]["eval"]["seed"] = 0
    with pytest.raises(UserError, match="same seed"):
        open_mm_split(cfg, "eval")
    with pytest.raises(UserError, match="kind must be vqa or caption"):
        open_mm_split({**_scenes("x"), "name": "t"}, "eval")
    with pytest.raises(UserError, match="split must be one of"):
        open_mm_split(_scenes("vqa"), "test")


def test_scene_conversations_carry_the_paper_prompts():
    convs = scene_conversations(3, seed=4, image_size=48, max_objects=3)
    again = scene_conversations(3, seed=4, image_size=48, max_objects=3)
    scenes = SceneDataset(3, 4, 48, max_objects=3)
    for c, d, scene in zip(convs, again, scenes):
        assert c.turns == d.turns and c.image.size == (48, 48)
        assert np.array_equal(np.asarray(c.image), np.asarray(scene.image))
        assert c.turns[:-1] == [(f"{qa.question}\n{VQA_PROMPT}", qa.answer) for qa in scene.qa]
        assert c.turns[-1] == (CAPTION_PROMPT, scene.caption)
    assert len({c.image_id for c in convs}) == 3


# ---------------------------------------------------------------- LLaVA conversations
ITEMS = [
    {"id": "000001", "image": "coco/train2017/a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the table?"}, {"from": "gpt", "value": "A cup."},
        {"from": "human", "value": "What colour is it?"}, {"from": "gpt", "value": "Blue."}]},
    {"id": "000002", "image": "coco/train2017/a.jpg", "conversations": [
        {"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A blue cup on wood."}]},
    {"id": "sharegpt_9", "conversations": [
        {"from": "human", "value": "Write a haiku."}, {"from": "gpt", "value": "Cups of blue\nwood"}]},
    {"id": "000004", "image": "coco/train2017/missing.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Nothing."}]},
]


def _check_conversations(convs):
    assert [c.turns for c in convs[:3]] == [
        [("What is on the table?", "A cup."), ("What colour is it?", "Blue.")],
        [("Describe it.", "A blue cup on wood.")],
        [("Write a haiku.", "Cups of blue\nwood")]]
    assert convs[0].image_id == convs[1].image_id == "coco/train2017/a.jpg"
    assert convs[0].image.getpixel((0, 0)) == (0, 0, 250)
    assert convs[2].image is None and not convs[2].has_image and convs[2].image_id == ""
    with pytest.raises(SampleError, match="item 000004: image .*missing.jpg is missing"):
        _ = convs[3].image


def test_open_conversations_json_strips_the_image_mark_and_keeps_turn_order(tmp_path):
    (tmp_path / "imgs" / "coco" / "train2017").mkdir(parents=True)
    _img((0, 0, 250)).save(tmp_path / "imgs" / "coco" / "train2017" / "a.jpg", format="PNG")  # exact pixels
    (tmp_path / "mix.json").write_text(json.dumps(ITEMS))
    _check_conversations(open_conversations(tmp_path / "mix.json", tmp_path / "imgs"))
    late = [{"id": "y", "conversations": [{"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "q"},
                                          {"from": "gpt", "value": "a"}, {"from": "human", "value": "unanswered"}]}]
    (tmp_path / "late.jsonl").write_text("".join(json.dumps(d) + "\n" for d in late))
    assert open_conversations(tmp_path / "late.jsonl")[0].turns == [("q", "a")]  # as LLaVA's preprocessing
    broken = [{"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match="item x: message 0 is from 'human' and message 1 from 'human'"):
        open_conversations(tmp_path / "broken.json")


def test_open_conversations_from_an_hf_dataset(tmp_path):
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    _img((0, 0, 250)).save(tmp_path / "coco" / "train2017" / "a.jpg", format="PNG")
    datasets.Dataset.from_list([{**d, "image": d.get("image")} for d in ITEMS]).save_to_disk(str(tmp_path / "hf"))
    _check_conversations(open_conversations(tmp_path / "hf", tmp_path))
    # images stored in the dataset itself (an Image column), text-only rows None
    rows = [{"id": "a", "image": _img((0, 0, 250)), "conversations": ITEMS[0]["conversations"]},
            {"id": "b", "image": None, "conversations": ITEMS[2]["conversations"]}]
    feats = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                               "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}]})
    datasets.Dataset.from_list(rows, features=feats).save_to_disk(str(tmp_path / "hf_img"))
    a, b = open_conversations(tmp_path / "hf_img")
    assert a.image.getpixel((0, 0)) == (0, 0, 250) and a.image_id == "a" and a.turns[0][0] == "What is on the table?"
    assert b.image is None and b.turns == [("Write a haiku.", "Cups of blue\nwood")]
    with pytest.raises(UserError, match="conversations not found"):
        open_conversations(tmp_path / "nowhere")


# ---------------------------------------------------------------- the Table C2 benchmarks
NAMES = ("llava_vqav2", "llava_gqa", "llava_okvqa", "llava_textvqa", "llava_docvqa", "llava_infovqa", "llava_chartqa",
         "llava_scienceqa", "llava_seed", "llava_mme", "llava_coco_captions", "llava_textcaps", "llava_nocaps")
METRIC_OF_KIND = {"vqa": {"vqa_accuracy"}, "short": {"exact_match", "anls", "relaxed_accuracy"},
                  "mc": {"choice_accuracy"}, "yes_no": {"mme"}, "caption": {"cider"}}


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_entry_is_complete_and_consistent(name, tmp_path):
    assert set(BENCHMARKS) == set(NAMES)
    e = BENCHMARKS[name]
    assert e["kind"] in KINDS and e["metric"] in METRICS and e["metric"] in METRIC_OF_KIND[e["kind"]]
    assert e["lmms_eval"].startswith("lmms_eval/tasks/") and e["note"] and e["prompt"]
    data = e["data"]
    assert data["source"] == "hf" and {"id", "config", "split", "revision"} <= set(data["hf"])
    assert data["hf"]["revision"] is None and re.fullmatch(r"[\w.-]+/[\w.-]+", data["hf"]["id"])
    assert set(data["local"]) == {"annotations", "images"} and all("{root}" in v for v in data["local"].values())
    fields = data["fields"]
    columns = sorted({FieldPath.parse(p, k).column for k, v in fields.items() for p in (v if isinstance(v, list)
                                                                                         else [v])})
    FieldMap(fields, columns, name)  # a well-formed mapping (unknown fields or bad paths raise)
    assert set(fields) <= set(FIELDS)
    if e["kind"] == "mc":
        assert "choices" in fields and e["prompt"].startswith("Answer with the option's letter")
    if e["kind"] == "caption":
        assert "question" not in fields
    # the local alternative opens (with the hub id unreachable) once its files exist
    ann = Path(data["local"]["annotations"].replace("{root}", str(tmp_path)))
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"image": "x.png", "answers": ["A"]}) + "\n")
    Path(data["local"]["images"].replace("{root}", str(tmp_path))).mkdir()
    assert len(open_mm_split(data, "eval", root=tmp_path)) == 1
