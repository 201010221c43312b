"""Task files, the plugin registry and the labelled-image sources."""

from __future__ import annotations

import csv
import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aimv2_eval.data import sources
from aimv2_eval.data.sources import limit, open_split, read_idx, stratified_holdout
from aimv2_eval.errors import UserError
from aimv2_eval.plugins import get_plugin, plugin_rows
from aimv2_eval.tasks import load_task, parse_task, task_registry, task_rows

TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables"
if not TABLES.is_dir():
    TABLES = Path("/work/shared/paper/tables")
BENCHMARKS = ["imagenet_probe", "inat18_probe", "cifar10_probe", "cifar100_probe", "food101_probe", "dtd_probe",
              "pets_probe", "cars_probe", "camelyon17_probe", "pcam_probe", "rxrx1_probe", "eurosat_probe",
              "fmow_probe", "infograph_probe"]  # Table 3 column order
EMBEDDED = ["digits_probe", "scenes_probe", "foolbox_imagenet_probe", "foolbox_cifar10_probe", "fashion_mnist_probe"]


def numbers(text: str) -> list[float]:
    return [float(x) for x in text.strip("[]").split(",")]


def table(name: str) -> list[dict]:
    if not (TABLES / name).is_file():
        pytest.skip(f"the paper's tables are not at {TABLES} (the shared/ folder beside the checkout)")
    with open(TABLES / name) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- task files
def test_every_probe_task_file_parses():
    assert set(BENCHMARKS + EMBEDDED) <= set(task_registry().list())
    for name in BENCHMARKS + EMBEDDED:
        task = load_task(name)
        assert task.plugin == "probe" and task.version >= 1 and task.metric["main"] == "top1"
    rows = task_rows()
    assert len(rows) == len(task_registry().list()) and {r["name"] for r in rows} >= set(BENCHMARKS + EMBEDDED)


def test_benchmarks_match_table_b1_and_table3():
    b1 = {}
    for row in table("tableB1_recognition_datasets.csv"):
        b1.setdefault(row["dataset"], {})[row["field"]] = int(row["value"])
    t3 = [r["benchmark"] for r in table("table3_frozen_trunk_probe.csv")]
    columns = list(dict.fromkeys(t3))
    for name, column in zip(BENCHMARKS, columns):
        task = load_task(name)
        assert not task.embedded
        paper = task.paper
        assert paper["benchmark"] == column and paper["tables"] == ["3", "B2"]  # same order as Table 3
        sizes = b1[paper["table_b1"]["dataset"]]
        assert task.num_classes == sizes["classes"] == paper["table_b1"]["classes"], name
        assert (paper["table_b1"]["train_images"], paper["table_b1"]["test_images"]) == (
            sizes["train_images"], sizes["test_images"])
        assert "imagefolder" in task.data  # every benchmark has a local route; most also an HF id
    assert sum("hf" in load_task(n).data for n in BENCHMARKS) >= 11


def test_protocol_is_table_a2():
    a2 = {(r["config"], r["applies_to"]): r["value"] for r in table("tableA2_probe_hparams.csv")}
    for name in BENCHMARKS:
        p = load_task(name).protocol
        col = "IN-1k" if name == "imagenet_probe" else "Others"
        assert [float(x) for x in p["lr_grid"]] == numbers(a2[("Peak learning rate grid", "all")])
        assert [float(x) for x in p["wd_grid"]] == numbers(a2[("Weight decay", "all")])
        assert float(p["min_lr"]) == float(a2[("Minimum learning rate", "all")])
        assert p["betas"] == [0.9, 0.999] and a2[("Optimizer Momentum", "all")] == "beta1 = 0.9, beta2 = 0.999"
        assert p["batch_size"] == int(a2[("Batch size", col)])
        assert p["warmup_epochs"] == int(a2[("Warmup epochs", col)])
        assert p["epochs"] == int(a2[("Epochs", "all")]) and p["grad_clip"] == float(a2[("Gradient clipping", "all")])
        aug = p["augment"]
        assert aug["scale"] == numbers(a2[("RandomResizedCrop scale", "all")])
        assert aug["interpolation"] == a2[("RandomResizedCrop interpolation", "all")].lower()
        assert aug["color_jitter"] == float(a2[("Color Jitter", "all")])
        assert aug["auto_augment"] == a2[("AutoAugment", "all")] and aug["hflip"] == 0.5


