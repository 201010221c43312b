"""A catalogue of bad inputs a careful new user tries: each ends in ONE clear line and exit status 2.

Every case runs the CLI in-process and asserts: exit 2; stderr's last non-empty line starts with `aimv2-eval` and
holds the expected words; a `UserError` is exactly one stderr line (argparse's own usage errors, for unknown flags,
missing required arguments and non-integer values, print a usage block first and are allowed); no traceback; no
file written under the output folder. Kinds: names, flags, image folders as data, pretraining recipes, sweep grids
and `encode` inputs (task-YAML fields, checkpoints, records folders, devices and decode errors have their own tests).

Decisions the catalogue records:
- seeds are integers >= 0, for `run` and `sweep` alike (numpy refuses negative seeds, and a record named
  `...-seed-1.json` reads as seed 1);
- names differ from registered ones only in case: the one name they fold to (`--task DIGITS_PROBE`), as backbone
  names already did; a path-like name (`../x`, `tasks/x.yaml`) that is no file says so, suggesting from its stem;
- `--resume` with `--overwrite` is not a conflict: rerun the cell, continuing an interrupted rerun's checkpoint
  (a sweep passes --resume to every cell);
- `list KIND NAME` with a plain name that matches nothing is an error with the closest names; a glob pattern that
  matches nothing still prints "no ... match" and exits 1 (scripts rely on it);
- an image in any PIL mode (CMYK, P, LA, I;16, RGBA) is data, not an error: it decodes to RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image

from aimv2_eval.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aimv2-tiny"]
FAST = ["--limit", "8", "--epochs", "1", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- setups (files written into tmp_path)
def _images(folder: Path, n: int = 3, mode: str = "RGB", color=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".tif" if mode == "CMYK" else ".png"  # PNG has no CMYK; TIFF keeps it lossless
    for i in range(n):
        Image.new(mode, (16, 16), color).save(folder / f"{i}{suffix}")


def _probe_task(tmp: Path, num_classes: int = 2, name: str = "bench_probe") -> None:
    """A probe task on an ImageFolder at {data}/bench/<split>/<class>/<image> (the benchmarks' local route)."""
    tasks = tmp / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{name}.yaml").write_text(
        f"include: {REPO / 'tasks' / '_probe_table_a2.yaml'}\nversion: 1\n"
        f"data: {{num_classes: {num_classes}, imagefolder: {{dir: bench}}}}\nprotocol: {{epochs: 1, batch_size: 4}}\n")
    (tmp / "data").mkdir(exist_ok=True)


def folder_task(classes: dict[str, list[str]] | None = None, num_classes: int = 2, flat: bool = False,
                empty_class: str | None = None) -> Callable[[Path], None]:
    """`classes`: split -> class folder names (None: no bench folder at all)."""
    def setup(tmp: Path) -> None:
        _probe_task(tmp, num_classes)
        for split, names in (classes or {}).items():
            root = tmp / "data" / "bench" / split
            root.mkdir(parents=True, exist_ok=True)
            if flat:
                _images(root)
            for c in names:
                _images(root / c, n=0 if c == empty_class else 3)
    return setup


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return setup


def mkdir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir(parents=True)


def recipe(doc: dict | str) -> Callable[[Path], None]:
    return write("recipe.yaml", doc if isinstance(doc, str) else yaml.safe_dump(doc))


def grid(*groups, **top) -> Callable[[Path], None]:
    return write("grid.yaml", yaml.safe_dump({**top, "grid": list(groups)}))


OK_GROUP = {"backbones": ["aimv2-tiny"], "tasks": ["digits_probe"]}


def not_a_sweep(tmp: Path) -> None:  # a records folder with a record but no sweep ever run into it
    (tmp / "records" / "aimv2-tiny" / "digits_probe").mkdir(parents=True)
    (tmp / "records" / "aimv2-tiny" / "digits_probe" / "abc-seed0.json").write_text("{}")


def foreign_manifest(tmp: Path) -> None:  # valid JSON in the manifest's place that no sweep wrote
    (tmp / "records" / ".sweep" / "sweeps").mkdir(parents=True)
    (tmp / "records" / ".sweep" / "sweeps" / "x.json").write_text('{"cells": [{"id": 3}]}')


