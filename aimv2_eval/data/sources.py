"""Labelled image sources for classification tasks: HF datasets, ImageFolder, and data that ships offline.

A task's `data` block names where its images come from (tasks/*.yaml):
  benchmarks:  `imagefolder: {dir, splits}` under the data root (--data-root / $AIMV2_EVAL_DATA), else
               `hf: {id, config, revision, image_key, label_key, splits, filter, load_kwargs}` through
               `datasets.load_dataset` (load_kwargs such as data_dir reach it unchanged; `filter: {column, equals,
               splits}` keeps the rows whose column equals the value, in the listed task splits, default all);
  embedded:    `source:` sklearn_digits | foolbox | fashion_mnist_idx | scenes, with `holdout:` when the source has
               no official test split.
Every split is a `LabelledImages`: labels known up front (stratified hold-outs need them), images decoded lazily and
always returned as RGB. Missing data raises `UserError` naming what is missing and how to provide it. A split whose
size differs from `expected_sizes: {train, test}` (Table B1 for the paper's benchmarks) gets one warning line.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aimv2_eval.data.images import DECODE_ERRORS, ImageError, open_image, to_rgb
from aimv2_eval.data.scenes import SceneDataset
from aimv2_eval.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DATA_ROOT_ENV = "AIMV2_EVAL_DATA"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def data_root(explicit: str | Path | None = None) -> Path:
    """Where local benchmark copies live: --data-root, else $AIMV2_EVAL_DATA, else ~/data."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(DATA_ROOT_ENV, "~/data")).expanduser()


# ---------------------------------------------------------------- image loaders (picklable, for DataLoader workers)
class _ArrayImages:
    """uint8 arrays (N, H, W) or (N, H, W, 3)."""

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])


class _FileImages:
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [str(p) for p in paths]

    def __call__(self, i: int) -> Image.Image:
        return open_image(self.paths[i])


class _HFImages:
    def __init__(self, ds: Any, image_key: str) -> None:
        self.ds, self.image_key = ds, image_key

    def __call__(self, i: int) -> Image.Image:
        try:  # `datasets` decodes the image itself, with PIL: its errors name no file
            img = self.ds[int(i)][self.image_key]
        except tuple(e for e in DECODE_ERRORS if e is not IndexError) as exc:  # IndexError: a bad index, a bug
            name = getattr(self.ds.info, "dataset_name", None) or "the HF dataset"
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ImageError(f"cannot read image {i} of {name} ({type(exc).__name__}: {reason}); "
                             "fix or filter out that row") from None
        if not isinstance(img, Image.Image):
            raise UserError(f"column {self.image_key!r} of {self.ds.info.dataset_name} is not an image; fix data.hf.image_key")
        return img


class SceneImages:
    """Scene index -> image, rendered on demand (deterministic in the dataset's seed and the index)."""

    def __init__(self, scenes: SceneDataset) -> None:
        self.scenes = scenes

    def __call__(self, i: int) -> Image.Image:
        return self.scenes[int(i)].image


@dataclass
class LabelledImages:
    """One split of a labelled image dataset."""

    identity: str  # stable description: part of feature-cache keys and of records
    labels: np.ndarray  # (n,) int64
    num_classes: int
    loader: Callable[[int], Image.Image]
    class_names: list[str] | None = None
    indices: np.ndarray | None = field(default=None, repr=False)  # view into the loader's samples

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise UserError(
                f"{self.identity}: labels span {self.labels.min()}..{self.labels.max()} but the task declares "
                f"{self.num_classes} classes; fix data.num_classes or the label column"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        j = int(self.indices[i]) if self.indices is not None else int(i)
        return to_rgb(self.loader(j), f"{j} of {self.identity}")

    def subset(self, positions: Sequence[int] | np.ndarray) -> LabelledImages:
        """The samples at `positions` (of this split); the identity records which ones."""
        pos = np.asarray(positions, dtype=np.int64)
        base = self.indices[pos] if self.indices is not None else pos
        digest = hashlib.sha1(base.tobytes()).hexdigest()[:12]
        root = self.identity.split("#")[0]
        return LabelledImages(f"{root}#{len(base)}:{digest}", self.labels[pos], self.num_classes, self.loader,
                              self.class_names, base)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out), holding out `fraction` of every class that has two or more samples.

    Deterministic in (labels, fraction, seed); both outputs sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"a hold-out fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2 or fraction == 0:
            continue
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held.append(rng.permutation(idx)[:k])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), out)
    return keep, out


def limit(split: LabelledImages, n: int | None, seed: int = 0) -> LabelledImages:
    """At most `n` samples, drawn by a fixed permutation so that every class can appear."""
    if n is None or n >= len(split):
        return split
    pos = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return split.subset(pos)


