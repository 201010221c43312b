"""Grounding data for the MM-Grounding-DINO plugin: open-vocabulary detection (OVD) and referring expressions (REC).

Every source becomes a `GroundingSet` of `GroundingSample`s (RGB image, caption, xyxy boxes in pixels, per box the
character spans of the caption it grounds, category labels) of one of three kinds:
  detection  boxes with category labels (OVD: COCO, LVIS, ODVG detection, scenes_ovd); the caption is "" and every
             box's spans are [] here: the model builds its prompt (and spans) from `class_names`; `.coco` is the
             pycocotools ground truth for AP, `.gt` the raw dict (LVIS keeps its fields for `lvis_evaluate`)
  rec        one expression -> its box(es): caption = the expression, each box's spans [(0, len(caption))], label -1
  phrases    a caption with several grounded phrases (Flickr30k Entities, ODVG grounding): spans = tokens_positive

Sources (a task's `data:` block; "{root}" in paths = --data-root / $AIMV2_EVAL_DATA):
  odvg        {kind?, <split>: {images, annotations, label_map?}}: MM-Grounding-DINO's ODVG jsonl, one JSON object
              per line {filename, height, width, detection: {instances: [{bbox: xyxy, label: int, category}]}} (with
              `label_map`, a json {"<label>": "<name>"}: kind detection) or {..., grounding: {caption, regions:
              [{bbox: xyxy | [xyxy, ...], phrase, tokens_positive: [[start, end], ...]}]}} (kind phrases, or `kind:
              rec` for one expression per line). Image ids are the 1-based line numbers.
  mdetr       {kind: rec | phrases, <split>: {images, annotations}}: MDETR's COCO-style json (final_refcoco_val.json,
              final_flickr_separateGT_val.json, ...): each `images` entry {id, file_name, height, width, caption,
              original_id?} is one sample; its `annotations` {image_id, bbox: xywh, tokens_positive} are its boxes.
  coco        {novel?: [names], <split>: {images, annotations}}: a COCO instances json (detection.py's loader).
  lvis        {<split>: {images, annotations}}: an LVIS json (categories carry `frequency` r/c/f); an image is
              found as images/<file_name>, else from its `coco_url` as images/<train2017|val2017>/<name> or
              images/<name>, so `images` can be the COCO root.
  hf          {id, splits, revision, image_key: image, expression_key: answer, bbox_key: bbox, bbox_format: xywh,
              load_kwargs}: a `datasets` dataset with one target object per row (lmms-lab/RefCOCO, RefCOCOplus,
              RefCOCOg: `image`, `answer` = a list of expressions, `bbox` = COCO xywh); every expression is a sample.
  scenes_rec  {image_size, max_objects, <split>: {n, seed}}: every expression of `grounding_expressions` of each
              procedural scene is a sample.
  scenes_ovd  {image_size, max_objects, held_out: [names], <split>: {n, seed}}: categories are all "<colour> <shape>"
              pairs; `held_out` categories (novel) never occur in the train split: train keeps the first n scenes
              of its seed (in index order) that contain none of them, skipping the others (counted in
              `skipped_held_out`), so n stays n; val is drawn as is and must contain every held-out category.

Bad input ends in one `UserError` line naming the file (an expression without a box, tokens_positive outside the
caption, an empty category list, missing images, a line or file that is not JSON, with its line number) or gets a
counted treatment (`GroundingSet.report`): boxes partly outside the image are clipped (`clipped`), boxes entirely
outside (`dropped_outside`) or under 1 px wide or high after clipping (`dropped_degenerate`, mmdet's ODVG rule) are
dropped; a phrases/detection sample left without boxes is kept (`samples_without_boxes`); a REC expression left
without a box is an error.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from aimv2_eval.data.detection import DetectionSet, _build, _quiet_coco, open_coco
from aimv2_eval.data.images import open_image, to_rgb
from aimv2_eval.data.scenes import COLORS, SHAPES, SceneDataset, grounding_expressions
from aimv2_eval.data.sources import DATA_ROOT_ENV, data_root
from aimv2_eval.errors import UserError, first_line

GROUNDING_SOURCES = ("odvg", "mdetr", "coco", "lvis", "hf", "scenes_rec", "scenes_ovd")
KINDS = ("detection", "rec", "phrases")
REPORT_KEYS = ("samples", "images", "boxes", "clipped", "dropped_outside", "dropped_degenerate",
               "samples_without_boxes", "skipped_held_out")
SCENE_CATEGORIES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)  # scenes_ovd: every colour x shape pair
SCENE_EXPRESSIONS_VERSION = 1  # bump when grounding_expressions changes: it is part of scenes_rec's identity

Span = tuple[int, int]


@dataclass
class GroundingSample:
    image: Image.Image  # RGB
    caption: str  # REC: the expression; phrases: the caption; detection: "" (the prompt is built from class names)
    boxes: np.ndarray  # (N, 4) float32 xyxy in pixels
    spans: list[list[Span]]  # per box: [start, end) character spans of `caption` that the box grounds
    labels: np.ndarray  # (N,) int64 category index (detection), -1 for REC / phrases
    image_id: int
    sample_id: int  # unique per sample (REC has several expressions per image)


@dataclass
class _Record:
    image: int  # index for the set's image loader
    caption: str
    boxes: np.ndarray
    spans: list[list[Span]]
    labels: np.ndarray
    image_id: int
    sample_id: int
    width: int
    height: int


class GroundingSet:
    """One split: `len`, `[i] -> GroundingSample`, what loading did (`report`) and, for detection sets, class names
    and the ground truth. `targets()` / `sizes()` give boxes and image sizes without decoding an image."""

    def __init__(self, name: str, identity: str, kind: str, records: list[_Record],
                 loader: Callable[[int], Image.Image], report: dict[str, int], *,
                 class_names: list[str] | None = None, category_ids: list[int] | None = None,
                 gt: dict | None = None, novel_names: Sequence[str] = (),
                 frequencies: list[str] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}; known: {', '.join(KINDS)}")
        self.name, self.identity, self.kind = name, identity, kind
        self._records, self._loader, self.report = records, loader, report
        self.class_names, self.category_ids, self.gt = class_names, category_ids, gt
        self.novel_names = list(novel_names)
        self.frequencies = frequencies  # LVIS: "r" / "c" / "f" per class, aligned with class_names

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        return f"GroundingSet({self.identity!r}, {self.kind}, {len(self)} samples{classes})"

    def __getitem__(self, i: int) -> GroundingSample:
        if not 0 <= i < len(self._records):
            raise IndexError(f"sample {i} out of range 0..{len(self._records) - 1}")
        r = self._records[i]
        img = to_rgb(self._loader(r.image), f"{r.image_id} of {self.identity}")
        if img.size != (r.width, r.height):
            raise UserError(f"{self.name}: image {r.image_id} is {img.size[0]}x{img.size[1]} but the annotations say "
                            f"{r.width}x{r.height}; fix its width/height in the annotation file")
        return GroundingSample(img, r.caption, r.boxes.copy(), [list(s) for s in r.spans], r.labels.copy(),
                               r.image_id, r.sample_id)

    def targets(self) -> list[np.ndarray]:
        """Ground-truth boxes (N, 4) xyxy of every sample, in order (for `precision_at_k`)."""
        return [r.boxes.copy() for r in self._records]

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every sample's image (for the trivial baselines)."""
        return [(r.width, r.height) for r in self._records]

    def captions(self) -> list[str]:
        return [r.caption for r in self._records]

    @property
    def num_classes(self) -> int:
        return len(self.class_names or ())

    def _ids_of(self, names: Sequence[str]) -> list[int]:
        if self.class_names is None or self.category_ids is None:
            return []
        wanted = set(names)
        return [cid for n, cid in zip(self.class_names, self.category_ids) if n in wanted]

    @property
    def novel_ids(self) -> list[int]:
        """Category ids of the novel (held-out) classes, for `ovd_metrics`."""
        return self._ids_of(self.novel_names)

    @property
    def base_ids(self) -> list[int]:
        names = set(self.novel_names)
        return self._ids_of([n for n in self.class_names or () if n not in names])

    @cached_property
    def coco(self) -> COCO:
        """The pycocotools ground truth of a detection set (built on first use)."""
        if self.gt is None:
            raise ValueError(f"{self.name} is a {self.kind} set: it has no COCO ground truth (use targets())")
        return _quiet_coco(self.gt)