# ---------------------------------------------------------------- the catalogue
@dataclass
class Case:
    id: str
    argv: list[str]  # {tmp}: the test's folder, {out}: the output folder that must stay empty
    words: list[str]  # in the error line
    setup: Callable[[Path], None] | None = None
    usage: bool = False  # argparse's usage error: a usage block, then the error line

    def __str__(self) -> str:
        return self.id


RUN = ["run", *TINY, "--out", "{out}"]
DATA = ["--tasks-dir", "{tmp}/tasks", "--data-root", "{tmp}/data", "--task", "bench_probe", *FAST]
PRE = ["pretrain", "--config", "{tmp}/recipe.yaml", "run.out_dir={out}/run"]
SWEEP = ["sweep", "--out", "{out}"]
ENC = ["encode", *TINY, "--random-init", "--out", "{out}/tokens.safetensors"]

CASES = [
    # ---- names
    Case("backbone-typo", ["run", "--backbone", "aimv2-tinny", "--task", "digits_probe", "--out", "{out}"],
         ["unknown backbone 'aimv2-tinny'", "did you mean aimv2-tiny"]),
    Case("backbone-typo-other-case", ["run", "--backbone", "AIMV2-TINNY", "--task", "digits_probe", "--out", "{out}"],
         ["unknown backbone 'AIMV2-TINNY'", "did you mean aimv2-tiny"]),
    Case("backbone-path-separator", ["run", "--backbone", "../x", "--task", "digits_probe", "--out", "{out}"],
         ["unknown backbone '../x'", "no such file"]),
    Case("backbone-slash-for-dash", ["run", "--backbone", "aimv2/tiny", "--task", "digits_probe", "--out", "{out}"],
         ["unknown backbone 'aimv2/tiny'", "did you mean aimv2-tiny"]),
    Case("backbone-odd-characters", ["run", "--backbone", "aimv2-tiny;rm -rf", "--task", "digits_probe", "--out", "{out}"],
         ["unknown backbone 'aimv2-tiny;rm -rf'", "did you mean aimv2-tiny"]),
    Case("task-unknown", [*RUN, "--task", "digit_probe"], ["unknown task 'digit_probe'", "did you mean digits_probe"]),
    Case("task-with-space", [*RUN, "--task", "digits probe"], ["unknown task 'digits probe'", "did you mean digits_probe"]),
    Case("task-file-missing", [*RUN, "--task", "{tmp}/mine.yaml"], ["unknown task", "mine.yaml", "no such file"]),
    Case("task-file-typo-suggests-stem", [*RUN, "--task", "tasks/digit_probe.yaml"],
         ["no such file", "did you mean digits_probe"]),
    Case("task-file-is-a-folder", [*RUN, "--task", "{tmp}/some.yaml"], ["unknown task", "some.yaml", "a folder"],
         mkdir("some.yaml")),
    Case("list-plugin-unknown-name", ["list", "plugins", "attentive"], ["unknown plugin 'attentive'", "did you mean"]),
    Case("list-plugin-typo", ["list", "plugins", "prob"], ["unknown plugin 'prob'", "did you mean probe"]),
    Case("list-task-typo", ["list", "tasks", "digit_probe"], ["unknown task 'digit_probe'", "did you mean digits_probe"]),
    Case("list-unknown-kind", ["list", "plugin"], ["invalid choice: 'plugin'"], usage=True),
    # ---- flags
    Case("epochs-not-an-integer", [*RUN, "--task", "digits_probe", "--epochs", "x"],
         ["--epochs", "invalid int value: 'x'"], usage=True),
    Case("precision-fp8", [*RUN, "--task", "digits_probe", "--precision", "fp8"],
         ["--precision", "invalid choice: 'fp8'"], usage=True),
    Case("seed-negative", [*RUN, "--task", "digits_probe", "--seed", "-1", *FAST], ["--seed must be >= 0"]),
    Case("tasks-dir-is-a-file", [*RUN, "--task", "digits_probe", "--tasks-dir", "{tmp}/t.yaml"],
         ["--tasks-dir", "t.yaml", "is not a folder"], write("t.yaml", "version: 1\n")),
    Case("tasks-dir-missing", [*RUN, "--task", "digits_probe", "--tasks-dir", "{tmp}/nowhere"],
         ["--tasks-dir", "nowhere", "is not a folder"]),
    Case("data-root-missing", [*RUN, *DATA, "--data-root", "{tmp}/no-data"],
         ["data missing", "no-data/bench/train"], folder_task()),
    Case("sweep-file-and-grid-flags", [*SWEEP, "{tmp}/grid.yaml", "--backbones", "aimv2-tiny"],
         ["either a sweep file or --backbones/--tasks, not both"], grid(OK_GROUP)),
    # ---- image folders as data
    Case("imagefolder-missing", [*RUN, *DATA], ["data missing", "bench/train/<class>/<image>"], folder_task()),
    Case("imagefolder-empty", [*RUN, *DATA], ["bench/train has no images in class folders"],
         folder_task({"train": [], "test": []})),
    Case("imagefolder-no-class-folders", [*RUN, *DATA], ["bench/train has no images in class folders"],
         folder_task({"train": [], "test": []}, flat=True)),
    Case("imagefolder-class-without-images", [*RUN, *DATA], ["class folder has no images"],
         folder_task({"train": ["a", "b"], "test": ["a", "b"]}, empty_class="b")),
    Case("imagefolder-more-classes-than-num-classes", [*RUN, *DATA], ["num_classes"],
         folder_task({"train": ["a", "b", "c"], "test": ["a", "b", "c"]}, num_classes=2)),
    Case("imagefolder-test-classes-differ", [*RUN, *DATA], ["class folder 'x' is not among the training classes"],
         folder_task({"train": ["a", "b"], "test": ["x", "y"]})),
    Case("imagefolder-no-test-split", [*RUN, *DATA], ["data missing", "bench/test/<class>/<image>"],
         folder_task({"train": ["a", "b"]})),
    # ---- pretraining recipes
    Case("recipe-not-yaml", PRE, ["recipe.yaml is not valid YAML"], recipe("model: {size: tiny\n")),
    Case("recipe-not-text", PRE, ["recipe.yaml is not a text file"], write("recipe.yaml", b"\xff\xfe\x00\x81" * 8)),
    Case("recipe-not-a-mapping", PRE, ["must hold a mapping of sections", "got list"], recipe("- model\n- optim\n")),
    Case("recipe-section-not-a-mapping", PRE, ["config key model is a section"], recipe("model: 3\n")),
    Case("recipe-unknown-section", PRE, ["unknown config key modle", "did you mean model"], recipe({"modle": {}})),
    Case("recipe-key-typo", PRE, ["unknown config key optim.stepz", "did you mean optim.steps"],
         recipe({"optim": {"stepz": 3}})),
    Case("recipe-steps-many", PRE, ["optim.steps must be an integer >= 1", "'many'"], recipe({"optim": {"steps": "many"}})),
    Case("recipe-lr-negative", PRE, ["optim.lr must be a number > 0", "-0.001"], recipe({"optim": {"lr": -1e-3}})),
    Case("recipe-betas-scalar", PRE, ["optim.betas must be a list of two numbers"], recipe({"optim": {"betas": 0.9}})),
    Case("recipe-batch-zero", PRE, ["batch.size must be an integer >= 1"], recipe({"batch": {"size": 0}})),
    Case("recipe-unknown-size", PRE, ["model.size must be one of", "tiny", "'gigantic'"],
         recipe({"model": {"size": "gigantic"}})),
    Case("recipe-unknown-objective", PRE, ["model.objective must be one of aimv2, cap, aimv1", "'mae'"],
         recipe({"model": {"objective": "mae"}})),
    Case("recipe-encoder-key-typo", PRE, ["unknown config key model.encoder.dept", "did you mean model.encoder.depth"],
         recipe({"model": {"encoder": {"dept": 2}}})),
    Case("recipe-unknown-tokenizer", PRE, ["text.tokenizer must be one of clip", "'wordpiece'"],
         recipe({"text": {"tokenizer": "wordpiece"}})),
    Case("recipe-unknown-source-kind", PRE, ["data.sources.0.kind must be one of", "scenes", "'laion'"],
         recipe({"data": {"sources": [{"kind": "laion", "n": 10}]}})),
    Case("recipe-no-sources", PRE, ["data.sources must be a non-empty list"], recipe({"data": {"sources": []}})),
    Case("recipe-save-dtype", ["pretrain", "--config", "tiny", "run.out_dir={out}/run", "run.save_dtype=float8"],
         ["run.save_dtype must be one of float32"]),
    Case("recipe-override-into-a-value", ["pretrain", "--config", "tiny", "optim.steps.x=3"],
         ["optim.steps is a value, not a section"]),
    Case("recipe-override-not-yaml", ["pretrain", "--config", "tiny", "data.sources.0.n=["], ["the value is not YAML"]),
    Case("recipe-name-typo", ["pretrain", "--config", "tinny"], ["config not found: tinny", "did you mean tiny"]),
    Case("recipe-is-a-folder", ["pretrain", "--config", "{tmp}/recipes"], ["recipes is a folder"], mkdir("recipes")),
    # ---- sweep grids
    Case("sweep-file-is-a-list", [*SWEEP, "{tmp}/grid.yaml"], ["must be a mapping with a non-empty `grid:`"],
         write("grid.yaml", "- backbones: [aimv2-tiny]\n")),
    Case("sweep-empty-grid", [*SWEEP, "{tmp}/grid.yaml"], ["non-empty `grid:` list"], grid()),
    Case("sweep-file-is-a-folder", [*SWEEP, "{tmp}/sweeps"], ["sweeps is a folder"], mkdir("sweeps")),
    Case("sweep-group-not-a-mapping", [*SWEEP, "{tmp}/grid.yaml"], ["grid group 2 must be a mapping"], grid(OK_GROUP, 3)),
    Case("sweep-empty-backbones", [*SWEEP, "{tmp}/grid.yaml"], ["group 1 backbones is empty"],
         grid({"backbones": [], "tasks": ["digits_probe"]})),
    Case("sweep-empty-backbones-flag", [*SWEEP, "--backbones", ",", "--tasks", "digits_probe"], ["--backbones is empty; name at least one"]),
    Case("sweep-unknown-backbone-in-a-later-group", [*SWEEP, "{tmp}/grid.yaml"],  # no --dry-run: nothing may run
         ["unknown backbone 'clip-zz'"], grid(OK_GROUP, {"backbones": ["clip-zz"], "tasks": ["digits_probe"]})),
    Case("sweep-unknown-task-in-file", [*SWEEP, "{tmp}/grid.yaml"], ["unknown task 'digitz_probe'", "did you mean digits_probe"],
         grid({"backbones": ["aimv2-tiny"], "tasks": ["digitz_probe"]})),
    Case("sweep-task-file-missing", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "{tmp}/mine.yaml"],
         ["unknown task", "mine.yaml", "no such file"]),
    Case("sweep-executor-case", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--executor", "LOCAL"],
         ["unknown --executor 'LOCAL'", "local"]),
    Case("sweep-resources-zero-in-file", [*SWEEP, "{tmp}/grid.yaml"], ["gpus_per_cell must be an integer >= 1"],
         grid({**OK_GROUP, "resources": {"gpus_per_cell": 0}})),
    Case("sweep-random-init-not-boolean", [*SWEEP, "{tmp}/grid.yaml"], ["random_init must be true or false"],
         grid(OK_GROUP, options={"random_init": "no"})),
    Case("sweep-seed-negative", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds=-1"],
         ["seeds must be >= 0"]),
    Case("sweep-seed-negative-in-file", [*SWEEP, "{tmp}/grid.yaml"], ["seeds must be >= 0"], grid(OK_GROUP, seeds=[-1])),
    Case("sweep-seed-range-reversed", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds", "5-2"],
         ["seeds '5-2'", "low to high"]),
    Case("sweep-seed-range-huge", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds",
                                   "0-100000000"], ["seeds '0-100000000'", "at most 1000 seeds"]),
    Case("sweep-seed-float-in-file", [*SWEEP, "{tmp}/grid.yaml"], ["give integers"], grid(OK_GROUP, seeds=[0.5])),
    Case("sweep-out-inside-a-file", ["sweep", "--out", "{tmp}/notes.txt/records", "--backbones", "aimv2-tiny",
                                     "--tasks", "digits_probe"], ["notes.txt is a file"], write("notes.txt", "hi")),
    Case("sweep-device-mps-locally", [*SWEEP, "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--device", "mps"],
         ["mps"]),
    Case("sweep-status-not-a-sweep", ["sweep", "status", "{tmp}/records"], ["no sweep recorded under"], not_a_sweep),
    Case("sweep-status-missing-folder", ["sweep", "status", "{tmp}/nowhere"], ["nowhere is not a folder"]),
    Case("sweep-status-foreign-manifest", ["sweep", "status", "{tmp}/records"], ["x.json is not a sweep manifest"],
         foreign_manifest),
    # ---- encode
    Case("encode-no-images", ENC, ["the following arguments are required: images"], usage=True),
    Case("encode-folder-without-images", [*ENC, "{tmp}/docs"], ["no images", "docs"], write("docs/a.txt", "hi")),
    Case("encode-path-missing", [*ENC, "{tmp}/cat.png"], ["no such image file or folder", "cat.png"]),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_ends_in_one_clear_line(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, not in the checkout
    out = tmp_path / "out"
    if case.setup:
        case.setup(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{out}", str(out)) for a in case.argv]
    code, stdout, stderr = run_cli(argv, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr + stdout
    assert code == 2, f"exit {code}; stdout: {stdout[-500:]!r}; stderr: {stderr[-500:]!r}"
    assert lines and lines[-1].startswith("aimv2-eval"), stderr
    for word in case.words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    if not case.usage:
        assert len(lines) == 1, stderr
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not written, written


def test_catalogue_is_large_and_ids_unique():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- what the catalogue decided is valid
def test_names_that_differ_only_in_case_are_the_registered_ones(tmp_path, capsys):
    code, stdout, stderr = run_cli(["sweep", "--backbones", "AIMV2-TINY", "--tasks", "DIGITS_PROBE", "--out",
                                    str(tmp_path / "out"), "--dry-run"], capsys)
    assert code == 0, stderr
    assert "run   aimv2-tiny x digits_probe seed 0" in stdout and "--task digits_probe" in stdout


def test_resume_with_overwrite_is_not_a_conflict(tmp_path):
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    args = parse_run_args([*TINY, "--task", "digits_probe", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert plan_cell(args).key.startswith("aimv2-tiny/digits_probe/")


def test_images_in_any_mode_are_data_not_errors(tmp_path, capsys):
    """CMYK, palette, LA, 16-bit and RGBA files in one ImageFolder: decoded to RGB, and a run on them succeeds."""
    from aimv2_eval.data.sources import open_split

    _probe_task(tmp_path)
    for split in ("train", "test"):
        root = tmp_path / "data" / "bench" / split
        _images(root / "a", 2, "CMYK", (0, 0, 0, 0))  # no ink: white
        Image.new("LA", (16, 16), (100, 255)).save(root / "a" / "la.png")
        rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 0))  # fully transparent: composited on white
        rgba.save(root / "a" / "rgba.png")
        pal = Image.new("P", (16, 16), 1)
        pal.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
        (root / "b").mkdir(parents=True)
        pal.save(root / "b" / "p.png")
        Image.new("I;16", (16, 16), 40000).save(root / "b" / "i16.png")
        _images(root / "b", 1, "RGB", (1, 2, 3))
    split = open_split({"num_classes": 2, "imagefolder": {"dir": "bench"}}, "train", tmp_path / "data")
    pixels = {Path(p).name: split.image(i).getpixel((0, 0)) for i, p in enumerate(split.loader.paths)}
    assert all(split.image(i).mode == "RGB" for i in range(len(split)))
    assert pixels["0.tif"] == (255, 255, 255) and pixels["la.png"] == (100, 100, 100)
    assert pixels["rgba.png"] == (255, 255, 255) and pixels["p.png"] == (200, 50, 25)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["run", *TINY, *[a.replace("{tmp}", str(tmp_path)) for a in DATA],
                                    "--out", str(out)], capsys)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert "aimv2-tiny x bench_probe: top1" in stdout and len(list(out.glob("*/bench_probe/*.json"))) == 1
