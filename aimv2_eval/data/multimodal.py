"""Data for LLaVA-style instruction tuning: benchmark splits of image + question + answers, and training conversations.

A benchmark split is an `MMSet`: `len`, `[i] -> MMSample` (image decoded on that access), `meta(i)` (the same sample
without decoding its image: answer priors, MME pairs), `.name`, `.identity` (a dict that changes when the data does).
`open_mm_split(data_cfg, split, root)` opens one from a task's `data:` block:

  source: hf      `hf: {id, config, split, revision, load_kwargs, filter: {column, equals}, images: {...}}` and
                  `fields:` (below). `id` is a hub id (`datasets.load_dataset`) or a `save_to_disk` folder
                  (`load_from_disk`; a sub-folder named `config` is used when there is one). An optional `local:`
                  block (as below) is preferred when its annotation file exists.
  source: local   `local: {annotations: "{root}/vqav2/val.jsonl", images: "{root}/vqav2/images"}`: JSON lines with
                  our field names (`image` a path under `images`; `answers` required; the others optional).
  source: scenes  `scenes: {kind: vqa | caption, image_size, max_objects, train: {n, seed}, eval: {n, seed}}`: the
                  procedural scenes (aimv2_eval.data.scenes), the only source with a "train" split.
"{root}" in any path is the data root (--data-root, else $AIMV2_EVAL_DATA, else ~/data).

`fields:` maps our names to the dataset's columns:
  sample_id, image, question, context, answers, answer_index, choices, question_type, image_id
Each value is a path: a column, then any of `.key` (a struct's key), `[]` (every item of a list), `[N]` (item N):
  `answers: "answers[].answer"` (VQAv2's list of dicts), `image: "image[0]"` (SEED's list of frames),
  `question_type: "types.detailed"` (GQA's struct). A trailing `?` makes the field optional (a missing column or key
  gives the default). `choices` is one list column or a list of columns, one per option
  (`[choice_a, choice_b, choice_c, choice_d]`); trailing empty options are dropped. `answer_index` (an int column)
  stands for `answers` and becomes the option's letter (ScienceQA: 0 -> "A"). `context`, when not empty, is put before
  the question as "Context: ...\\n" (ScienceQA's hint, as lmms-eval and LLaVA format it). Defaults: sample_id = the row
  number, question = "" (captioning), question_type = "", image_id = the sample id (or the join key).
`hf.images: {config, split, key, column, id}` joins images kept in another dataset (GQA): the `image` field is then a
key column, looked up in that dataset's `key` column (`id` defaults to hf.id, `column` to "image").
`hf.filter: {column, equals}` keeps matching rows only (SEED-Bench's image questions).

Training conversations: `open_conversations(path, image_root)` reads LLaVA's format (llava_v1_5_mix665k.json, or an HF
dataset with its columns) and `scene_conversations(...)` makes them from the scenes. A `Conversation` decodes its image
on each access of `.image` (665k decoded images would not fit in memory).

Errors: bad config or missing data -> `UserError`; one sample whose image is missing or does not decode (or whose
annotation is unusable) -> `SampleError`, a `UserError` naming the sample, which a caller may catch and go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from aimv2_eval.data.images import open_image, to_rgb
from aimv2_eval.data.scenes import CAPTION_OPENERS, Scene, SceneDataset
from aimv2_eval.data.sources import data_root
from aimv2_eval.errors import UserError, first_line

# The paper's prompts (Table C2).
VQA_PROMPT = "Answer the question using a single word or phrase."
MC_PROMPT = "Answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
IMAGE_MARK = "<image>"

FIELDS = ("sample_id", "image", "question", "context", "answers", "answer_index", "choices", "question_type",
          "image_id")
SOURCES = ("hf", "local", "scenes")
SPLITS = ("eval", "train")


class SampleError(UserError):
    """One sample cannot be used (its image is missing or does not decode, or its annotation is broken)."""


class FieldError(SampleError):
    """A row does not have what `fields:` asks for (on the first row: the mapping is wrong, a UserError)."""


@dataclass
class MMSample:
    sample_id: str
    image: Image.Image | None  # RGB; None only from `MMSet.meta`
    question: str
    answers: list[str]
    choices: list[str] | None
    question_type: str
    image_id: str


class MMSet(Protocol):
    name: str

    @property
    def identity(self) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> MMSample: ...

    def meta(self, i: int) -> MMSample: ...


def _check_index(i: int, n: int, name: str) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"sample {i} out of range 0..{n - 1} of {name}")
    return i


def _decode(value: Any, where: str) -> Image.Image:
    """An image cell (PIL image, array, {bytes, path}, bytes, file path) as RGB; any failure is this sample's."""
    try:
        if isinstance(value, Image.Image | np.ndarray):
            return to_rgb(value, where)
        if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            return open_image(value.get("bytes") or value["path"], where)
        if isinstance(value, bytes | str | Path) and value:
            return open_image(value, where)
    except UserError as exc:
        raise SampleError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything (SyntaxError for a broken PNG, ...)
        raise SampleError(f"{where}: image does not decode ({type(exc).__name__}: {first_line(exc)}); "
                          "replace or remove it") from None
    raise SampleError(f"{where}: no image (the image cell holds {type(value).__name__})")