# ---------------------------------------------------------------- validation helpers
def _report() -> dict[str, int]:
    return dict.fromkeys(REPORT_KEYS, 0)


def _is_box(b: Any) -> bool:
    return (isinstance(b, list | tuple) and len(b) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b))


def _clean_boxes(boxes: list, width: int, height: int, report: dict[str, int], where: str) -> tuple[np.ndarray, list[int]]:
    """xyxy boxes clipped to the image; fully-outside and sub-pixel ones dropped. Returns (kept (K, 4), their
    positions in `boxes`)."""
    kept, pos = [], []
    for k, b in enumerate(boxes):
        if not _is_box(b):
            raise UserError(f"{where}: box {str(b)[:60]} is not 4 finite numbers; fix or remove it")
        x1, y1, x2, y2 = (float(v) for v in b)
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        if cx2 <= cx1 or cy2 <= cy1:
            report["dropped_outside" if x2 > x1 and y2 > y1 else "dropped_degenerate"] += 1
            continue
        if cx2 - cx1 < 1 or cy2 - cy1 < 1:
            report["dropped_degenerate"] += 1
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            report["clipped"] += 1
        kept.append((cx1, cy1, cx2, cy2))
        pos.append(k)
    return np.array(kept, dtype=np.float32).reshape(-1, 4), pos


