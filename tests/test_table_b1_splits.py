"""Split sizes of the probe benchmarks against Table B1 (issue #17): the WILDS tasks read the splits the paper counted,
every benchmark declares Table B1's sizes in `data.expected_sizes`, a split of another size gets one warning line at
load, and the declaration stays out of the protocol hash."""

from __future__ import annotations

import copy
import csv
import shlex
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image

from aimv2_eval.data.sources import open_split
from aimv2_eval.errors import UserError
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.tasks import TaskSpec, load_task, parse_task, task_registry

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO.parent / "shared" / "paper" / "tables"
if not TABLES.is_dir():
    TABLES = Path("/work/shared/paper/tables")
PINNED = REPO / "results" / "embedded" / "references.csv"


def table_b1() -> dict[str, dict[str, int]]:
    path = TABLES / "tableB1_recognition_datasets.csv"
    if not path.is_file():
        pytest.skip(f"the paper's tables are not at {TABLES} (the shared/ folder beside the checkout)")
    rows: dict[str, dict[str, int]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["dataset"], {})[row["field"]] = int(row["value"])
    return rows


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def make_imagefolder(root: Path, split: str, per_class: dict[str, int]) -> None:
    for c, (name, n) in enumerate(per_class.items()):
        folder = root / "bench" / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(folder / f"{i}.png")


# ---------------------------------------------------------------- the task files against the CSV
def test_every_probe_task_with_a_table_b1_row_declares_its_sizes():
    b1 = table_b1()
    covered = set()
    for name in task_registry().list():
        task = load_task(name)
        if task.plugin != "probe" or not task.paper:
            continue  # embedded probes (paper: null) have no row in Table B1
        row = task.paper["table_b1"]["dataset"]
        assert row in b1, f"{name}: paper.table_b1.dataset {row!r} is not a row of Table B1"
        expected = {"train": b1[row]["train_images"], "test": b1[row]["test_images"]}
        assert task.data.get("expected_sizes") == expected, name
        covered.add(row)
    assert covered == set(b1)  # every dataset of Table B1 has its probe task


@pytest.mark.parametrize("name", ["camelyon17_probe", "fmow_probe", "rxrx1_probe"])
def test_wilds_tasks_test_on_the_ood_validation_split(name):
    """Table B1's test sizes of the WILDS datasets are those of WILDS' OOD validation split, named `val`."""
    folder = load_task(name).data["imagefolder"]["splits"]
    assert folder == {"train": "train", "test": "val"}


# ---------------------------------------------------------------- the check at load
def test_a_split_of_another_size_warns_once_with_task_split_and_both_counts(tmp_path, capsys):
    make_imagefolder(tmp_path, "train", {"a": 2, "b": 2})
    make_imagefolder(tmp_path, "val", {"a": 1, "b": 1})
    data = {"num_classes": 2, "expected_sizes": {"train": 4, "test": 3},
            "imagefolder": {"dir": "bench", "splits": {"train": "train", "test": "val"}}}
    train = open_split(data, "train", tmp_path, task="tiny_probe")
    assert len(train) == 4 and warnings_in(capsys.readouterr().err) == []  # the declared size: silent
    test = open_split(data, "test", tmp_path, classes=train.class_names, task="tiny_probe")
    assert len(test) == 2  # a warning, not an error: the split still loads
    (line,) = warnings_in(capsys.readouterr().err)
    assert "task tiny_probe" in line and "test split has 2 images" in line and "expected 3" in line
    assert "Table B1" in line
    open_split({**data, "expected_sizes": {"train": 4}}, "test", tmp_path)  # no size declared for test: silent
    assert warnings_in(capsys.readouterr().err) == []


def _tiny_task(root: Path, expected: dict[str, int]) -> TaskSpec:
    make_imagefolder(root, "train", {"a": 4, "b": 4})
    make_imagefolder(root, "val", {"a": 2, "b": 2})
    data = {"num_classes": 2, "expected_sizes": expected,
            "imagefolder": {"dir": "bench", "splits": {"train": "train", "test": "val"}}}
    return TaskSpec(name="tiny_probe", version=1, plugin="probe", data=data, metric={"main": "top1"}, protocol={})