def test_embedded_tasks_say_they_deviate_on_purpose():
    for name in EMBEDDED:
        task = load_task(name)
        assert task.embedded and "source" in task.data
        assert task.protocol["epochs"] < 100  # the deviation from Table A2 ...
        text = Path(task.path).read_text()
        assert "deviation from Table A2" in text  # ... is stated next to it


def test_unknown_task_suggests_closest():
    with pytest.raises(UserError, match="did you mean imagenet_probe"):
        load_task("imagenet_prob")


def test_tasks_dir_adds_and_overrides(tmp_path):
    (tmp_path / "my_probe.yaml").write_text(yaml.safe_dump({
        "include": str(Path(load_task("digits_probe").path)), "protocol": {"epochs": 1}}))
    (tmp_path / "digits_probe.yaml").write_text(yaml.safe_dump({
        "include": str(Path(load_task("digits_probe").path)), "version": 2}))
    mine = load_task("my_probe", [tmp_path])
    assert mine.protocol["epochs"] == 1 and mine.protocol["batch_size"] == 16  # merged with its include
    assert load_task("digits_probe", [tmp_path]).version == 2  # a later folder wins
    assert [r["name"] for r in task_rows("my_*", [tmp_path])] == ["my_probe"]
    with pytest.raises(UserError, match="not a folder"):
        load_task("digits_probe", [tmp_path / "missing"])


@pytest.mark.parametrize(
    "body, message",
    [
        ({"version": 1, "plugin": "probe", "data": {}, "metric": {"main": "top1"}}, "missing field"),
        ({"version": 1, "plugin": "prob", "data": {}, "metric": {"main": "top1"}, "protocol": {}}, "did you mean probe"),
        ({"version": 1, "plugin": "probe", "data": {}, "metric": {}, "protocol": {}}, "metric needs a `main`"),
        ({"version": 1, "plugin": "probe", "data": {}, "metric": {"main": "top1"}, "protocol": {}, "epoch": 3},
         "unknown field"),
        ({"name": "other", "version": 1}, "differs from the file name"),
        ({"include": "nowhere.yaml"}, "does not exist"),
    ],
)
def test_bad_task_files_fail_with_one_line(tmp_path, body, message):
    path = tmp_path / "bad_task.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(UserError, match=message) as info:
        parse_task(path)
    assert "\n" not in str(info.value)


def test_task_and_plugin_rows():
    rows = {r["name"]: r for r in task_rows("*probe")}
    assert rows["imagenet_probe"]["classes"] == 1000 and rows["imagenet_probe"]["paper"] == "Table 3/B2 IN-1k"
    assert rows["digits_probe"]["embedded"] and rows["digits_probe"]["data"] == "sklearn_digits"
    assert "probe" in [r["name"] for r in plugin_rows()] and plugin_rows("attentive*")[0]["name"] == "probe"
    assert get_plugin("attentive_probe").name == "probe"
    with pytest.raises(UserError, match="unknown plugin"):
        get_plugin("linear")


def test_plugins_are_discovered_by_module_name(tmp_path):
    from aimv2_eval.plugins import PluginSpec, discover
    from aimv2_eval.registry import Registry

    (tmp_path / "foo.py").write_text('"""Foo: a plugin\nin two lines.\n\nMore."""\nPLUGIN = None\n')
    (tmp_path / "bar").mkdir()
    (tmp_path / "bar" / "__init__.py").write_text('"""Bar plugin."""\n')
    (tmp_path / "bar" / "plugin.py").write_text("PLUGIN = None\n")
    (tmp_path / "base.py").write_text("")
    (tmp_path / "registry.py").write_text("")  # the machinery of the plugins folder, not plugins
    reg: Registry[PluginSpec] = Registry("plugin")
    discover(tmp_path, "pkg", reg)
    assert reg.list() == ["bar", "foo"]
    assert (reg.get("foo").module, reg.get("foo").summary) == ("pkg.foo", "Foo: a plugin in two lines.")
    assert (reg.get("bar").module, reg.get("bar").summary) == ("pkg.bar.plugin", "Bar plugin.")