def _spans(tokens: Any, caption: str, where: str) -> list[Span]:
    """tokens_positive [[start, end], ...] checked against the caption."""
    if not isinstance(tokens, list | tuple) or not tokens:
        raise UserError(f"{where}: tokens_positive {str(tokens)[:60]} is not a list of [start, end] pairs; fix it")
    out = []
    for t in tokens:
        ok = isinstance(t, list | tuple) and len(t) == 2 and all(isinstance(v, int) for v in t)
        if not ok or not 0 <= t[0] < t[1] <= len(caption):
            raise UserError(f"{where}: tokens_positive {str(t)[:40]} lies outside the caption "
                            f"({len(caption)} characters: {caption[:60]!r}); fix the spans or the caption")
        out.append((int(t[0]), int(t[1])))
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"data missing: annotation file {path} not found; put it there or fix the task's data block")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({first_line(exc)}); re-download or fix the file") from None


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, object) of every non-blank line."""
    if not path.is_file():
        raise UserError(f"data missing: annotation file {path} not found; put it there or fix the task's data block")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n} is not valid JSON ({first_line(exc)}); fix or remove that line") from None
    return out


def _identity(source: str, path: Path, *extra: str) -> str:
    st = path.stat()
    return ":".join((source, str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), *extra))


class _FileImages:
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [str(p) for p in paths]

    def __call__(self, i: int) -> Image.Image:
        return open_image(self.paths[i])


def _image_paths(images_dir: Path, candidates: Sequence[Sequence[str]], ann_file: Path) -> list[Path]:
    """Per image, the first of its candidate relative paths that exists; one UserError if any image has none (one
    listing per folder, not a stat per file)."""
    if not images_dir.is_dir():
        raise UserError(f"data missing: image folder {images_dir} not found; put the images of {ann_file.name} there")
    listings: dict[Path, set[str]] = {}

    def exists(p: Path) -> bool:
        if p.parent not in listings:
            listings[p.parent] = {e.name for e in os.scandir(p.parent)} if p.parent.is_dir() else set()
        return p.name in listings[p.parent]

    paths, missing = [], []
    for names in candidates:
        found = next((images_dir / n for n in names if exists(images_dir / n)), None)
        paths.append(found or images_dir / names[0])
        if found is None:
            missing.append(images_dir / names[0])
    if missing:
        raise UserError(f"data missing: {len(missing)} of {len(paths)} images named in {ann_file} are not under "
                        f"{images_dir} (first: {missing[0]}); add them or point the split's `images` elsewhere")
    return paths


def _distinct(names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Distinct names (loader order) and each entry's position among them: REC samples share images."""
    index: dict[str, int] = {}
    positions = [index.setdefault(n, len(index)) for n in names]
    return list(index), positions


def _finish(report: dict[str, int], records: list[_Record]) -> None:
    report["samples"] = len(records)
    report["images"] = len({r.image_id for r in records})
    report["boxes"] = sum(len(r.boxes) for r in records)
    report["samples_without_boxes"] = sum(not len(r.boxes) for r in records)


def _rec_spans(caption: str, n: int) -> list[list[Span]]:
    return [[(0, len(caption))] for _ in range(n)]


# ---------------------------------------------------------------- ODVG jsonl (MM-Grounding-DINO)
def _label_map(path: Path) -> tuple[list[str], list[int]]:
    lm = _read_json(path)
    if not isinstance(lm, dict) or not lm:
        raise UserError(f"{path}: the label map is empty or not an object {{\"<label>\": \"<name>\"}}; list every category")
    try:
        keys = sorted(lm, key=int)
    except ValueError:
        raise UserError(f"{path}: label map keys must be integer labels (found {next(iter(lm))!r}); fix the file") from None
    return [str(lm[k]) for k in keys], [int(k) for k in keys]


