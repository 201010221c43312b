"""Embedded scenes (annotations true to the pixels, flip-consistent) and the image-caption sources."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from aimv2_eval.data.pairs import (
    DigitPairs,
    FolderPairs,
    HFPairs,
    Mixture,
    Pair,
    ScenePairs,
    TarPairs,
    build_source,
)
from aimv2_eval.data.scenes import COLORS, SHAPES, SceneDataset, generate_scene, plural, swap_left_right
from aimv2_eval.errors import UserError

DS = SceneDataset(60, seed=3, image_size=112)


def _center(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_scenes_are_deterministic_and_seeded():
    a, b = SceneDataset(5, seed=1, image_size=64)[4], SceneDataset(50, seed=1, image_size=64)[4]
    assert a.caption == b.caption
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    c = SceneDataset(5, seed=2, image_size=64)[4]
    assert a.caption != c.caption or not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    assert a.image.mode == "RGB" and a.image.size == (64, 64)


def test_masks_boxes_and_colours_match_the_pixels():
    for s in (DS[i] for i in range(30)):
        img = np.asarray(s.image).astype(int)
        assert s.masks.shape == (len(s.objects), 112, 112)
        assert not (s.masks.sum(0) > 1).any()  # instances never overlap
        for obj, mask, box in zip(s.objects, s.masks, s.boxes):
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box)
            assert 0 <= box[0] < box[2] <= 112 and 0 <= box[1] < box[3] <= 112
            # the object's pixels have its colour (text never overlaps an object)
            assert np.abs(img[mask] - np.array(COLORS[obj.color])).max() <= 1
        areas = s.masks.reshape(len(s.objects), -1).sum(1)
        assert s.label == SHAPES.index(s.objects[0].shape) and areas[0] >= 0.93 * areas.max()  # largest first


def test_captions_and_referring_expressions_describe_the_scene():
    for s in (DS[i] for i in range(40)):
        for o in s.objects:
            assert f"{o.size} {o.color} {o.shape}" in s.caption
        for ref in s.referring:
            o = s.objects[ref.target]
            m = re.fullmatch(r"the (.+?)(?: (left of|right of|above|below) the (\w+))?", ref.text)
            assert m, ref.text
            words = m.group(1).split()
            assert words[-1] == o.shape and set(words[:-1]) <= {o.size, o.color}
            if m.group(2):
                (anchor,) = [k for k, x in enumerate(s.objects) if x.shape == m.group(3)]
                (cx, cy), (ax, ay) = _center(s.boxes[ref.target]), _center(s.boxes[anchor])
                dx, dy = cx - ax, cy - ay
                rel = m.group(2)
                assert {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[rel] > 0, ref.text


def test_relational_expression_example_form():
    texts = [r.text for i in range(60) for r in DS[i].referring]
    assert any(re.fullmatch(r"the (small|large) \w+ \w+ (left|right) of the \w+", t) for t in texts)


def test_questions_have_true_answers():
    kinds = set()
    for s in (DS[i] for i in range(60)):
        for q in s.qa:
            kinds.add(q.kind)
            if q.question == "how many objects are there?":
                assert q.answer == str(len(s.objects))
            elif m := re.fullmatch(r"how many (\w+) are there\?", q.question):
                assert q.answer == str(sum(plural(o.shape) == m.group(1) for o in s.objects))
            elif m := re.fullmatch(r"what color is the (.+)\?", q.question):
                words = m.group(1).split()
                match = [o for o in s.objects if o.shape == words[-1] and (len(words) == 1 or o.size == words[0])]
                assert len(match) == 1 and match[0].color == q.answer
            elif q.kind == "read":
                assert s.text_item is not None and q.answer == s.text_item.text
    assert kinds == {"count", "color", "position", "read"}


def test_rendered_text_is_in_the_image_and_caption():
    s = next(DS[i] for i in range(60) if DS[i].text_item is not None)
    assert s.text_item.text in s.caption
    plain = np.asarray(s._render_shapes()[0])
    assert (np.asarray(s.image) != plain).any()  # the text changed pixels


def test_flip_mirrors_pixels_and_keeps_every_text_true():
    for s in (DS[i] for i in range(40)):
        f = s.flip()
        assert f.caption == swap_left_right(s.caption)
        assert np.array_equal(f.masks, s.masks[:, :, ::-1])
        w = s.width
        assert np.array_equal(f.boxes, np.stack([w - s.boxes[:, 2], s.boxes[:, 1], w - s.boxes[:, 0], s.boxes[:, 3]], 1))
        if s.text_item is None:  # without text the image is an exact mirror
            assert np.array_equal(np.asarray(f.image), np.asarray(s.image)[:, ::-1])
        for q in f.qa:  # position answers hold on the flipped geometry
            m = re.fullmatch(r"is the (.+) to the left or to the right of the (.+)\?", q.question)
            if m:
                i = next(r.target for r in f.referring if r.text == f"the {m.group(1)}")
                j = next(r.target for r in f.referring if r.text == f"the {m.group(2)}")
                left = _center(f.boxes[i])[0] < _center(f.boxes[j])[0]
                assert q.answer == ("left" if left else "right")
        back = f.flip()
        assert back.caption == s.caption and np.array_equal(np.asarray(back.image), np.asarray(s.image))


def test_flip_keeps_rendered_text_readable():
    s = next(DS[i] for i in range(60) if DS[i].text_item is not None)
    f = s.flip()
    assert f.text_item.text == s.text_item.text
    assert not np.array_equal(np.asarray(f.image), np.asarray(s.image)[:, ::-1])  # text not mirrored


def test_swap_left_right_words():
    assert swap_left_right("Left of the leftmost, right.") == "Right of the rightmost, left."
    assert swap_left_right("the bright light") == "the bright light"


def test_aspect_ratios_keep_the_area():
    ds = SceneDataset(20, seed=0, image_size=96, aspect_ratios=(0.5, 1.0, 2.0))
    sizes = {ds[i].image.size for i in range(20)}
    assert len(sizes) == 3
    for w, h in sizes:
        assert abs(w * h - 96 * 96) < 0.03 * 96 * 96
    assert generate_scene(0, 1, (140, 70)).image.size == (140, 70)


# ---------------------------------------------------------------- pairs
def test_folder_pairs(tmp_path):
    Image.new("RGBA", (10, 8), (0, 0, 255, 255)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a blue square on the left\n")
    Image.new("L", (6, 6), 100).save(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("grey")
    Image.new("RGB", (6, 6)).save(tmp_path / "no_caption.png")
    src = FolderPairs(tmp_path)
    assert len(src) == 2
    p = src[0]
    assert p.image.mode == "RGB" and p.caption == "a blue square on the left"
    f = p.flipped()
    assert f.caption == "a blue square on the right"
    assert np.array_equal(np.asarray(f.image), np.asarray(p.image)[:, ::-1])
    assert src[1].image.mode == "RGB"
    (tmp_path / "c.png").write_bytes(b"not an image")
    (tmp_path / "c.txt").write_text("broken")
    with pytest.raises(UserError, match="cannot read image"):
        FolderPairs(tmp_path)[2]


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        FolderPairs(tmp_path / "missing")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(UserError, match="caption file"):
        FolderPairs(tmp_path)


def test_webdataset_shards(tmp_path):
    import webdataset as wds

    for k in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{k:03d}.tar")) as sink:
            for i in range(3):
                buf = io.BytesIO()
                Image.new("L", (5, 5), 40 * i).save(buf, format="PNG")
                sink.write({"__key__": f"s{k}_{i}", "png": buf.getvalue(), "txt": f"caption {k} {i}"})
    src = TarPairs(str(tmp_path / "shard-{000..001}.tar"))
    assert len(src) == 6
    caps = sorted(src[i].caption for i in range(6))
    assert caps[0] == "caption 0 0" and caps[-1] == "caption 1 2"
    assert src[4].image.mode == "RGB" and src[4].image.size == (5, 5)
    assert len(TarPairs(str(tmp_path / "shard-*.tar"))) == 6
    with pytest.raises(UserError, match="not found"):
        TarPairs(str(tmp_path / "shard-{000..004}.tar"))


def test_hf_dataset_pairs(tmp_path):
    import datasets

    images = [Image.new("L", (6, 6), v) for v in (10, 200)]
    ds = datasets.Dataset.from_dict({"img": images, "caption": ["dark", "bright"]},
                                    features=datasets.Features({"img": datasets.Image(), "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    src = HFPairs(str(tmp_path / "ds"), image_column="img", text_column="caption")
    assert len(src) == 2 and src[1].caption == "bright" and src[1].image.mode == "RGB"
    with pytest.raises(UserError, match="columns are"):
        HFPairs(str(tmp_path / "ds"), image_column="image", text_column="caption")
    with pytest.raises(UserError, match="cannot load dataset"):
        HFPairs(str(tmp_path / "nope"))


def test_digit_and_scene_pairs_and_mixture():
    digits = DigitPairs(image_size=48)
    p = digits[10]
    assert len(digits) == 1797 and p.image.size == (48, 48) and not p.flippable
    d = int(digits.targets[10])
    assert str(d) in p.caption or ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                   "nine"][d] in p.caption
    scenes = ScenePairs.generate(n=20, seed=0, image_size=48)
    assert scenes[3].caption == scenes.scenes[3].caption and scenes[3].flipped().scene.mirrored
    mix = Mixture([scenes, digits], [0.75, 0.25], seed=0)
    keys = [mix[i].key for i in range(400)]
    assert keys == [mix[i].key for i in range(400)]  # deterministic
    frac = np.mean([k.startswith("scene") for k in keys])
    assert 0.68 < frac < 0.82


def test_scene_pairs_pick_indices_and_list_captions_without_rendering(monkeypatch):
    ds = SceneDataset(30, seed=2, image_size=32)
    picked = ScenePairs(ds, [5, 2, 9])
    assert len(picked) == 3 and picked[1].caption == ds[2].caption and picked[1].key == "scene-2"
    assert picked[1].image.tobytes() == ds[2].image.tobytes()
    for bad in (3, -1):
        with pytest.raises(IndexError):
            picked[bad]

    def no_render(self):
        raise AssertionError("captions() rendered a scene")

    monkeypatch.setattr("aimv2_eval.data.scenes.Scene._render", no_render)
    assert picked.captions() == [ds[i].caption for i in (5, 2, 9)]
    assert len(ScenePairs(ds).captions()) == 30


def test_build_source_errors():
    with pytest.raises(UserError, match="unknown data source kind"):
        build_source({"kind": "laion"})
    with pytest.raises(UserError, match="bad folder"):
        build_source({"kind": "folder"})
    assert isinstance(build_source([{"kind": "scenes", "n": 3, "weight": 1}]), ScenePairs)


def test_pair_flip_of_plain_image():
    p = Pair(Image.new("RGB", (3, 1)), "the cat on the left looks right")
    assert p.flipped().caption == "the cat on the right looks left"