@pytest.mark.parametrize("first", ["aimv2_eval.tasks", "aimv2_eval.plugins", "aimv2_eval.plugins.registry"])
def test_tasks_and_plugins_import_in_any_order(first):
    code = f"import {first}; from aimv2_eval.tasks import parse_task; from aimv2_eval.plugins import PLUGINS; print(*PLUGINS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names = out.stdout.split()
    assert {"probe", "lit"} <= set(names) and not {"base", "registry"} & set(names)


def test_broken_task_file_is_listed_not_fatal(tmp_path):
    (tmp_path / "broken_task.yaml").write_text("version: 1\nplugin: nonexistent\n")
    rows = {r["name"]: r for r in task_rows(None, [tmp_path])}
    assert rows["broken_task"]["description"].startswith("invalid:") and rows["digits_probe"]["plugin"] == "probe"


# ---------------------------------------------------------------- sources
def test_digits_split_is_stratified_and_disjoint():
    data = load_task("digits_probe").data
    train, test = open_split(data, "train"), open_split(data, "test")
    assert len(train) + len(test) == 1797 and set(train.indices).isdisjoint(test.indices)
    assert np.bincount(test.labels).min() >= 50  # 30% of every class
    img = train.image(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_holdout_and_limit_are_deterministic():
    labels = np.repeat(np.arange(5), [1, 2, 10, 10, 40])
    keep, held = stratified_holdout(labels, 0.2, seed=0)
    assert np.array_equal(held, stratified_holdout(labels, 0.2, seed=0)[1])
    assert 0 not in labels[held]  # a class with one sample stays in training
    assert np.bincount(labels[held], minlength=5).tolist() == [0, 1, 2, 2, 8]
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(labels)))
    data = load_task("digits_probe").data
    a, b = limit(open_split(data, "train"), 50), limit(open_split(data, "train"), 50)
    assert a.identity == b.identity and len(a) == 50 and len(np.unique(a.labels)) == 10


def test_foolbox_labels_come_from_file_names():
    task = load_task("foolbox_imagenet_probe")
    split = open_split(task.data, "train")
    assert len(split) == 20 and split.labels[0] == 243  # imagenet_00_243.jpg
    assert split.image(0).mode == "RGB"
    c10 = load_task("foolbox_cifar10_probe").data
    train, test = open_split(c10, "train"), open_split(c10, "test")
    assert len(train) + len(test) == 20 and set(test.labels) <= set(train.labels)


