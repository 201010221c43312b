"""What LiT trains on and is evaluated on: image-caption pairs, and labelled images with class names.

- Training pairs come from the pretraining sources (`aimv2_eval.data.pairs`: folders, webdataset shards, HF
  datasets, the embedded scenes and digits) or from the embedded single-object scenes below.
- Evaluation sets are labelled splits (`aimv2_eval.data.sources`: ImageNet through an image folder or HF) plus the
  class names the prompts are built from; a set may restrict the candidate classes (zero-shot on unseen classes).

The embedded unseen-class task uses procedural scenes with one object each: its class is "<colour> <shape>" (8 x 6 =
48 classes) and its caption is the scene's own ("a picture of a small red star on a striped beige background.").
LiT trains only on scenes of the seen classes; the unseen classes are colour-shape combinations never shown in
training (each colour and each shape still appears in other combinations), so zero-shot accuracy on them measures
whether image and text embeddings compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from aimv2_eval.data.pairs import ScenePairs, build_source
from aimv2_eval.data.scenes import COLORS, SHAPES, SceneDataset
from aimv2_eval.data.sources import LabelledImages, SceneImages, limit, open_split
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.lit.zeroshot import resolve_classnames

SCENE_CLASSES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


class PairSet(Protocol):
    identity: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Image.Image, str]: ...


@dataclass
class EvalSet:
    """Labelled images scored against the classifier of `candidates` (global class ids; None = every class)."""

    name: str  # metric suffix: "" -> top1, "unseen" -> top1_unseen
    split: LabelledImages
    classnames: list[str]
    candidates: list[int] | None = None

    @property
    def num_candidates(self) -> int:
        return len(self.candidates) if self.candidates is not None else len(self.classnames)


@dataclass
class LitData:
    train: PairSet | None
    evals: list[EvalSet]
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- pairs from the pretraining sources
class SourcePairs:
    """Adapter from an `aimv2_eval.data.pairs` source (map-style `Pair`s) to (image, caption)."""

    def __init__(self, source: Any, size: int | None = None) -> None:
        self.source = source
        self.size = min(len(source), size) if size else len(source)
        self.identity = f"{source.name}[:{self.size}]"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Image.Image, str]:
        pair = self.source[index]
        return pair.image, pair.caption

    def captions(self) -> list[str]:
        """Every caption; without decoding images where the source can (scenes)."""
        own = getattr(self.source, "captions", None)
        if callable(own):
            return own()[: self.size]
        return [self.source[i].caption for i in range(self.size)]


# ---------------------------------------------------------------- embedded: single-object scenes
def scene_class(scene: Any) -> int:
    obj = scene.objects[0]
    return SCENE_CLASSES.index(f"{obj.color} {obj.shape}")


def collect(scenes: SceneDataset, quotas: dict[str, tuple[set[int], int]]) -> dict[str, tuple[list[int], list[int]]]:
    """Scan scenes in index order and keep, for each named quota (classes, count), the first scenes of those
    classes: deterministic, and no scene is used twice."""
    out: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in quotas}
    for i in range(len(scenes)):
        label = scene_class(scenes[i])
        for name, (classes, count) in quotas.items():
            idx, labels = out[name]
            if label in classes and len(idx) < count:
                idx.append(i)
                labels.append(label)
                break
        if all(len(out[n][0]) >= c for n, (_, c) in quotas.items()):
            return out
    short = {n: len(out[n][0]) for n in quotas}
    raise UserError(f"scene-object data: only {short} scenes found in {len(scenes)}; raise data.scene_objects.scan")


def scene_object_data(cfg: dict[str, Any], image_size: int, limit_n: int | None = None) -> LitData:
    """Train pairs of seen classes; eval sets 'unseen' (unseen images, unseen candidates), 'unseen_all' (the same
    images against all classes: generalised zero-shot) and 'seen' (new images of seen classes, seen candidates)."""
    opts = cfg.get("scene_objects", {}) or {}
    unseen_names = list(cfg.get("unseen_classes") or [])
    bad = [c for c in unseen_names if c not in SCENE_CLASSES]
    if bad or not unseen_names:
        raise UserError(f"data.unseen_classes must list '<colour> <shape>' classes, e.g. 'red star'; bad: {bad or '[]'}")
    unseen = {SCENE_CLASSES.index(c) for c in unseen_names}
    seen = set(range(len(SCENE_CLASSES))) - unseen
    n_train, n_unseen, n_seen = (int(opts.get(k, d)) for k, d in (("train", 480), ("test_unseen", 240),
                                                                    ("test_seen", 240)))
    if limit_n:
        n_train, n_unseen, n_seen = (min(n, limit_n) for n in (n_train, n_unseen, n_seen))
    scan = int(opts.get("scan", 20000))
    kwargs = {"image_size": image_size, "max_objects": 1, "text_prob": 0.0}
    train_scenes = SceneDataset(scan, int(opts.get("train_seed", 0)), **kwargs)
    test_scenes = SceneDataset(scan, int(opts.get("test_seed", 1)), **kwargs)
    train_idx, _ = collect(train_scenes, {"train": (seen, n_train)})["train"]
    test = collect(test_scenes, {"unseen": (unseen, n_unseen), "seen": (seen, n_seen)})
    names = list(SCENE_CLASSES)
    loader = SceneImages(test_scenes)

    def split(name: str) -> LabelledImages:
        idx, labels = test[name]
        return LabelledImages(f"scene-objects:seed{test_scenes.seed}:{image_size}px:{name}{len(idx)}",
                              np.array(labels), len(names), loader, names, np.array(idx, dtype=np.int64))

    unseen_split, seen_split = split("unseen"), split("seen")
    evals = [
        EvalSet("unseen", unseen_split, names, sorted(unseen)),
        EvalSet("unseen_all", unseen_split, names, None),
        EvalSet("seen", seen_split, names, sorted(seen)),
    ]
    details = {"unseen_classes": sorted(unseen_names), "num_seen_classes": len(seen),
               "train_pairs": len(train_idx), "test_images": {"unseen": len(unseen_split), "seen": len(seen_split)}}
    return LitData(SourcePairs(ScenePairs(train_scenes, train_idx)), evals, details)


# ---------------------------------------------------------------- from a task
def load_lit_data(data_cfg: dict[str, Any], protocol: dict[str, Any], data_root: Any = None,
                  limit_n: int | None = None, seed: int = 0) -> LitData:
    """The task's data: `source: scene_objects` (embedded), else `pairs:` (training, if mode is train) and the
    labelled test split of the data block (`imagefolder` / `hf`, as the probe tasks) for zero-shot evaluation."""
    if data_cfg.get("source") == "scene_objects":
        return scene_object_data(data_cfg, int(protocol["image_size"]), limit_n)
    train = None
    if protocol["mode"] == "train":
        if "pairs" not in data_cfg:
            raise UserError("LiT training needs data.pairs (image-caption sources, as for pretraining: folder, "
                            "webdataset, hf, scenes, digits)")
        train = SourcePairs(build_source(data_cfg["pairs"], seed), limit_n)
    classnames = resolve_classnames(protocol["classnames"])
    n = int(data_cfg.get("num_classes", len(classnames)))
    if n != len(classnames):
        raise UserError(f"data.num_classes is {n} but protocol.classnames has {len(classnames)} names")
    test = limit(open_split(data_cfg, "test", data_root), limit_n, seed)
    return LitData(train, [EvalSet("", test, classnames)])