# ---------------------------------------------------------------- sources
def _benchmark_help(cfg: dict, split: str, root: Path) -> str:
    parts = []
    if "imagefolder" in cfg:
        folder = cfg["imagefolder"]
        sub = folder.get("splits", {}).get(split, split)
        parts.append(f"put the images at {root / folder['dir'] / sub}/<class>/<image> (set --data-root or ${DATA_ROOT_ENV})")
    if "hf" in cfg:
        parts.append(f"make the HF dataset {cfg['hf']['id']} loadable (network and `hf auth login` if it is gated, or a warm HF cache)")
    return " or ".join(parts)


def open_imagefolder(cfg: dict, split: str, root: Path, classes: list[str] | None = None,
                     num_classes: int | None = None) -> LabelledImages:
    folder = root / cfg["dir"] / cfg.get("splits", {}).get(split, split)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    names = classes or [p.name for p in class_dirs]
    if num_classes is not None and classes is None and class_dirs and len(names) != num_classes:
        # more folders would index past the head; fewer would misstate chance and the head's size
        raise UserError(f"{folder} has {len(names)} class folders but the task declares data.num_classes "
                        f"{num_classes}; fix num_classes or the folders")
    index = {n: i for i, n in enumerate(names)}
    paths, labels = [], []
    for d in class_dirs:
        if d.name not in index:
            raise UserError(f"{folder}: class folder {d.name!r} is not among the training classes; remove it or rename it")
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:  # a class with no images would silently drop out of the accuracy
            raise UserError(f"{d}: class folder has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or "
                            "remove the folder")
        paths += files
        labels += [index[d.name]] * len(files)
    if not paths:
        raise UserError(f"{folder} has no images in class folders (expected {folder}/<class>/<image>)")
    ident = f"imagefolder:{folder.resolve()}:{len(paths)}:{files_digest(paths, folder)}"
    return LabelledImages(ident, np.array(labels), len(names), _FileImages(paths), names)