# ---------------------------------------------------------------- field paths
_PATH_RE = re.compile(r"^([^.\[\]?]+)((?:\.[^.\[\]?]+|\[\d*\])*)(\??)$")
_STEP_RE = re.compile(r"\.([^.\[\]?]+)|\[(\d*)\]")


@dataclass(frozen=True)
class FieldPath:
    """`column(.key | [] | [N])*` with an optional trailing `?`."""

    text: str
    column: str
    steps: tuple[tuple[str, Any], ...]
    optional: bool

    @classmethod
    def parse(cls, text: Any, field: str) -> FieldPath:
        m = _PATH_RE.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise UserError(f"data.fields.{field}: {text!r} is not a column path; write `column`, `column.key`, "
                            "`column[]`, `column[0]` (a trailing ? makes it optional)")
        steps = tuple(("key", k) if k else ("all", None) if i == "" else ("index", int(i))
                      for k, i in _STEP_RE.findall(m.group(2)))
        return cls(text.strip(), m.group(1), steps, bool(m.group(3)))

    def get(self, row: dict[str, Any]) -> Any:
        """The value at this path (None when optional and absent); KeyError / IndexError / TypeError otherwise."""
        try:
            return _walk(row[self.column], self.steps)
        except (KeyError, IndexError, TypeError):
            if self.optional:
                return None
            raise


def _walk(value: Any, steps: tuple[tuple[str, Any], ...]) -> Any:
    for k, (kind, arg) in enumerate(steps):
        if value is None:
            return None
        if kind == "all":
            return [_walk(v, steps[k + 1:]) for v in value]
        value = value[arg]
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value if v is not None)
    return str(value).strip()


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [_text(v) for v in value if v is not None]
    return [_text(value)]


def _question(question: str, context: str) -> str:
    return f"Context: {context}\n{question}" if context else question


def _letter(index: Any, choices: list[str] | None, sid: str) -> str:
    try:
        k = int(index)
    except (TypeError, ValueError):
        raise SampleError(f"sample {sid}: answer index {index!r} is not an integer; fix the data") from None
    n = len(choices) if choices else len(string.ascii_uppercase)
    if not 0 <= k < n:
        raise SampleError(f"sample {sid}: answer index {k} is outside its {n} choices; fix the data")
    return string.ascii_uppercase[k]


