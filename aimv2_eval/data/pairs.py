"""Image-caption sources for pretraining, all map-style (`len`, `[i] -> Pair`), so a run can resume at any position.

- `folder`: a directory of images, each with a caption file of the same stem (`cat.jpg` + `cat.txt`);
- `webdataset`: tar shards in webdataset layout (`key.jpg` + `key.txt`, brace patterns like `shard-{000..009}.tar`);
- `hf`: a Hugging Face dataset (hub id, local dataset script/folder, or a `save_to_disk` directory) with an image
  and a text column;
- `scenes`: the embedded procedural scenes (`aimv2_eval.data.scenes`);
- `digits`: scikit-learn's 1,797 handwritten digits, coloured and placed at random, with templated captions.
Several sources mix with sampling probabilities, as the paper's data mixture (Table 2).

`caption` names the caption field(s) a folder, webdataset or hf source reads: a file / member suffix (`txt`,
`synthetic.txt`: `cat.synthetic.txt`) or a dataset column, or a list of them read in order (the first a sample has).
The same images can so enter a mixture twice, as Table 2's alt-text and synthetic-caption sources, each at its own
rate. A source skips the samples without any of its fields; a field no sample has is an error.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps

from aimv2_eval.data.images import open_image, to_rgb
from aimv2_eval.data.scenes import BACKGROUND_COLORS, COLORS, DIGIT_WORDS, Scene, SceneDataset, swap_left_right
from aimv2_eval.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FIELDS = ("txt", "text", "caption")  # read in this order when a source names none


def caption_fields(caption: str | Sequence[str]) -> tuple[str, ...]:
    """`caption` as a tuple of field names (one name, or a list in reading order)."""
    fields = (caption,) if isinstance(caption, str) else tuple(caption) if isinstance(caption, list | tuple) else ()
    if not fields or not all(isinstance(f, str) and f.strip(".") for f in fields):
        raise UserError(f"caption must name a caption field (such as txt, or a column) or a list of them, got "
                        f"{caption!r}")
    return tuple(f.strip(".") for f in fields)


def _check_fields_seen(fields: tuple[str, ...], seen: set[str], where: str) -> None:
    """Every named caption field must occur somewhere (`seen`: the fields the data has): a typo would otherwise
    empty a source, or a fallback field, without a word."""
    missing = [f for f in fields if f not in seen]
    if missing:
        raise UserError(f"{where} has no caption field {missing[0]!r} (it has {', '.join(sorted(seen)) or 'none'}); "
                        "fix caption in the data source")


@dataclass
class Pair:
    image: Image.Image
    caption: str
    key: str = ""
    scene: Scene | None = None
    flippable: bool = True  # False where a mirror would make the caption false (handwritten digits)

    def flipped(self) -> Pair:
        """Horizontal flip that keeps the caption true: scenes re-render mirrored (text stays readable), other
        images are mirrored with their left/right words swapped."""
        if self.scene is not None:
            s = self.scene.flip()
            return Pair(s.image, s.caption, self.key, s, True)
        return Pair(ImageOps.mirror(self.image), swap_left_right(self.caption), self.key, None, True)


class PairSource(Protocol):
    name: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Pair: ...


def _check_index(index: int, n: int) -> None:
    if not 0 <= index < n:
        raise IndexError(f"pair {index} out of range 0..{n - 1}")


# ---------------------------------------------------------------- local folder
class FolderPairs:
    """Images with caption files of the same stem: `cat.jpg` + `cat.<field>` for the first `caption` field found."""

    def __init__(self, root: str | Path, caption: str | Sequence[str] = CAPTION_FIELDS) -> None:
        self.root = Path(root).expanduser()
        fields = caption_fields(caption)
        self.name = f"folder:{self.root}" + (f"[{'|'.join(fields)}]" if caption != CAPTION_FIELDS else "")
        if not self.root.is_dir():
            raise UserError(f"image-caption folder not found: {self.root}")
        files = {p for p in self.root.rglob("*") if p.is_file()}
        self.items: list[tuple[Path, Path]] = []
        for img in sorted(p for p in files if p.suffix.lower() in IMAGE_EXTS):
            txt = next((t for f in fields if (t := img.with_name(f"{img.stem}.{f}")) in files), None)
            if txt is not None:
                self.items.append((img, txt))
        if caption != CAPTION_FIELDS:  # the fields beside images: what follows the first dot of other files
            _check_fields_seen(fields, {p.name.partition(".")[2] for p in files if p.suffix.lower() not in IMAGE_EXTS},
                               self.name)
        if not self.items:
            raise UserError(f"no image-caption pairs in {self.root}: expected images ({', '.join(IMAGE_EXTS)}) each "
                            f"with a caption file of the same name (.{' or .'.join(fields)})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair:
        _check_index(index, len(self))
        img, txt = self.items[index]
        return Pair(open_image(img, str(img)), txt.read_text(errors="replace").strip(), str(img.relative_to(self.root)))


# ---------------------------------------------------------------- webdataset shards
def expand_shards(pattern: str | Sequence[str]) -> list[Path]:
    """Shard paths from a list, a brace pattern (`a-{000..009}.tar`, as webdataset) or a glob."""
    import braceexpand

    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[Path] = []
    for pat in patterns:
        for item in braceexpand.braceexpand(str(pat)):
            p = Path(item).expanduser()
            if any(ch in item for ch in "*?["):
                out.extend(sorted(p.parent.glob(p.name)))
            else:
                out.append(p)
    missing = [str(p) for p in out if not p.is_file()]
    if not out or missing:
        raise UserError(f"webdataset shards not found: {missing[:3] or pattern}")
    return out


class TarPairs:
    """Random access into webdataset tars: members are grouped by key (the name up to the first dot of its basename)
    and read by offset, so no shard is unpacked."""

    def __init__(self, shards: str | Sequence[str], image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
                 caption: str | Sequence[str] = CAPTION_FIELDS) -> None:
        self.shards = expand_shards(shards)
        fields = caption_fields(caption)
        self.name = f"webdataset:{len(self.shards)} shards" + (
            f"[{'|'.join(fields)}]" if caption != CAPTION_FIELDS else "")
        self.items: list[tuple[int, str, tarfile.TarInfo, tarfile.TarInfo]] = []
        seen: set[str] = set()
        for si, shard in enumerate(self.shards):
            try:
                with tarfile.open(shard) as tar:
                    members: dict[str, dict[str, tarfile.TarInfo]] = {}
                    for m in tar.getmembers():
                        if not m.isfile():
                            continue
                        d, _, base = m.name.rpartition("/")
                        key, _, ext = base.partition(".")
                        members.setdefault(f"{d}/{key}", {})[ext.lower()] = m
            except (tarfile.TarError, OSError) as exc:
                raise UserError(f"cannot read shard {shard} ({exc}); re-create or remove it") from None
            for key, exts in members.items():
                img = next((exts[k] for k in image_keys if k in exts), None)
                txt = next((exts[k] for k in fields if k in exts), None)
                seen.update(exts)
                if img is not None and txt is not None:
                    self.items.append((si, key.lstrip("/"), img, txt))
        if caption != CAPTION_FIELDS:
            _check_fields_seen(fields, seen, self.name)
        if not self.items:
            raise UserError(f"no image-caption samples in {self.name}: expected members key.jpg/png + "
                            f"key.{' or key.'.join(fields)}")
        self._open: dict[int, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, shard: int, member: tarfile.TarInfo) -> bytes:
        if shard not in self._open:
            self._open[shard] = tarfile.open(self.shards[shard])
        f = self._open[shard].extractfile(member)
        assert f is not None
        return f.read()

    def __getitem__(self, index: int) -> Pair:
        _check_index(index, len(self))
        si, key, img, txt = self.items[index]
        where = f"{self.shards[si]}:{img.name}"
        caption = self._read(si, txt).decode("utf-8", errors="replace").strip()
        return Pair(open_image(self._read(si, img), where), caption, key)

    def __getstate__(self) -> dict:  # open tar handles do not travel to worker processes
        return {**self.__dict__, "_open": {}}


# ---------------------------------------------------------------- Hugging Face datasets
class HFPairs:
    """A dataset's image column with its caption from `text_column`, or from the first of a list of columns that is
    not null in the row (a recipe's `caption` sets it)."""

    def __init__(self, path: str, split: str = "train", image_column: str = "image",
                 text_column: str | Sequence[str] = "text", **load_kwargs: Any) -> None:
        import datasets

        self.name = f"hf:{path}[{split}]"
        try:
            if Path(path).expanduser().is_dir() and (Path(path).expanduser() / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(str(Path(path).expanduser()))[split]
            elif Path(path).expanduser().is_dir() and (Path(path).expanduser() / "dataset_info.json").is_file():
                ds = datasets.load_from_disk(str(Path(path).expanduser()))
            else:
                ds = datasets.load_dataset(path, split=split, **load_kwargs)
        except KeyError:
            raise UserError(f"dataset {path!r} has no split {split!r}") from None
        except Exception as exc:
            raise UserError(f"cannot load dataset {path!r} split {split!r} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); check the name, or pass a local directory") from None
        cols = list(ds.column_names)
        text_columns = caption_fields(text_column)
        for col in (image_column, *text_columns):
            if col not in cols:
                raise UserError(f"dataset {path!r} has no column {col!r}; its columns are {cols}: set "
                                "image_column= / caption=")
        self.ds, self.image_column, self.text_columns = ds, image_column, text_columns

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Pair:
        _check_index(index, len(self))
        row = self.ds[index]
        value = row[self.image_column]
        where = f"{self.name} row {index}"
        if isinstance(value, Image.Image | np.ndarray):
            img = to_rgb(value, where)
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            img = open_image(value.get("bytes") or value["path"], where)
        elif isinstance(value, bytes | str | Path):
            img = open_image(value, where)
        else:
            raise UserError(f"{where}: column {self.image_column!r} holds {type(value).__name__}, not an image")
        return Pair(img, self._caption(row, where), str(index))

    def _caption(self, row: dict, where: str) -> str:
        for col in self.text_columns:
            text = row[col]
            if isinstance(text, list):  # several captions per image: take the first
                text = text[0] if text else None
            if text is not None:
                return str(text).strip()
        raise UserError(f"{where} has no caption in {' or '.join(self.text_columns)} (null); fill it, or filter such "
                        "rows out of the dataset")


# ---------------------------------------------------------------- embedded data
class ScenePairs:
    """Scenes with their captions: every scene of `scenes`, or only those at `indices` (in that order)."""

    def __init__(self, scenes: SceneDataset, indices: Sequence[int] | None = None) -> None:
        self.scenes = scenes
        self.indices = [int(i) for i in indices] if indices is not None else None
        self.name = f"scenes:{scenes.n}@{scenes.seed}" + (f"[{len(self.indices)} picked]" if self.indices is not None
                                                          else "")

    @classmethod
    def generate(cls, n: int = 10_000, seed: int = 0, image_size: int = 224, aspect_ratios: Sequence[float] = (1.0,),
                 **scene_kwargs: Any) -> ScenePairs:
        """All `n` scenes of a new `SceneDataset` (the `scenes` kind of a data config)."""
        return cls(SceneDataset(n, seed, image_size, tuple(aspect_ratios), **scene_kwargs))

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.scenes)

    def _scene_index(self, index: int) -> int:
        _check_index(index, len(self))
        return self.indices[index] if self.indices is not None else index

    def __getitem__(self, index: int) -> Pair:
        i = self._scene_index(index)
        s = self.scenes[i]
        return Pair(s.image, s.caption, f"scene-{i}", s)

    def captions(self) -> list[str]:
        """Every caption, without rendering a pixel (a scene draws itself only when its image is read)."""
        return [self.scenes[self._scene_index(k)].caption for k in range(len(self))]


DIGIT_TEMPLATES = (
    "a handwritten digit {d}.",
    "the number {d} ({w}), written by hand.",
    "a {fg} handwritten {d} on a {bg} background.",
    "a blurry picture of the digit {d}.",
    "a scanned digit: {d}.",
)


class DigitPairs:
    """scikit-learn's handwritten digits (8x8), upscaled to `image_size`; captions from templates that name the digit
    (and sometimes the colours). A `plain` fraction looks as the probes see the dataset (white on black, full frame);
    the rest is drawn into a random square of the canvas in random colours."""

    label_names = tuple(str(d) for d in range(10))

    def __init__(self, image_size: int = 224, seed: int = 0, plain: float = 0.5) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = digits.images.astype(np.float32) / 16.0
        self.targets = digits.target.astype(int)
        self.image_size, self.seed, self.plain = image_size, seed, plain
        self.name = f"digits:{len(self.targets)}"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Pair:
        _check_index(index, len(self))
        rng = np.random.default_rng([self.seed, index, 5])
        fg_name, bg_name = rng.choice(list(COLORS)), rng.choice(list(BACKGROUND_COLORS))
        fg, bg = np.array(COLORS[fg_name], np.float32), np.array(BACKGROUND_COLORS[bg_name], np.float32)
        if np.linalg.norm(fg - bg) < 110:
            fg_name, fg = ("black", np.array(COLORS["black"], np.float32)) if bg.mean() > 128 else (
                "white", np.array(COLORS["white"], np.float32))
        s = self.image_size
        side = int(rng.uniform(0.6, 1.0) * s)
        if rng.random() < self.plain:
            fg_name, fg, bg_name, bg, side = "white", np.full(3, 255.0, np.float32), "black", np.zeros(3, np.float32), s
        glyph = Image.fromarray((self.images[index] * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        alpha = np.zeros((s, s), np.float32)
        x, y = (int(rng.integers(0, s - side + 1)) for _ in range(2))
        alpha[y : y + side, x : x + side] = np.asarray(glyph, np.float32) / 255.0
        canvas = bg[None, None] * (1 - alpha[..., None]) + fg[None, None] * alpha[..., None]
        d = int(self.targets[index])
        template = DIGIT_TEMPLATES[int(rng.integers(len(DIGIT_TEMPLATES)))]
        caption = template.format(d=d, w=DIGIT_WORDS[d], fg=fg_name, bg=bg_name)
        return Pair(Image.fromarray(canvas.clip(0, 255).astype(np.uint8)), caption, f"digit-{index}", None, False)


class Mixture:
    """Sample i comes from source k with probability weights[k] (as Table 2's sampling probabilities), at a
    seeded random index of that source; deterministic in (seed, i)."""

    def __init__(self, sources: Sequence[PairSource], weights: Sequence[float], seed: int = 0,
                 size: int | None = None) -> None:
        if len(sources) != len(weights) or not sources:
            raise UserError("a data mixture needs one weight per source")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise UserError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
        self.sources, self.probs, self.seed = list(sources), w / w.sum(), seed
        self.size = size or sum(len(s) for s in sources)
        self.name = "mix(" + ", ".join(f"{s.name}:{p:.2f}" for s, p in zip(self.sources, self.probs)) + ")"

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Pair:
        _check_index(index, len(self))
        rng = np.random.default_rng([self.seed, index, 17])
        src = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
        return src[int(rng.integers(len(src)))]


KINDS = ("folder", "webdataset", "hf", "scenes", "digits")
CAPTIONED_KINDS = ("folder", "webdataset", "hf")  # the kinds whose caption field(s) a source may name


def build_source(spec: dict | list, seed: int = 0) -> PairSource:
    """A source from its config: {kind: folder, path: ...}, {kind: webdataset, shards: ...},
    {kind: hf, path: ..., split, image_column}, {kind: scenes, n, seed, image_size}, {kind: digits, image_size};
    folder, webdataset and hf take `caption` (a field or a list, see the module's docstring); a list of sources
    (each with `weight`) is a mixture."""
    if isinstance(spec, list):
        if len(spec) == 1:
            return build_source({k: v for k, v in spec[0].items() if k != "weight"}, seed)
        return Mixture([build_source({k: v for k, v in s.items() if k != "weight"}, seed) for s in spec],
                       [float(s.get("weight", 1.0)) for s in spec], seed)
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if "caption" in spec and kind in KINDS and kind not in CAPTIONED_KINDS:
        raise UserError(f"a {kind} source has one caption per image: remove its caption field (only "
                        f"{', '.join(CAPTIONED_KINDS)} sources name theirs)")
    if kind == "hf" and "caption" in spec:  # the uniform name for HF's text_column
        if "text_column" in spec:
            raise UserError("an hf data source takes caption or text_column (the same thing), not both")
        spec["text_column"] = spec.pop("caption")
    try:
        if kind == "folder":
            return FolderPairs(spec.pop("path"), **spec)
        if kind == "webdataset":
            return TarPairs(spec.pop("shards"), **spec)
        if kind == "hf":
            return HFPairs(spec.pop("path"), **spec)
        if kind == "scenes":
            return ScenePairs.generate(**spec)
        if kind == "digits":
            return DigitPairs(**spec)
    except (KeyError, TypeError) as exc:
        raise UserError(f"bad {kind} data source {spec}: {exc}") from None
    raise UserError(f"unknown data source kind {kind!r}; choose one of {', '.join(KINDS)}")