def _region_spans(region: dict, caption: str, where: str) -> list[Span]:
    if "tokens_positive" in region:
        return _spans(region["tokens_positive"], caption, where)
    phrase = str(region.get("phrase", ""))
    start = caption.find(phrase) if phrase else -1
    if start < 0:  # no spans and a phrase that is not in the caption: nothing to ground
        raise UserError(f"{where}: a region has no tokens_positive and its phrase {phrase!r} is not in the caption; "
                        "add tokens_positive")
    return [(start, start + len(phrase))]


def open_odvg(images_dir: str | Path, ann_file: str | Path, label_map: str | Path | None = None,
              kind: str | None = None, name: str | None = None) -> GroundingSet:
    """An ODVG jsonl and its image folder: detection lines with a label map, else grounding lines (phrases, or rec)."""
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    kind = kind or ("detection" if label_map else "phrases")
    if kind not in KINDS:
        raise UserError(f"odvg kind {kind!r}; known: {', '.join(KINDS)}")
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    label_of: dict[int, int] = {}
    if kind == "detection":
        if label_map is None:
            raise UserError(f"{ann_file}: ODVG detection needs its label map json; set the split's `label_map`")
        class_names, category_ids = _label_map(Path(label_map))
        label_of = {cid: k for k, cid in enumerate(category_ids)}
    report = _report()
    records: list[_Record] = []
    files: list[str] = []
    gt_images: list[dict] = []
    gt_anns: list[dict] = []
    body_key = "detection" if kind == "detection" else "grounding"
    for n, obj in _read_jsonl(ann_file):
        where = f"{ann_file} line {n}"
        if not isinstance(obj, dict) or any(k not in obj for k in ("filename", "height", "width")):
            raise UserError(f"{where}: every line needs filename, height and width; fix that line")
        body = obj.get(body_key)
        if not isinstance(body, dict):
            hint = "a detection set needs `detection`" if kind == "detection" else "without a label map lines need `grounding`"
            raise UserError(f"{where}: no `{body_key}` object ({hint}); fix the line or the split's label_map")
        w, h = int(obj["width"]), int(obj["height"])
        if kind == "detection":
            instances = body.get("instances")
            if not isinstance(instances, list) or any(not isinstance(i, dict) or "bbox" not in i or "label" not in i
                                                      for i in instances):
                raise UserError(f"{where}: detection.instances must be a list of {{bbox, label}}; fix that line")
            unknown = [i["label"] for i in instances if not isinstance(i["label"], int) or i["label"] not in label_of]
            if unknown:
                raise UserError(f"{where}: label {unknown[0]!r} is not in the label map {label_map}; add it there")
            boxes, kept = _clean_boxes([i["bbox"] for i in instances], w, h, report, where)
            caption = ""
            spans: list[list[Span]] = [[] for _ in kept]
            labels = np.array([label_of[instances[k]["label"]] for k in kept], dtype=np.int64)
        else:
            regions = body.get("regions")
            if not isinstance(body.get("caption"), str) or not isinstance(regions, list):
                raise UserError(f"{where}: grounding needs a `caption` string and a `regions` list; fix that line")
            caption = body["caption"]
            raw_boxes: list = []
            raw_spans: list[list[Span]] = []
            for region in regions:
                bbox = region.get("bbox") if isinstance(region, dict) else None
                if not bbox:
                    raise UserError(f"{where}: region {str(region)[:60]} has no box; add its bbox or remove it")
                span = _region_spans(region, caption, where)
                for b in bbox if isinstance(bbox[0], list | tuple) else [bbox]:
                    raw_boxes.append(b)
                    raw_spans.append(span)
            if kind == "rec" and not raw_boxes:
                raise UserError(f"{where}: the expression {caption[:60]!r} has no box; add one or remove the line")
            boxes, kept = _clean_boxes(raw_boxes, w, h, report, where)
            if kind == "rec" and not kept:
                raise UserError(f"{where}: every box of the expression {caption[:60]!r} lies outside the "
                                f"{w}x{h} image; fix the boxes or the image size")
            spans = _rec_spans(caption, len(kept)) if kind == "rec" else [raw_spans[k] for k in kept]
            labels = np.full(len(kept), -1, dtype=np.int64)
        files.append(str(obj["filename"]))
        records.append(_Record(0, caption, boxes, spans, labels, 0, n, w, h))
    distinct, positions = _distinct(files)
    for r, pos in zip(records, positions):
        r.image, r.image_id = pos, pos + 1
    paths = _image_paths(images_dir, [[f] for f in distinct], ann_file)
    gt = None
    if category_ids is not None and class_names is not None:  # detection: the evaluation ground truth: the cleaned boxes, one COCO image per line
        for r in records:
            gt_images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": distinct[r.image]})
            for b, lab in zip(r.boxes.tolist(), r.labels.tolist()):
                x1, y1, x2, y2 = b
                gt_anns.append({"id": len(gt_anns) + 1, "image_id": r.image_id, "category_id": category_ids[lab],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        gt = {"images": gt_images, "annotations": gt_anns,
              "categories": [{"id": c, "name": nm} for c, nm in zip(category_ids, class_names)]}
    _finish(report, records)
    extra = (kind, str(label_map)) if label_map else (kind,)
    return GroundingSet(name or ann_file.stem, _identity("odvg", ann_file, *extra), kind, records,
                        _FileImages(paths), report, class_names=class_names, category_ids=category_ids, gt=gt)


# ---------------------------------------------------------------- MDETR-style json (RefCOCO*, Flickr30k Entities)
def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def open_mdetr(images_dir: str | Path, ann_file: str | Path, kind: str = "rec", name: str | None = None) -> GroundingSet:
    """MDETR's json: every `images` entry is one sample (its caption), its annotations (xywh) are its boxes."""
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    if kind not in ("rec", "phrases"):
        raise UserError(f"mdetr kind must be rec or phrases, got {kind!r}")
    d = _read_json(ann_file)
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
        raise UserError(f"{ann_file}: an MDETR file is an object with lists `images` and `annotations`; fix the file")
    per_image: dict[Any, list[dict]] = {}
    for im in d["images"]:
        if not isinstance(im, dict) or any(k not in im for k in ("id", "file_name", "height", "width", "caption")):
            raise UserError(f"{ann_file}: image entry {str(im)[:80]} lacks id, file_name, height, width or caption")
        per_image[im["id"]] = []
    for a in d["annotations"]:
        if not isinstance(a, dict) or "bbox" not in a or a.get("image_id") not in per_image:
            raise UserError(f"{ann_file}: annotation {str(a)[:80]} has no bbox or an image_id not in `images`; fix it")
        per_image[a["image_id"]].append(a)
    report = _report()
    records: list[_Record] = []
    for im in d["images"]:
        where, caption = f"{ann_file} image {im['id']}", str(im["caption"])
        anns = per_image[im["id"]]
        if kind == "rec" and not anns:
            raise UserError(f"{where}: the expression {caption[:60]!r} has no box (no annotation); add it or remove "
                            "the image entry")
        raw_boxes, raw_spans = [], []
        for a in anns:
            if not _is_box(a["bbox"]):
                raise UserError(f"{where}: bbox {str(a['bbox'])[:60]} is not 4 finite numbers [x, y, w, h]; fix it")
            x, y, bw, bh = (float(v) for v in a["bbox"])
            raw_boxes.append([x, y, x + bw, y + bh])
            if kind == "phrases" and "tokens_positive" not in a:
                raise UserError(f"{where}: an annotation has no tokens_positive; phrase grounding needs them")
            # REC grounds the whole expression (its spans may be empty), but spans it has are still checked: one
            # outside the caption means a broken file
            tokens = a.get("tokens_positive")
            raw_spans.append(_spans(tokens, caption, where) if kind == "phrases" or tokens else [])
        w, h = int(im["width"]), int(im["height"])
        boxes, kept = _clean_boxes(raw_boxes, w, h, report, where)
        if kind == "rec" and not kept:
            raise UserError(f"{where}: every box of the expression {caption[:60]!r} lies outside the {w}x{h} image; "
                            "fix the boxes or the image size")
        spans = _rec_spans(caption, len(kept)) if kind == "rec" else [raw_spans[k] for k in kept]
        image_id = _int_or(im.get("original_id", im.get("original_img_id")), _int_or(im["id"], len(records) + 1))
        records.append(_Record(0, caption, boxes, spans, np.full(len(kept), -1, dtype=np.int64), image_id,
                               _int_or(im["id"], len(records) + 1), w, h))
    distinct, positions = _distinct([str(im["file_name"]) for im in d["images"]])
    for r, pos in zip(records, positions):
        r.image = pos
    paths = _image_paths(images_dir, [[f] for f in distinct], ann_file)
    _finish(report, records)
    return GroundingSet(name or ann_file.stem, _identity("mdetr", ann_file, kind), kind, records, _FileImages(paths),
                        report)


# ---------------------------------------------------------------- COCO / LVIS instances (OVD evaluation sets)
def _from_detection(det: DetectionSet, identity: str, novel: Sequence[str] = (),
                    frequencies: list[str] | None = None) -> GroundingSet:
    """A detection.py set as a detection-kind GroundingSet (crowd regions stay in the ground truth only)."""
    unknown = sorted(set(novel) - set(det.class_names))
    if unknown:
        raise UserError(f"{det.name}: novel categories {', '.join(unknown[:5])} are not among its categories; "
                        "fix the task's `novel` list")
    records = []
    for k, r in enumerate(det._records):
        keep = ~r.crowd
        records.append(_Record(k, "", r.boxes[keep], [[] for _ in range(int(keep.sum()))], r.labels[keep],
                               r.image_id, r.image_id, r.width, r.height))
    report = {**_report(), **det.report}
    report["dropped_degenerate"] += report.pop("dropped_zero_area", 0)
    _finish(report, records)
    return GroundingSet(det.name, identity, "detection", records, det._loader, report, class_names=det.class_names,
                        category_ids=det.category_ids, gt=det._gt, novel_names=novel, frequencies=frequencies)


def open_coco_ovd(images_dir: str | Path, ann_file: str | Path, novel: Sequence[str] = (),
                  name: str | None = None) -> GroundingSet:
    """A COCO instances json (detection.py's checks and treatments) as an OVD set; `novel` names its novel classes."""
    det = open_coco(images_dir, ann_file, with_masks=False, name=name)
    return _from_detection(det, _identity("coco", Path(ann_file)), novel)


def _lvis_candidates(im: dict, where: Path) -> list[str]:
    if im.get("file_name"):
        return [str(im["file_name"])]
    url = str(im.get("coco_url") or "")
    parts = [p for p in url.split("?")[0].split("/") if p]
    if not parts:
        raise UserError(f"{where}: image {im.get('id')} has neither file_name nor coco_url; add one of them")
    return ["/".join(parts[-2:]), parts[-1]] if len(parts) > 1 else [parts[-1]]


def open_lvis(images_dir: str | Path, ann_file: str | Path, name: str | None = None) -> GroundingSet:
    """An LVIS json (v1 val, minival): categories with their r/c/f frequency, images found from file_name/coco_url."""
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    d = _read_json(ann_file)
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        raise UserError(f"{ann_file}: an LVIS file is an object with lists `images`, `annotations` and `categories`")
    if not d["categories"]:
        raise UserError(f"{ann_file}: `categories` is empty; list every class as {{id, name, frequency}}")
    bad = [c for c in d["categories"] if not isinstance(c, dict) or c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise UserError(f"{ann_file}: {len(bad)} categories lack a frequency of r, c or f (first: {str(bad[0])[:80]}); "
                        "LVIS AP_r/c/f needs it")
    for im in d["images"]:  # LVISEval reads both lists; a hand-made file may lack them
        if isinstance(im, dict):
            im.setdefault("neg_category_ids", [])
            im.setdefault("not_exhaustive_category_ids", [])
    candidates = [_lvis_candidates(im, ann_file) if isinstance(im, dict) else ["?"] for im in d["images"]]
    paths = _image_paths(images_dir, candidates, ann_file)
    identity = _identity("lvis", ann_file)
    det = _build(d, str(ann_file), _FileImages(paths), name=name or ann_file.stem, identity=identity, with_masks=False)
    freq_of = {c["id"]: c["frequency"] for c in d["categories"]}
    return _from_detection(det, identity, frequencies=[freq_of[c] for c in det.category_ids])


# ---------------------------------------------------------------- Hugging Face REC datasets
def open_hf_rec(path: str, split: str, *, revision: str | None = None, image_key: str = "image",
                expression_key: str = "answer", bbox_key: str = "bbox", bbox_format: str = "xywh",
                load_kwargs: dict | None = None, name: str | None = None) -> GroundingSet:
    """A `datasets` dataset with one target per row: `image_key` (an image), `expression_key` (one expression or a
    list of them: every one is a sample), `bbox_key` (the target box, or a list of boxes, in `bbox_format` xywh/xyxy
    pixels). Defaults fit lmms-lab/RefCOCO, RefCOCOplus and RefCOCOg. `path` is a hub id or a save_to_disk folder."""
    import datasets  # heavy; only this source needs it

    from aimv2_eval.data.detection import _HFImages, load_hf_split

    if bbox_format not in ("xywh", "xyxy"):
        raise UserError(f"bbox_format must be xywh or xyxy, got {bbox_format!r}")
    ds = load_hf_split(path, split, revision, load_kwargs)
    for col in (image_key, expression_key, bbox_key):
        if col not in ds.column_names:
            raise UserError(f"HF dataset {path} split {split!r} has no column {col!r} (columns: "
                            f"{', '.join(ds.column_names)}); set image_key / expression_key / bbox_key")
    raw = ds.select_columns([image_key]).cast_column(image_key, datasets.Image(decode=False))
    sizes = []
    for row in raw:  # sizes from the image headers, without decoding pixels
        src = row[image_key]
        with Image.open(io.BytesIO(src["bytes"]) if src.get("bytes") else src["path"]) as im:
            sizes.append(im.size)
    columns = ds.select_columns([expression_key, bbox_key])[:]
    report = _report()
    records: list[_Record] = []
    for i, (exprs, bbox) in enumerate(zip(columns[expression_key], columns[bbox_key])):
        where = f"HF dataset {path} split {split!r} row {i}"
        exprs = [exprs] if isinstance(exprs, str) else [str(e) for e in exprs or []]
        if not bbox:
            raise UserError(f"{where}: the expression {exprs[:1]} has no box; fix {bbox_key}")
        raw_boxes = [list(b) for b in (bbox if isinstance(bbox[0], list | tuple) else [bbox])]
        if bbox_format == "xywh":
            raw_boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] if _is_box(b) else b for b in raw_boxes]
        w, h = sizes[i]
        boxes, kept = _clean_boxes(raw_boxes, w, h, report, where)
        if not kept:
            raise UserError(f"{where}: every box lies outside the {w}x{h} image; fix {bbox_key} or bbox_format")
        for e in exprs:
            if e.strip():
                records.append(_Record(i, e, boxes, _rec_spans(e, len(kept)), np.full(len(kept), -1, dtype=np.int64),
                                       i + 1, len(records) + 1, w, h))
    _finish(report, records)
    rev = revision or getattr(ds, "_fingerprint", "")
    return GroundingSet(name or split, f"hf:{path}:{split}:{rev}", "rec", records, _HFImages(ds, image_key), report)


# ---------------------------------------------------------------- embedded: procedural scenes
def scene_rec(n: int, seed: int, image_size: int = 128, max_objects: int = 4) -> GroundingSet:
    """REC on the procedural scenes: every expression of `grounding_expressions` is a sample; image ids 1..n."""
    from aimv2_eval.data.sources import SceneImages

    scenes = SceneDataset(n, seed, image_size, max_objects=max_objects, text_prob=0.0)
    records: list[_Record] = []
    for i in range(n):
        scene = scenes[i]
        for ref in grounding_expressions(scene):
            records.append(_Record(i, ref.text, scene.boxes[ref.target][None].copy(), _rec_spans(ref.text, 1),
                                   np.full(1, -1, dtype=np.int64), i + 1, len(records) + 1, scene.width, scene.height))
    report = _report()
    _finish(report, records)
    identity = f"scenes-rec:seed{seed}:n{n}:{image_size}px:max{max_objects}:v{SCENE_EXPRESSIONS_VERSION}"
    return GroundingSet(f"scenes_rec_seed{seed}", identity, "rec", records, SceneImages(scenes), report)


def scene_ovd(n: int, seed: int, *, held_out: Sequence[str] = (), train: bool, image_size: int = 128,
              max_objects: int = 4) -> GroundingSet:
    """OVD on the procedural scenes: classes are "<colour> <shape>"; `held_out` ones never appear when `train`
    (scenes holding one are skipped: the split is the first n scenes of `seed` without them) and must all appear
    otherwise."""
    from aimv2_eval.data.sources import SceneImages

    unknown = [c for c in held_out if c not in SCENE_CATEGORIES]
    if unknown:
        raise UserError(f"scenes_ovd held_out {unknown[0]!r} is not a category; categories are '<colour> <shape>' "
                        f"with colours {', '.join(COLORS)} and shapes {', '.join(SHAPES)}")
    held = set(held_out)
    budget = 50 * n  # index range searched for train scenes free of held-out classes
    scenes = SceneDataset(budget if train else n, seed, image_size, max_objects=max_objects, text_prob=0.0)
    report = _report()
    records: list[_Record] = []
    images: list[dict] = []
    anns: list[dict] = []
    index = 0
    while len(records) < n:
        if index >= len(scenes):
            raise UserError(f"scenes_ovd: held_out {sorted(held)} leaves fewer than {n} train scenes among the first "
                            f"{budget} of seed {seed}; hold out fewer categories or lower n")
        scene = scenes[index]
        names = [f"{o.color} {o.shape}" for o in scene.objects]
        index += 1
        if train and held.intersection(names):
            report["skipped_held_out"] += 1
            continue
        labels = np.array([SCENE_CATEGORIES.index(c) for c in names], dtype=np.int64)
        image_id = scene.index + 1
        records.append(_Record(scene.index, "", scene.boxes.copy(), [[] for _ in names], labels, image_id, image_id,
                               scene.width, scene.height))
        images.append({"id": image_id, "width": scene.width, "height": scene.height, "file_name": f"{image_id:012d}.png"})
        for box, label, mask in zip(scene.boxes.tolist(), labels.tolist(), scene.masks):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum())})
    present = {SCENE_CATEGORIES[int(lab)] for r in records for lab in r.labels}
    absent = sorted(held - present)
    if not train and absent:
        raise UserError(f"scenes_ovd: the val split (seed {seed}, n {n}) holds no {absent[0]!r}, so novel AP is "
                        "undefined; raise n or change the seed")
    _finish(report, records)
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": c} for k, c in enumerate(SCENE_CATEGORIES)]}
    split = "train" if train else "val"
    identity = (f"scenes-ovd:{split}:seed{seed}:n{n}:{image_size}px:max{max_objects}:"
                f"held_out={','.join(sorted(held))}")
    return GroundingSet(f"scenes_ovd_{split}_seed{seed}", identity, "detection", records, SceneImages(scenes), report,
                        class_names=list(SCENE_CATEGORIES), category_ids=list(range(1, len(SCENE_CATEGORIES) + 1)),
                        gt=gt, novel_names=list(held_out))