class FieldMap:
    """A validated `fields:` block: our field -> path(s) into a row."""

    def __init__(self, fields: Any, columns: list[str], where: str) -> None:
        if not isinstance(fields, dict) or not fields:
            raise UserError(f"{where}: data.fields must map our fields ({', '.join(FIELDS)}) to columns")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise UserError(f"{where}: unknown data.fields {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        if "image" not in fields:
            raise UserError(f"{where}: data.fields.image is required (the image column)")
        if ("answers" in fields) == ("answer_index" in fields):
            raise UserError(f"{where}: set exactly one of data.fields.answers and data.fields.answer_index")
        self.present = set(columns)
        self.paths: dict[str, FieldPath] = {}
        self.choices: list[FieldPath] | FieldPath | None = None
        for name, spec in fields.items():
            if name == "choices" and isinstance(spec, list):
                self.choices = [FieldPath.parse(s, f"choices[{k}]") for k, s in enumerate(spec)]
            elif name == "choices":
                self.choices = FieldPath.parse(spec, name)
            else:
                self.paths[name] = FieldPath.parse(spec, name)
        for name, p in self._all():
            if p.column not in columns and not p.optional:
                raise UserError(f"{where}: data.fields.{name} names column {p.column!r}, which is not there "
                                f"(columns: {', '.join(columns)}); fix the field mapping")

    def _all(self) -> list[tuple[str, FieldPath]]:
        out = list(self.paths.items())
        if isinstance(self.choices, list):
            out += [(f"choices[{k}]", p) for k, p in enumerate(self.choices)]
        elif self.choices is not None:
            out.append(("choices", self.choices))
        return out

    def columns(self, image: bool) -> list[str]:
        """Columns the text fields read (and the image column when `image`) that are there, in first-use order."""
        cols = [p.column for name, p in self._all() if name != "image"] + ([self.paths["image"].column] if image else [])
        return [c for c in dict.fromkeys(cols) if c in self.present]

    def values(self, row: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        """Our fields of one row, except the image (`image_id` None when the data gives none)."""
        name = "sample_id"
        try:
            sid = _text(self.paths["sample_id"].get(row)) if "sample_id" in self.paths else ""
            sid = sid or str(position)
            out: dict[str, Any] = {"sample_id": sid}
            for name in ("question", "context", "question_type", "image_id"):
                out[name] = _text(self.paths[name].get(row)) if name in self.paths else ""
            name = "choices"
            choices = None
            if isinstance(self.choices, list):
                choices = [_text(p.get(row)) for p in self.choices]
            elif self.choices is not None:
                choices = _texts(self.choices.get(row))
            while choices and not choices[-1]:
                choices.pop()
            name = "answers"
            if "answer_index" in self.paths:
                name = "answer_index"
                answers = [_letter(self.paths["answer_index"].get(row), choices, sid)]
            else:
                answers = _texts(self.paths["answers"].get(row))
        except (KeyError, IndexError, TypeError) as exc:
            p = self.choices if name == "choices" else self.paths.get(name)
            text = ", ".join(q.text for q in p) if isinstance(p, list) else p.text if p else name
            raise FieldError(f"{where} row {position}: data.fields.{name} {text!r} does not fit the row "
                              f"({type(exc).__name__}: {first_line(exc)}); fix the field mapping") from None
        return {"sample_id": sid, "question": _question(out["question"], out["context"]), "answers": answers,
                "choices": choices or None, "question_type": out["question_type"], "image_id": out["image_id"] or None}


def _sample(values: dict[str, Any], image: Image.Image | None, default_image_id: str) -> MMSample:
    return MMSample(values["sample_id"], image, values["question"], values["answers"], values["choices"],
                    values["question_type"], values["image_id"] or default_image_id)


# ---------------------------------------------------------------- source: hf
def _load_hf(id_: str, config: str | None, split: str, revision: str | None, load_kwargs: dict, help_text: str) -> Any:
    import datasets  # heavy; only this source needs it

    path = Path(id_).expanduser()
    try:
        if path.is_dir():
            if config and (path / config).is_dir():
                path = path / config
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{path} has splits {', '.join(ds)}, not {split!r}; fix data.hf.split")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(id_, config, split=split, revision=revision, **load_kwargs)
    except UserError:
        raise
    except Exception as exc:  # offline, gated, unknown id or split: all mean "the data is not here"
        what = f"{id_}" + (f" ({config})" if config else "")
        raise UserError(f"data missing: HF dataset {what} split {split!r} did not load ({first_line(exc)}); "
                        f"{help_text}") from None
    return ds


def _local_help(cfg: dict, root: Path) -> str:
    local = cfg.get("local")
    if not isinstance(local, dict):
        return ""
    return (f"or put a local copy at {_rooted(local.get('annotations', '?'), root)} (JSON lines) with its images under "
            f"{_rooted(local.get('images', '?'), root)} (set --data-root or $AIMV2_EVAL_DATA)")


class HFMMSet:
    """A split of an HF dataset, read through a `fields:` map; images decoded per access."""

    def __init__(self, cfg: dict, hf: dict, root: Path) -> None:
        id_ = _rooted(hf["id"], root)
        self.name = cfg.get("name") or f"hf:{hf['id']}" + (f"/{hf['config']}" if hf.get("config") else "") + \
            f"[{hf['split']}]"
        help_text = ("make it loadable (network and `hf auth login` if gated, or a warm HF cache) "
                     + _local_help(cfg, root)).strip()
        ds = _load_hf(id_, hf.get("config"), hf["split"], hf.get("revision"), dict(hf.get("load_kwargs") or {}),
                      help_text)
        where = f"HF dataset {hf['id']}"
        self.fields = FieldMap(cfg.get("fields"), list(ds.column_names), where)
        self._identity: dict[str, Any] = {"source": "hf", "id": hf["id"], "config": hf.get("config"),
                                          "split": hf["split"], "revision": hf.get("revision"),
                                          "fingerprint": getattr(ds, "_fingerprint", None)}
        filt = hf.get("filter")
        if filt:  # by index, reading one column: no cache files written next to the data
            if not isinstance(filt, dict) or "column" not in filt or "equals" not in filt:
                raise UserError(f"{where}: data.hf.filter must be {{column, equals}}")
            if filt["column"] not in ds.column_names:
                raise UserError(f"{where}: data.hf.filter.column {filt['column']!r} is not there "
                                f"(columns: {', '.join(ds.column_names)})")
            keep = [k for k, v in enumerate(ds.select_columns([filt["column"]])[filt["column"]]) if v == filt["equals"]]
            ds = ds.select(keep)
            self._identity["filter"] = {"column": filt["column"], "equals": filt["equals"]}
        if len(ds) == 0:
            raise UserError(f"{where} split {hf['split']!r} has no rows" + (" after data.hf.filter" if filt else ""))
        self._identity["rows"] = len(ds)
        self.where = where
        images = hf.get("images")
        self._join = None
        self._key_index: dict[str, int] = {}
        if images:
            self._open_join(images, id_, hf, root, help_text)
            self._text = ds.select_columns(self.fields.columns(image=True))
            self._images = None
        else:
            self._text = ds.select_columns(self.fields.columns(image=False))
            self._images = ds.select_columns([self.fields.paths["image"].column])
        try:  # a mapping that does not fit fails now, not mid-run
            self.fields.values(self._text[0], 0, where)
        except FieldError as exc:
            raise UserError(str(exc)) from None
        self.n = len(ds)

    def _open_join(self, images: dict, id_: str, hf: dict, root: Path, help_text: str) -> None:
        if not isinstance(images, dict) or "key" not in images:
            raise UserError(f"{self.where}: data.hf.images must be {{config, split, key, column}}")
        jid = _rooted(images.get("id", hf["id"]), root) if "id" in images else id_
        join = _load_hf(jid, images.get("config"), images.get("split", hf["split"]), hf.get("revision"),
                        dict(hf.get("load_kwargs") or {}), help_text)
        key, column = images["key"], images.get("column", "image")
        for col in (key, column):
            if col not in join.column_names:
                raise UserError(f"{self.where}: the images dataset has no column {col!r} (columns: "
                                f"{', '.join(join.column_names)}); fix data.hf.images")
        keys = join.select_columns([key])[key]
        self._key_index = {str(k): j for j, k in enumerate(keys)}
        self._join, self._join_column = join.select_columns([column]), column
        self._identity["images"] = {"config": images.get("config"), "split": images.get("split", hf["split"]),
                                    "fingerprint": getattr(join, "_fingerprint", None), "rows": len(join)}

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def __len__(self) -> int:
        return self.n

    def _values(self, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        row = self._text[i]
        values = self.fields.values(row, i, self.where)
        if self._join is not None and values["image_id"] is None:
            values["image_id"] = _text(self.fields.paths["image"].get(row))
        return row, values

    def meta(self, i: int) -> MMSample:
        i = _check_index(i, self.n, self.name)
        return _sample(self._values(i)[1], None, "")

    def __getitem__(self, i: int) -> MMSample:
        i = _check_index(i, self.n, self.name)
        row, values = self._values(i)
        where = f"sample {values['sample_id']} ({self.where} row {i})"
        image_path = self.fields.paths["image"]
        try:
            if self._join is not None:
                key = _text(image_path.get(row))
                if key not in self._key_index:
                    raise SampleError(f"{where}: image {key!r} is not in the images dataset; fix data.hf.images")
                cell = self._join[self._key_index[key]][self._join_column]
            else:
                cell = image_path.get(self._images[i])
        except SampleError:
            raise
        except (KeyError, IndexError, TypeError) as exc:
            raise SampleError(f"{where}: data.fields.image {image_path.text!r} does not fit the row "
                              f"({type(exc).__name__}: {first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - `datasets` decodes the cell on access: a corrupt image fails here
            raise SampleError(f"{where}: image does not decode ({type(exc).__name__}: {first_line(exc)}); "
                              "replace or remove it") from None
        return _sample(values, _decode(cell, where), values["sample_id"])


# ---------------------------------------------------------------- source: local
def _rooted(path: Any, root: Path) -> str:
    return str(path).replace("{root}", str(root))


LOCAL_KEYS = ("sample_id", "image", "question", "context", "answers", "choices", "question_type", "image_id")


class LocalMMSet:
    """JSON lines with our field names; images in a folder, decoded per access."""

    def __init__(self, cfg: dict, local: dict, root: Path) -> None:
        if not isinstance(local, dict) or "annotations" not in local or "images" not in local:
            raise UserError("data.local must be {annotations: <file.jsonl>, images: <folder>}")
        self.annotations = Path(_rooted(local["annotations"], root)).expanduser()
        self.images = Path(_rooted(local["images"], root)).expanduser()
        missing = [str(p) for p, ok in ((self.annotations, self.annotations.is_file()),
                                        (self.images, self.images.is_dir())) if not ok]
        if missing:
            raise UserError(f"data missing: {' and '.join(missing)} not found; put the annotations (JSON lines) and "
                            "the image folder there (set --data-root or $AIMV2_EVAL_DATA)")
        self.name = cfg.get("name") or f"local:{self.annotations}"
        self.records: list[dict[str, Any]] = []
        with open(self.annotations, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    self.records.append(self._record(line, line_no, len(self.records)))
        if not self.records:
            raise UserError(f"{self.annotations} holds no samples; write one JSON object per line")

    def _record(self, line: str, line_no: int, position: int) -> dict[str, Any]:
        where = f"{self.annotations}:{line_no}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(d, dict) or not isinstance(d.get("image"), str) or "answers" not in d:
            raise UserError(f"{where}: each line needs `image` (a path under {self.images}) and `answers`")
        sid = _text(d.get("sample_id")) or str(position)
        choices = _texts(d.get("choices")) if d.get("choices") is not None else None
        return {"sample_id": sid, "image": d["image"], "question": _question(_text(d.get("question")),
                _text(d.get("context"))), "answers": _texts(d["answers"]), "choices": choices or None,
                "question_type": _text(d.get("question_type")), "image_id": _text(d.get("image_id")) or d["image"]}

    @cached_property
    def identity(self) -> dict[str, Any]:
        """Sizes and mtimes of the annotation file and of every image it names (a replaced image changes it)."""
        h = hashlib.sha1()
        for rel in sorted({r["image"] for r in self.records}):
            try:
                st = os.stat(self.images / rel)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{rel}\0missing\n".encode())
        st = os.stat(self.annotations)
        return {"source": "local", "annotations": str(self.annotations.resolve()), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "images": str(self.images.resolve()), "images_sha1": h.hexdigest(),
                "rows": len(self.records)}

    def __len__(self) -> int:
        return len(self.records)

    def meta(self, i: int) -> MMSample:
        r = self.records[_check_index(i, len(self), self.name)]
        return MMSample(r["sample_id"], None, r["question"], list(r["answers"]), r["choices"] and list(r["choices"]),
                        r["question_type"], r["image_id"])

    def __getitem__(self, i: int) -> MMSample:
        s = self.meta(i)
        r = self.records[int(i)]
        path = self.images / r["image"]
        where = f"sample {s.sample_id} ({path})"
        if not path.is_file():
            raise SampleError(f"sample {s.sample_id}: image {path} is missing; add it or remove the sample from "
                              f"{self.annotations}")
        s.image = _decode(path, where)
        return s


# ---------------------------------------------------------------- source: scenes
def caption_references(scene: Scene) -> list[str]:
    """The scene's caption, then the same sentence with every other opener the generator uses."""
    opener = next((o for o in CAPTION_OPENERS if o and scene.caption.startswith(o)), "")
    body = scene.caption[len(opener):]
    return list(dict.fromkeys([scene.caption] + [o + body for o in CAPTION_OPENERS]))


def _scene_opts(scenes: dict, split: str) -> tuple[int, int, int, int]:
    part = scenes.get(split)
    if not isinstance(part, dict) or "n" not in part or "seed" not in part:
        raise UserError(f"data.scenes.{split} must be {{n, seed}}")
    return int(part["n"]), int(part["seed"]), int(scenes.get("image_size", 64)), int(scenes.get("max_objects", 4))


class SceneMMSet:
    """Procedural scenes as VQA (one sample per question) or captioning (one per scene); deterministic in the seed."""

    def __init__(self, kind: str, n: int, seed: int, image_size: int, max_objects: int, name: str | None = None
                 ) -> None:
        if kind not in ("vqa", "caption"):
            raise UserError(f"data.scenes.kind must be vqa or caption, got {kind!r}")
        self.kind = kind
        self.scenes = SceneDataset(n, seed, image_size, max_objects=max_objects)
        self.name = name or f"scenes-{kind}:seed{seed}:n{n}"
        self.identity = {"source": "scenes", "kind": kind, "n": n, "seed": seed, "image_size": image_size,
                         "max_objects": max_objects}
        # Annotations only (a scene draws its pixels when its image is read).
        self.index = [(i, j) for i in range(n) for j in range(len(self.scenes[i].qa))] if kind == "vqa" else \
            [(i, -1) for i in range(n)]

    def __len__(self) -> int:
        return len(self.index)

    def _sample(self, i: int, with_image: bool) -> MMSample:
        s, j = self.index[_check_index(i, len(self), self.name)]
        scene = self.scenes[s]
        image_id = f"scene-{self.identity['seed']}-{s}"
        image = scene.image if with_image else None
        if self.kind == "caption":
            return MMSample(image_id, image, "", caption_references(scene), None, "", image_id)
        qa = scene.qa[j]
        return MMSample(f"{image_id}-q{j}", image, qa.question, [qa.answer], None, qa.kind, image_id)

    def meta(self, i: int) -> MMSample:
        return self._sample(i, False)

    def __getitem__(self, i: int) -> MMSample:
        return self._sample(i, True)


# ---------------------------------------------------------------- opening a split
def open_mm_split(data_cfg: dict, split: str, root: str | Path | None = None) -> MMSet:
    """The `split` ("eval": the benchmark split; "train": embedded scenes only) of a task's `data:` block."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(data_cfg, dict):
        raise UserError("the task's data block must be a mapping with `source:`")
    source = data_cfg.get("source")
    if source not in SOURCES:
        raise UserError(f"unknown data.source {source!r}; known: {', '.join(SOURCES)}")
    if source == "scenes":
        scenes = data_cfg.get("scenes")
        if not isinstance(scenes, dict):
            raise UserError("data.scenes must be {kind, image_size, max_objects, train: {n, seed}, eval: {n, seed}}")
        seeds = [scenes[s]["seed"] for s in SPLITS if isinstance(scenes.get(s), dict) and "seed" in scenes[s]]
        if len(seeds) == 2 and seeds[0] == seeds[1]:
            raise UserError("data.scenes.train.seed and data.scenes.eval.seed are equal: the same seed makes the same "
                            "scenes; give them different seeds")
        n, seed, size, max_objects = _scene_opts(scenes, split)
        return SceneMMSet(scenes.get("kind", "vqa"), n, seed, size, max_objects, data_cfg.get("name"))
    if split == "train":
        raise UserError(f"a {source} benchmark has only the eval split; train on open_conversations / "
                        "scene_conversations")
    base = data_root(root)
    local = data_cfg.get("local")
    if source == "local":
        return LocalMMSet(data_cfg, local, base)
    hf = data_cfg.get("hf")
    if not isinstance(hf, dict) or not hf.get("id") or not hf.get("split"):
        raise UserError("data.hf must give at least {id, split}")
    if isinstance(local, dict) and "annotations" in local and \
            Path(_rooted(local["annotations"], base)).expanduser().is_file():
        return LocalMMSet(data_cfg, local, base)  # a local copy wins over the hub
    return HFMMSet(data_cfg, hf, base)


# ---------------------------------------------------------------- training conversations
class _FileImage:
    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = path, where

    def __call__(self) -> Image.Image:
        if not self.path.is_file():
            raise SampleError(f"{self.where}: image {self.path} is missing; add it or remove the item")
        return _decode(self.path, self.where)


class _HFRowImage:
    def __init__(self, ds: Any, row: int, column: str, where: str) -> None:
        self.ds, self.row, self.column, self.where = ds, row, column, where

    def __call__(self) -> Image.Image:
        try:
            cell = self.ds[self.row][self.column]
        except Exception as exc:  # noqa: BLE001 - `datasets` decodes on access
            raise SampleError(f"{self.where}: image does not decode ({type(exc).__name__}: {first_line(exc)})"
                              ) from None
        return _decode(cell, self.where)


class _SceneImage:
    def __init__(self, scenes: SceneDataset, index: int) -> None:
        self.scenes, self.index = scenes, index

    def __call__(self) -> Image.Image:
        return self.scenes[self.index].image


class Conversation:
    """One training conversation: (user, assistant) turns about one image, or none (text-only).

    `.image` decodes on every access (nothing is kept: a whole SFT mixture of decoded images would not fit).
    """

    __slots__ = ("image_id", "turns", "_image", "_load")

    def __init__(self, image: Image.Image | None = None, image_id: str = "", turns: list[tuple[str, str]] | None = None,
                 load: Any = None) -> None:
        self.image_id, self.turns = image_id, list(turns or [])
        self._image, self._load = image, load

    @property
    def has_image(self) -> bool:
        return self._image is not None or self._load is not None

    @property
    def image(self) -> Image.Image | None:
        if self._image is not None:
            return self._image
        return self._load() if self._load is not None else None

    def __repr__(self) -> str:
        return f"Conversation(image_id={self.image_id!r}, turns={len(self.turns)}, has_image={self.has_image})"


def scene_conversations(n: int, seed: int, image_size: int = 64, max_objects: int = 4,
                        turns_per_conversation: int | None = None) -> list[Conversation]:
    """Each scene's QA pairs (with the short-answer prompt) and a caption turn, in LLaVA's prompt style. With
    `turns_per_conversation`, the turns are shuffled (seeded per scene) and split into conversations of that many
    turns on the same image: the questions always come in one order, and a small LM would otherwise learn the
    answer of each position instead of reading the question."""
    scenes = SceneDataset(n, seed, image_size, max_objects=max_objects)
    out = []
    for i in range(n):
        scene = scenes[i]
        turns = [(f"{qa.question}\n{VQA_PROMPT}", qa.answer) for qa in scene.qa] + [(CAPTION_PROMPT, scene.caption)]
        image_id, image = f"scene-{seed}-{i}", _SceneImage(scenes, i)
        if not turns_per_conversation:
            out.append(Conversation(None, image_id, turns, image))
            continue
        order = np.random.default_rng([seed, i]).permutation(len(turns))
        k = int(turns_per_conversation)
        for lo in range(0, len(turns), k):
            out.append(Conversation(None, image_id, [turns[j] for j in order[lo: lo + k]], image))
    return out


def _clean(text: Any) -> str:
    return str(text or "").replace(IMAGE_MARK, "").strip()


HUMAN, ASSISTANT = ("human", "user"), ("gpt", "assistant")


def conversation_turns(messages: Any, where: str) -> list[tuple[str, str]]:
    """LLaVA's [{from, value}, ...] as (user, assistant) pairs, "<image>" removed. As LLaVA's preprocessing does, a
    leading assistant message is dropped; an unanswered last question is dropped."""
    if not isinstance(messages, list):
        raise UserError(f"{where}: `conversations` must be a list of {{from, value}}")
    msgs = [(str(m.get("from", "")).lower(), m.get("value")) for m in messages if isinstance(m, dict)]
    if len(msgs) != len(messages):
        raise UserError(f"{where}: every message must be {{from, value}}")
    if msgs and msgs[0][0] not in HUMAN:
        msgs = msgs[1:]
    turns = []
    for k in range(0, len(msgs) - 1, 2):
        (r1, user), (r2, answer) = msgs[k], msgs[k + 1]
        if r1 not in HUMAN or r2 not in ASSISTANT:
            raise UserError(f"{where}: message {k} is from {r1!r} and message {k + 1} from {r2!r}; turns must "
                            "alternate human / gpt - fix or remove the item")
        turns.append((_clean(user), _clean(answer)))
    if not turns:
        raise UserError(f"{where}: no complete human / gpt turn; fix or remove the item")
    return turns


def _read_items(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                items = [json.loads(line) for line in f if line.strip()]
        else:
            with open(path, encoding="utf-8") as f:
                items = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({first_line(exc)}); it must be LLaVA's JSON list of "
                        "{id, image, conversations}") from None
    if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        raise UserError(f"{path}: expected a JSON list of {{id, image, conversations}} objects")
    return items


def open_conversations(json_path: str | Path, image_root: str | Path | None = None) -> list[Conversation]:
    """LLaVA-format training conversations from a JSON / JSON-lines file, a `save_to_disk` folder or an HF dataset id
    (columns id, image, conversations). `image` paths are under `image_root` (default: the file's folder); items
    without an image are text-only (`image` None)."""
    path = Path(json_path).expanduser()
    if path.is_file():
        root = Path(image_root).expanduser() if image_root else path.parent
        out = []
        for k, item in enumerate(_read_items(path)):
            iid = str(item.get("id", k))
            where = f"{path.name} item {iid}"
            turns = conversation_turns(item.get("conversations"), where)
            rel = item.get("image")
            if rel:
                out.append(Conversation(None, str(rel), turns, _FileImage(root / str(rel), where)))
            else:
                out.append(Conversation(None, "", turns))
        return out
    return _hf_conversations(str(json_path), image_root)


def _hf_conversations(id_: str, image_root: str | Path | None) -> list[Conversation]:
    import datasets

    path = Path(id_).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        else:
            ds = datasets.load_dataset(id_, split="train")
    except Exception as exc:  # offline, unknown id: the data is not here
        raise UserError(f"conversations not found: {id_} is neither a file nor a loadable HF dataset "
                        f"({first_line(exc)}); give llava_v1_5_mix665k.json or a dataset id") from None
    if "conversations" not in ds.column_names:
        raise UserError(f"HF dataset {id_} has no `conversations` column (columns: {', '.join(ds.column_names)})")
    has_image = "image" in ds.column_names
    paths = has_image and not isinstance(ds.features["image"], datasets.Image)
    cols = ["conversations"] + [c for c in ("id",) if c in ds.column_names] + (["image"] if paths else [])
    text = ds.select_columns(cols)[:]
    if has_image and not paths:  # which rows hold an image, without decoding any
        present = [v is not None for v in ds.select_columns(["image"]).cast_column(
            "image", datasets.Image(decode=False))["image"]]
        images = ds.select_columns(["image"])
    root = Path(image_root).expanduser() if image_root else Path(".")
    out = []
    for k, messages in enumerate(text["conversations"]):
        iid = str(text["id"][k]) if "id" in text else str(k)
        where = f"{id_} item {iid}"
        turns = conversation_turns(messages, where)
        if paths and text["image"][k]:
            rel = str(text["image"][k])
            out.append(Conversation(None, rel, turns, _FileImage(root / rel, where)))
        elif has_image and not paths and present[k]:
            out.append(Conversation(None, iid, turns, _HFRowImage(images, k, "image", where)))
        else:
            out.append(Conversation(None, "", turns))
    return out