def test_limit_and_the_validation_holdout_do_not_warn(tmp_path, capsys):
    """The probe checks the whole split, before `--limit` and the held-out validation fraction cut it."""
    task = _tiny_task(tmp_path, {"train": 8, "test": 4})
    protocol = {"limit": 3, "selection": {"val_fraction": 0.5, "split_seed": 0}}
    data = get_plugin("probe").load_data(task, protocol, RunOptions(data_root=tmp_path))
    assert len(data.train) == 3 and len(data.test) == 3 and len(data.val_pos) > 0  # both cuts happened ...
    assert warnings_in(capsys.readouterr().err) == []  # ... and nothing warned


def test_the_probe_names_its_task_in_the_warning(tmp_path, capsys):
    task = _tiny_task(tmp_path, {"train": 8, "test": 34904})
    protocol = {"limit": None, "selection": {"val_fraction": 0.0, "split_seed": 0}}
    get_plugin("probe").load_data(task, protocol, RunOptions(data_root=tmp_path))
    (line,) = warnings_in(capsys.readouterr().err)
    assert "task tiny_probe: the test split has 4 images, expected 34904" in line


def test_camelyon17_hf_route_keeps_hospital_1_of_validation_for_test_only(tmp_path, capsys):
    """The task's own HF block, read from parquet files laid out as the hub copy is (`train`, `validation` with a
    `center` column): train keeps every row, test only WILDS' OOD validation hospital."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2),
                                  "center": datasets.Value("int64")})
    files = {}
    for split, centers in {"train": [0, 3, 4, 0], "validation": [0, 1, 3, 1, 1]}.items():
        rows = {"image": [Image.new("RGB", (4, 4), (c * 50, 0, 0)) for c in centers],
                "label": [i % 2 for i in range(len(centers))], "center": centers}
        files[split] = str(tmp_path / f"{split}.parquet")
        datasets.Dataset.from_dict(rows, features=features).to_parquet(files[split])
    data = copy.deepcopy(load_task("camelyon17_probe").data)
    del data["imagefolder"]
    data["hf"].update(id="parquet", load_kwargs={"data_files": files, "cache_dir": str(tmp_path / "cache")})
    train = open_split(data, "train", tmp_path, task="camelyon17_probe")
    test = open_split(data, "test", tmp_path, task="camelyon17_probe")
    assert len(train) == 4 and len(test) == 3  # all of train; the three hospital-1 rows of validation
    lines = warnings_in(capsys.readouterr().err)  # the tiny copy is not Table B1's
    assert [("train split has 4" in w and "expected 302436" in w, "test split has 3" in w and "expected 34904" in w)
            for w in lines] == [(True, False), (False, True)]


# ---------------------------------------------------------------- validation and the protocol hash
def _task_file(folder: Path, **data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sized_probe.yaml"
    body = {"include": str(REPO / "tasks" / "digits_probe.yaml")}
    if data:
        body["data"] = data
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("sizes, words", [
    ({"val": 10}, ["data.expected_sizes has an unknown key 'val'", "train, test"]),
    ({"test": 0}, ["data.expected_sizes.test must be an integer >= 1", "got 0"]),
    ({"train": "50k"}, ["data.expected_sizes.train must be an integer >= 1", "'50k'"]),
    ([50000, 10000], ["data.expected_sizes must be a mapping"]),
])
def test_bad_expected_sizes_fail_in_one_line(tmp_path, sizes, words):
    with pytest.raises(UserError) as info:
        parse_task(_task_file(tmp_path, expected_sizes=sizes))
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_expected_sizes_are_not_part_of_the_protocol_hash(tmp_path):
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    def phash(path: Path) -> str:
        return plan_cell(parse_run_args(["--backbone", "aimv2-tiny", "--task", str(path)])).protocol_hash

    plain = phash(_task_file(tmp_path / "plain"))
    assert phash(_task_file(tmp_path / "sized", expected_sizes={"train": 1258, "test": 539})) == plain
    assert phash(_task_file(tmp_path / "other", num_classes=11)) != plain  # the rest of the data block counts


def test_pinned_embedded_hashes_are_unchanged():
    if not PINNED.is_file():
        pytest.skip(f"{PINNED} is not pinned yet")
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    with PINNED.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        args = ["--backbone", row["backbone"], "--task", row["task"], *shlex.split(row["setting"])]
        assert plan_cell(parse_run_args(args)).protocol_hash == row["protocol_hash"], row["task"]