def files_digest(paths: list[Path], base: Path) -> str:
    """A short digest of every file's relative name, size and modification time: the identity (and so the
    feature-cache key) changes whenever an image is replaced, even when the count stays the same."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def open_hf(cfg: dict, split: str, num_classes: int, help_text: str) -> LabelledImages:
    import datasets  # heavy; only benchmarks need it

    hf_split = cfg.get("splits", {}).get(split, split)
    try:
        ds = datasets.load_dataset(cfg["id"], cfg.get("config"), split=hf_split, revision=cfg.get("revision"),
                                   **cfg.get("load_kwargs", {}))
    except Exception as exc:  # offline, gated, unknown id or split: all mean "the data is not here"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"data missing: HF dataset {cfg['id']} split {hf_split!r} did not load ({reason}); {help_text}") from None
    rows = cfg.get("filter")  # e.g. one DomainNet domain out of six, or one hospital of a validation split
    if rows and split in rows.get("splits", (split,)):
        col, value = rows["column"], rows["equals"]
        ds = ds.filter(lambda v: v == value, input_columns=[col])
    label_key = cfg.get("label_key", "label")
    labels = np.asarray(ds[label_key], dtype=np.int64)
    feature = ds.features.get(label_key)
    names = list(feature.names) if hasattr(feature, "names") else None
    ident = f"hf:{cfg['id']}:{cfg.get('config') or ''}:{hf_split}:{cfg.get('revision') or ds._fingerprint}"
    return LabelledImages(ident, labels, num_classes, _HFImages(ds.select_columns([cfg.get("image_key", "image")]),
                          cfg.get("image_key", "image")), names)


def open_sklearn_digits(cfg: dict) -> LabelledImages:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, values 0..16 -> 0..255
    return LabelledImages("sklearn:digits", d.target, 10, _ArrayImages(images), [str(i) for i in range(10)])


def foolbox_data_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")  # importing foolbox itself needs eagerpy etc.; we only want its files
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the foolbox sample images are not installed; run `pip install --no-deps foolbox==3.3.4`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def open_foolbox(cfg: dict, num_classes: int) -> LabelledImages:
    """Foolbox's real sample images; the label is the last number of the file name (imagenet_00_243.jpg -> 243)."""
    name = cfg.get("dataset", "imagenet")
    folder = foolbox_data_dir()
    paths = sorted(p for p in folder.glob(f"{name}_*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"no {name}_* images in {folder}; reinstall with `pip install --no-deps foolbox==3.3.4`")
    labels = [int(re.findall(r"\d+", p.stem)[-1]) for p in paths]
    return LabelledImages(f"foolbox:{name}:{len(paths)}", np.array(labels), num_classes, _FileImages(paths))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; reinstall dataset-fashion-mnist")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({arr.size} bytes for shape {shape}); reinstall dataset-fashion-mnist")
    return arr.reshape(shape)


def open_fashion_mnist(cfg: dict, split: str) -> LabelledImages:
    folder = Path(cfg.get("dir", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise UserError(f"data missing: {p} not found; install it with `apt-get install dataset-fashion-mnist` "
                            "or set data.fashion_mnist_idx.dir to a folder with the IDX .gz files")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if len(images) != len(labels):
        raise UserError(f"{folder}: {len(images)} images but {len(labels)} labels; reinstall dataset-fashion-mnist")
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return LabelledImages(f"fashion-mnist:{folder.resolve()}:{prefix}", labels, 10, _ArrayImages(images), names)


def open_scenes(cfg: dict, split: str) -> LabelledImages:
    """The procedural scene dataset (aimv2_eval.data.scenes); label = shape of the largest object."""
    seeds = cfg.get("seeds", {"train": 0, "test": 1})
    sizes = cfg.get("sizes", {"train": 512, "test": 256})
    image_size = int(cfg.get("image_size", 112))
    scenes = SceneDataset(n=int(sizes[split]), seed=int(seeds[split]), image_size=image_size)
    labels = np.array([scenes[i].label for i in range(len(scenes))])  # renders each scene once (masks decide)
    ident = f"scenes:seed{seeds[split]}:n{sizes[split]}:{image_size}px"
    return LabelledImages(ident, labels, len(scenes.label_names), SceneImages(scenes), list(scenes.label_names))


def _embedded_pool(cfg: dict, split: str) -> LabelledImages:
    """A source that has one pool of images (or its own splits) before any hold-out."""
    source = cfg["source"]
    options = cfg.get(source, {}) or {}
    n = int(cfg["num_classes"])
    if source == "sklearn_digits":
        return open_sklearn_digits(options)
    if source == "foolbox":
        return open_foolbox(options, n)
    if source == "fashion_mnist_idx":
        return open_fashion_mnist(options, split)
    if source == "scenes":
        return open_scenes(options, split)
    raise UserError(f"unknown data.source {source!r}; known: {', '.join(EMBEDDED_SOURCES)}")


EMBEDDED_SOURCES = ("sklearn_digits", "foolbox", "fashion_mnist_idx", "scenes")


def open_split(cfg: dict, split: str, root: str | Path | None = None, classes: list[str] | None = None,
               task: str | None = None) -> LabelledImages:
    """The `split` ("train" or "test") of a task's data block; `task` names it in the size warning.

    `holdout: {test_fraction, seed}` makes train/test from one pool (stratified); `holdout: none` with a one-pool
    source means train and test are the same images (used only where the pool is too small to split, and said so
    in the task YAML).
    """
    images = _open_split(cfg, split, root, classes)
    warn_unexpected_size(images, split, cfg.get("expected_sizes"), task or _data_name(cfg))
    return images


def warn_unexpected_size(images: LabelledImages, split: str, expected: dict | None, task: str) -> None:
    """One warning line when a split's size differs from the task's `data.expected_sizes`. Not an error: local copies
    differ legitimately (a partial download, a later release), but a test split of the wrong size is most often the
    wrong split (e.g. WILDS `test` where the paper used `val`). Checked on the whole split, before `limit` and the
    validation hold-out."""
    n = (expected or {}).get(split)
    if n is not None and len(images) != int(n):
        print(f"warning: task {task}: the {split} split has {len(images)} images, expected {int(n)} "
              "(data.expected_sizes, from Table B1 for the paper's benchmarks); check that it is the intended split "
              "and release", file=sys.stderr)


def _data_name(cfg: dict) -> str:
    """What to call a data block in messages when the caller gives no task name."""
    return str(cfg.get("source") or (cfg.get("imagefolder") or {}).get("dir") or (cfg.get("hf") or {}).get("id") or "?")


def _open_split(cfg: dict, split: str, root: str | Path | None, classes: list[str] | None) -> LabelledImages:
    num_classes = int(cfg["num_classes"])
    if "source" in cfg:
        holdout = cfg.get("holdout")
        pool = _embedded_pool(cfg, split)
        if not holdout or holdout == "none":
            return pool
        keep, held = stratified_holdout(pool.labels, float(holdout["test_fraction"]), int(holdout.get("seed", 0)))
        return pool.subset(held if split == "test" else keep)
    root = data_root(root)
    help_text = _benchmark_help(cfg, split, root)
    folder_cfg = cfg.get("imagefolder")
    if folder_cfg:
        folder = root / folder_cfg["dir"] / folder_cfg.get("splits", {}).get(split, split)
        if folder.is_dir():
            return open_imagefolder(folder_cfg, split, root, classes, num_classes)
    if "hf" in cfg:
        return open_hf(cfg["hf"], split, num_classes, help_text)
    raise UserError(f"data missing: {help_text}")