# ---------------------------------------------------------------- task YAML `data:` blocks
def _split_entry(block: dict, split: str, source: str) -> Any:
    if not isinstance(block.get(split), dict):
        known = ", ".join(k for k in block if isinstance(block[k], dict)) or "none"
        raise UserError(f"data.{source} has no split {split!r} (splits: {known}); add it to the task's data block")
    return block[split]


def _paths(entry: dict, base: Path, source: str, split: str, keys: tuple[str, ...]) -> list[Path | None]:
    out: list[Path | None] = []
    for key in keys:
        value = entry.get(key)
        out.append(None if value is None else Path(str(value).replace("{root}", str(base))).expanduser())
    if out[0] is None or out[1] is None:
        raise UserError(f"data.{source}.{split} needs `images` and `annotations`; add them to the task's data block")
    if not out[1].is_file():  # type: ignore[union-attr]
        raise UserError(f"data missing: {source} {split} annotations {out[1]} not found (put them under {base}, or set "
                        f"--data-root / ${DATA_ROOT_ENV})")
    return out


def open_grounding_split(data_cfg: dict, split: str, root: str | Path | None = None) -> GroundingSet:
    """The `split` a task's `data:` block selects (sources and options: the module docstring)."""
    source = data_cfg.get("source")
    options = (data_cfg.get(source) or {}) if isinstance(source, str) else {}
    if source in ("odvg", "mdetr", "coco", "lvis"):
        entry = _split_entry(options, split, source)
        images, ann, label_map = _paths(entry, data_root(root), source, split, ("images", "annotations", "label_map"))
        assert images is not None and ann is not None
        if source == "odvg":
            return open_odvg(images, ann, label_map, kind=options.get("kind"), name=split)
        if source == "mdetr":
            return open_mdetr(images, ann, kind=options.get("kind", "rec"), name=split)
        if source == "coco":
            return open_coco_ovd(images, ann, novel=options.get("novel", ()), name=split)
        return open_lvis(images, ann, name=split)
    if source == "hf":
        if "id" not in options:
            raise UserError("data.hf needs `id` (a hub dataset id or a save_to_disk folder)")
        return open_hf_rec(options["id"], options.get("splits", {}).get(split, split), revision=options.get("revision"),
                           image_key=options.get("image_key", "image"),
                           expression_key=options.get("expression_key", "answer"),
                           bbox_key=options.get("bbox_key", "bbox"), bbox_format=options.get("bbox_format", "xywh"),
                           load_kwargs=options.get("load_kwargs"), name=split)
    if source in ("scenes_rec", "scenes_ovd"):
        entry = _split_entry(options, split, source)
        size, max_objects = int(options.get("image_size", 128)), int(options.get("max_objects", 4))
        if source == "scenes_rec":
            return scene_rec(int(entry["n"]), int(entry["seed"]), size, max_objects)
        return scene_ovd(int(entry["n"]), int(entry["seed"]), held_out=list(options.get("held_out", ())),
                         train=split == "train", image_size=size, max_objects=max_objects)
    raise UserError(f"unknown grounding data.source {source!r}; known: {', '.join(GROUNDING_SOURCES)}")