def test_scenes_source_labels_are_the_largest_shape():
    task = load_task("scenes_probe")
    split = open_split(task.data, "test")
    from aimv2_eval.data.scenes import SceneDataset

    scenes = SceneDataset(n=5, seed=1, image_size=112)
    assert split.labels[:5].tolist() == [scenes[i].label for i in range(5)]
    assert split.image(0).size == (112, 112) and split.num_classes == 6


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader_and_missing_package(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = {"source": "fashion_mnist_idx", "num_classes": 10, "fashion_mnist_idx": {"dir": str(tmp_path)}}
    test = open_split(data, "test")
    assert len(test) == 6 and test.labels.tolist() == [0, 1, 2, 3, 4, 5] and test.image(0).mode == "RGB"
    assert read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (12, 28, 28)
    data["fashion_mnist_idx"]["dir"] = str(tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        open_split(data, "train")


def test_real_fashion_mnist_when_installed():
    if not (sources.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    test = open_split(load_task("fashion_mnist_probe").data, "test")
    assert len(test) == 10_000 and np.bincount(test.labels).tolist() == [1000] * 10


def make_folder(root: Path, split: str, modes: dict[str, str]) -> None:
    for i, (cls, mode) in enumerate(modes.items()):
        d = root / "bench" / split / cls
        d.mkdir(parents=True)
        Image.new(mode, (10, 12), color=i * 40).save(d / f"{i}.png")


def test_imagefolder_converts_every_mode_to_rgb(tmp_path):
    make_folder(tmp_path, "train", {"a": "L", "b": "RGBA", "c": "P", "d": "I;16"})
    make_folder(tmp_path, "val", {"a": "RGB", "c": "LA"})
    data = {"num_classes": 4, "imagefolder": {"dir": "bench", "splits": {"train": "train", "test": "val"}},
            "hf": {"id": "nobody/nothing"}}
    train = open_split(data, "train", tmp_path)
    test = open_split(data, "test", tmp_path, classes=train.class_names)
    assert train.class_names == ["a", "b", "c", "d"] and test.labels.tolist() == [0, 2]  # train's class ids
    assert {train.image(i).mode for i in range(4)} == {"RGB"} and test.image(1).mode == "RGB"
    (tmp_path / "bench" / "train" / "a" / "broken.png").write_bytes(b"not an image")
    broken = open_split(data, "train", tmp_path)
    with pytest.raises(UserError, match="cannot read image"):
        broken.image(1)


def test_imagefolder_identity_changes_when_an_image_is_replaced(tmp_path):
    """The identity keys the feature cache: same folder and count but other pixels must not reuse old tokens."""
    import os

    from PIL import Image

    make_folder(tmp_path, "train", {"a": "RGB", "b": "RGB"})
    data = {"num_classes": 2, "imagefolder": {"dir": "bench"}}
    before = open_split(data, "train", tmp_path).identity
    assert open_split(data, "train", tmp_path).identity == before  # stable when nothing changed
    target = next((tmp_path / "bench" / "train" / "a").iterdir())
    Image.new("RGB", (9, 9), (1, 2, 3)).save(target)  # same name, same count, new content
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even within one mtime tick
    assert open_split(data, "train", tmp_path).identity != before


def test_empty_class_folder_is_refused_with_its_name(tmp_path):
    make_folder(tmp_path, "train", {"a": "RGB", "b": "RGB"})
    (tmp_path / "bench" / "train" / "c").mkdir()
    with pytest.raises(UserError, match="c: class folder has no images"):
        open_split({"num_classes": 3, "imagefolder": {"dir": "bench"}}, "train", tmp_path)


def test_missing_benchmark_data_names_both_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = load_task("cifar10_probe").data
    with pytest.raises(UserError) as info:
        open_split(data, "train", tmp_path)
    msg = str(info.value)
    assert "uoft-cs/cifar10" in msg and str(tmp_path / "cifar10" / "train") in msg and "\n" not in msg
    with pytest.raises(UserError, match="put the images at"):
        open_split(load_task("fmow_probe").data, "train", tmp_path)  # ImageFolder is its only route


def test_hf_source_through_datasets(tmp_path):
    """The real `datasets.load_dataset` path, on a local image folder (its `imagefolder` builder)."""
    make_folder(tmp_path, "train", {"cat": "RGB", "dog": "L"})
    cfg = {"num_classes": 2, "hf": {"id": "imagefolder", "image_key": "image", "label_key": "label",
                                    "load_kwargs": {"data_dir": str(tmp_path / "bench")}}}
    split = open_split(cfg, "train", tmp_path / "no-local-copy")
    assert split.identity.startswith("hf:imagefolder") and split.class_names == ["cat", "dog"]
    assert sorted(split.labels.tolist()) == [0, 1] and split.image(1).mode == "RGB"
    with pytest.raises(UserError, match="labels span"):
        open_split({**cfg, "num_classes": 1}, "train", tmp_path / "no-local-copy")


def test_builtin_tasks_ship_inside_the_package():
    """tasks/ reaches a non-editable install as aimv2_eval/builtin_tasks: the link points at it and the package-data
    globs of pyproject.toml take every task file (a wheel copies what they match)."""
    import tomllib

    import aimv2_eval
    from aimv2_eval.tasks import BUILTIN_DIR

    repo = Path(__file__).resolve().parents[1]
    link = Path(aimv2_eval.__file__).parent / "builtin_tasks"
    assert link.is_symlink() and link.resolve() == BUILTIN_DIR == repo / "tasks"
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aimv2_eval"]
    shipped = {p for g in globs if g.startswith("builtin_tasks/") for p in link.glob(g.removeprefix("builtin_tasks/"))}
    assert {p.relative_to(link) for p in shipped} == {p.relative_to(repo / "tasks") for p in (repo / "tasks").rglob("*.y*ml")}
