"""Expected failures of files, folders and devices end in one clear line, before any work where possible.

Every case builds its bad input in tmp_path and calls the CLI in-process: exit 2 and exactly one stderr line
`aimv2-eval <command>: error: ...` naming the problem (or exit 0 and one `warning:` line per skipped record, with
the output built from the good records), no traceback, and nothing half-written.
"""

from __future__ import annotations

import csv
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from aimv2_eval.cli import main
from aimv2_eval.report import store

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aimv2-tiny", "--random-init"]
QUICK = ["--task", "digits_probe", "--limit", "8", "--epochs", "1", "--no-progress"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(capsys, command: str, kind: str = "error") -> str:
    """The single stderr line, checked for its prefix and for no traceback; returns it."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"aimv2-eval {command}: {kind}:"), lines[0]
    return lines[0]


def _no_json(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*.json"))


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (1-bit grey) with no pixel data: a decompression bomb's header,
    written in microseconds."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _png(path: Path, value: int = 128, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    Image.effect_noise((64, 64), 80).save(path)  # noise: the pixel data is most of the file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root (and some containers) write anyway: nothing to detect
        folder.chmod(0o700)
        pytest.skip("running as root: chmod 0o500 does not stop this process from writing, so there is no error")
    return folder


# ---------------------------------------------------------------- output folders and files, checked at start
def _file(tmp_path: Path) -> Path:
    f = tmp_path / "file.txt"
    f.write_text("x")
    return f


OUT_CASES = {
    # name: (argv builder, expected words, path that must not appear)
    "run --out inside a file": (
        lambda t: ["run", *TINY, *QUICK, "--out", str(_file(t) / "records")], ["file.txt is a file", "--out"]),
    "run --out is a file": (
        lambda t: ["run", *TINY, *QUICK, "--out", str(_file(t))], ["--out", "is a file, not a folder"]),
    "run --out not writable": (
        lambda t: ["run", *TINY, *QUICK, "--out", str(_not_writable(t / "ro") / "records")], ["not writable", "ro"]),
    "run --feature-cache inside a file": (
        lambda t: ["run", *TINY, *QUICK, "--out", str(t / "records"), "--feature-cache", str(_file(t) / "fc")],
        ["--feature-cache", "file.txt is a file"]),
    "encode --out is a folder": (
        lambda t: ["encode", *TINY, "--out", str(t), str(_png(t / "in" / "a.png"))],
        ["--out", "is a folder", "tokens.safetensors"]),
    "encode --out ends with a slash": (
        lambda t: ["encode", *TINY, "--out", str(t / "new") + "/", str(_png(t / "in" / "a.png"))],
        ["names a folder"]),
    "encode --out inside a file": (
        lambda t: ["encode", *TINY, "--out", str(_file(t) / "x.safetensors"), str(_png(t / "in" / "a.png"))],
        ["file.txt is a file"]),
    "encode --out is a .json": (
        lambda t: ["encode", *TINY, "--out", str(t / "x.json"), str(_png(t / "in" / "a.png"))],
        [".safetensors", "cannot be a .json"]),
    "encode --out in a folder that is not writable": (
        lambda t: ["encode", *TINY, "--out", str(_not_writable(t / "ro") / "x.safetensors"),
                   str(_png(t / "in" / "a.png"))], ["not writable"]),
    "leaderboard --out is a folder": (
        lambda t: ["leaderboard", "--records", str(_records(t, "given")), "--out", str(t)], ["--out", "is a folder"]),
    "leaderboard --out inside a file": (
        lambda t: ["leaderboard", "--records", str(_records(t, "given")), "--out", str(_file(t) / "lb.csv")],
        ["file.txt is a file"]),
    "pretrain run.out_dir is a file": (
        lambda t: ["pretrain", "--config", "tiny", f"run.out_dir={_file(t)}", "run.device=cpu"],
        ["run.out_dir", "is a file, not a folder"]),
    "pretrain run.out_dir inside a file": (
        lambda t: ["pretrain", "--config", "tiny", f"run.out_dir={_file(t) / 'run'}"], ["run.out_dir", "file.txt"]),
    "pretrain run.export_dir inside a file": (
        lambda t: ["pretrain", "--config", "tiny", f"run.out_dir={t / 'run'}", f"run.export_dir={_file(t) / 'e'}"],
        ["run.export_dir", "file.txt"]),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_bad_output_path_is_one_line_before_any_work(tmp_path, capsys, case):
    build, words = OUT_CASES[case]
    argv = build(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_line(capsys, argv[0])
    for word in words:
        assert word in line, line
    assert not (tmp_path / "records").exists() or _no_json(tmp_path / "records")
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("lb*.csv"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- devices
@pytest.fixture
def cpu_machine(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    import torch._dynamo  # noqa: F401 - its import reads these functions' originals; import it before patching

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


DEVICE_CASES = {
    "mps": ("mps", ["mps", "Apple", "cpu"]),
    "cuda": ("cuda", ["cuda", "sees none", "cpu"]),
    "cuda:3": ("cuda:3", ["cuda:3", "sees none"]),
    "cuda:3 on one GPU": ("cuda:3", ["no cuda:3", "1 GPU", "CUDA_VISIBLE_DEVICES"]),
    "tpu": ("tpu", ["unknown", "'tpu'", "cuda:N"]),
    "empty": ("", ["is empty", "auto, cpu"]),
    "meta": ("meta", ["unknown", "'meta'"]),
}


@pytest.mark.parametrize("command", ["run", "encode", "pretrain"])
@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_unusable_device_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, cpu_machine, command, case):
    device, words = DEVICE_CASES[case]
    if case == "cuda:3 on one GPU":
        _one_gpu(monkeypatch)
    out = tmp_path / "out"
    argv = {
        "run": ["run", *TINY, *QUICK, "--out", str(out), "--device", device],
        "encode": ["encode", *TINY, "--out", str(out / "t.safetensors"), "--device", device,
                   str(_png(tmp_path / "in" / "a.png"))],
        "pretrain": ["pretrain", "--config", "tiny", f"run.out_dir={out}", f"run.device={device}"],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys, command)
    flag = "run.device" if command == "pretrain" else "--device"
    for word in [flag, *words]:
        if command == "pretrain" and word == "cpu" and case == "mps":
            word = "run.device=cpu"
        assert word in line, line
    assert _no_json(out) and not list(tmp_path.rglob("*.safetensors"))
    assert not (out / "checkpoints").exists()


# ---------------------------------------------------------------- records that are not records
def _write(root: Path, backbone: str = "aimv2-large-patch14-224", task: str = "imagenet_probe", seed: int = 0,
           value: float = 86.6) -> Path:
    rec = store.new_record(backbone, task, "p1", seed, metrics={"top1": value}, main_metric="top1", overrides={})
    rec["backbone"] = {"name": backbone, "family": "x", "weights_id": "w", "resolution": 224, "params": 1}
    return store.write_record(root, rec)


def _records(tmp_path: Path, name: str = "records") -> Path:
    root = tmp_path / name
    _write(root)
    return root


BAD_RECORDS = {
    # name: (relative path, content, words of the warning)
    "lacks metrics": ("x/y/p2-seed0.json", '{"cell": {"backbone": "x", "task": "y", "protocol_hash": "p2", "seed": 0}}',
                      ["missing 'metrics'"]),
    "lacks cell fields": ("x/y/p3-seed0.json", '{"cell": {"backbone": "x"}, "metrics": {"top1": 1}}',
                          ["missing cell.task, cell.protocol_hash, cell.seed"]),
    "seed not a number": ("x/y/p4-seed0.json",
                          '{"cell": {"backbone": "x", "task": "y", "protocol_hash": "p4", "seed": "zero"},'
                          ' "metrics": {"top1": 1}}', ["cell.seed", "not an integer"]),
    "not JSON": ("x/y/p5-seed0.json", '{"cell": {"backbone": ', ["not valid JSON"]),
    "empty file": ("x/y/p6-seed0.json", "", ["empty file"]),
    "a JSON list": ("x/y/p7-seed1.json", "[1, 2]", ["not a result record", "list"]),
    "metrics not an object": ("x/y/y.json", '{"cell": {"backbone": "x", "task": "y", "protocol_hash": "p", "seed": 0},'
                              ' "metrics": [1]}', ["'metrics' is not an object"]),
}


@pytest.mark.parametrize("command", ["leaderboard", "regress"])
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_is_skipped_with_one_warning(tmp_path, capsys, command, case):
    root = _records(tmp_path)
    rel, content, words = BAD_RECORDS[case]
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(content)
    (root / "cache.json").write_text('{"not": "a record"}')  # other JSON beside records: no warning
    out = tmp_path / "lb" / "lb.csv"
    argv = {"leaderboard": ["leaderboard", "--records", str(root), "--out", str(out)],
            "regress": ["regress", "--records", str(root), "--references", str(REPO / "results" / "paper")]}[command]
    assert main(argv) == 0
    line = _one_line(capsys, command, "warning")
    assert f"skipping {root / rel}:" in line and "delete or fix it" in line, line
    for word in words:
        assert word in line, line
    if command == "leaderboard":
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["backbone"], r["task"]) for r in rows] == [("aimv2-large-patch14-224", "imagenet_probe")]


def _only_bad(t: Path) -> Path:
    (t / "records" / "a" / "b").mkdir(parents=True)
    (t / "records" / "a" / "b" / "p-seed0.json").write_text("")
    return t / "records"


def _empty(t: Path) -> Path:
    (t / "records").mkdir()
    return t / "records"


def _only_other_json(t: Path) -> Path:
    (t / "records").mkdir()
    (t / "records" / "cache.json").write_text('{"not": "a record"}')
    return t / "records"


RECORDS_FOLDER_CASES = {
    "only bad records": (_only_bad, ["none of the 1 record file(s)", "usable"], 1),
    "empty folder": (_empty, ["no result records under", "aimv2-eval run"], 0),
    "no record among other JSON": (_only_other_json, ["no result records under"], 0),
    "missing folder": (lambda t: t / "nope", ["no records folder at"], 0),
    "a file, not a folder": (_file, ["is a file, not a folder"], 0),
}


@pytest.mark.parametrize("command", ["leaderboard", "regress"])
@pytest.mark.parametrize("case", list(RECORDS_FOLDER_CASES))
def test_no_usable_records_is_one_error(tmp_path, capsys, command, case):
    build, words, warnings = RECORDS_FOLDER_CASES[case]
    root = build(tmp_path)
    out = tmp_path / "lb" / "lb.csv"
    argv = {"leaderboard": ["leaderboard", "--records", str(root), "--out", str(out)],
            "regress": ["regress", "--records", str(root), "--references", str(REPO / "results" / "paper")]}[command]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and len(lines) == warnings + 1, captured.err
    assert all(ln.startswith(f"aimv2-eval {command}: warning: skipping") for ln in lines[:-1])
    assert lines[-1].startswith(f"aimv2-eval {command}: error:") and all(w in lines[-1] for w in words), lines[-1]
    assert captured.out == "" and not out.parent.exists()


# ---------------------------------------------------------------- images
def _image_folder(tmp_path: Path, bad: str) -> list[str]:
    """A two-class ImageFolder task of 8 train and 8 test images, one train image bad; run's arguments for it."""
    for split in ("train", "test"):
        for c in range(2):
            for i in range(4):
                _png(tmp_path / "data" / "bench" / split / f"c{c}" / f"{i}.png", 40 * i + 100 * c)
    target = tmp_path / "data" / "bench" / "train" / "c1" / "2.png"
    {"truncated": _truncated_png, "not an image": lambda p: p.write_bytes(b"GIF89a but not really"),
     "bomb": lambda p: _png_header(p, 30000, 30000)}[bad](target)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "bench_probe.yaml").write_text(
        f"include: {REPO / 'tasks' / '_probe_table_a2.yaml'}\nversion: 1\n"
        "data: {num_classes: 2, imagefolder: {dir: bench}}\nprotocol: {batch_size: 4, selection: {val_fraction: 0.25}}\n"
    )
    return ["run", *TINY, "--task", "bench_probe", "--tasks-dir", str(tasks), "--data-root", str(tmp_path / "data"),
            "--limit", "8", "--epochs", "1", "--out", str(tmp_path / "records"), "--no-progress"]


RUN_IMAGE_CASES = {
    # name: (bad file, extra flags, expected words)
    "truncated, main process": ("truncated", ["--workers", "0"], ["cannot read image", "2.png"]),
    "truncated, 2 workers building the feature cache": (
        "truncated", ["--workers", "2", "--feature-cache", "{tmp}/fc"], ["cannot read image", "2.png"]),
    "not an image, 2 workers": ("not an image", ["--workers", "2", "--no-feature-cache"],
                                ["cannot read image", "2.png", "UnidentifiedImageError"]),
    "decompression bomb, 2 workers": ("bomb", ["--workers", "2", "--no-feature-cache"],
                                      ["2.png", "too large to decode safely", "MAX_IMAGE_PIXELS"]),
}


@pytest.mark.parametrize("case", list(RUN_IMAGE_CASES))
def test_bad_image_in_a_probe_task_is_one_line(tmp_path, capsys, case):
    bad, flags, words = RUN_IMAGE_CASES[case]
    argv = _image_folder(tmp_path, bad) + [f.format(tmp=tmp_path) for f in flags]
    assert main(argv) == 2
    line = _one_line(capsys, "run")
    for word in words:
        assert word in line, line
    assert _no_json(tmp_path / "records")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.lock"))  # no half cache, no lock


ENCODE_IMAGE_CASES = {
    "decompression bomb": (lambda p: _png_header(p / "bomb.png", 30000, 30000), ["bomb.png", "too large"]),
    "over the limit, under twice it (PIL only warns)": (
        lambda p: _png_header(p / "big.png", 10000, 10000), ["big.png", "too large", "MAX_IMAGE_PIXELS"]),
    "truncated": (lambda p: _truncated_png(p / "cut.png"), ["cannot read image", "cut.png"]),
    "not an image with .jpg": (lambda p: (p / "notes.jpg").write_text("hello"), ["cannot read image", "notes.jpg"]),
    "empty .png": (lambda p: (p / "empty.png").write_bytes(b""), ["cannot read image", "empty.png"]),
}


@pytest.mark.parametrize("case", list(ENCODE_IMAGE_CASES))
def test_bad_image_for_encode_is_one_line(tmp_path, capsys, recwarn, case):
    make, words = ENCODE_IMAGE_CASES[case]
    folder = tmp_path / "images"
    _png(folder / "a.png")
    make(folder)
    out = tmp_path / "tokens.safetensors"
    assert main(["encode", *TINY, "--out", str(out), str(folder)]) == 2
    line = _one_line(capsys, "encode")
    for word in words:
        assert word in line, line
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_image_error_from_a_worker_keeps_its_one_line():
    """What torch does with a worker's exception: `type(exc)(the worker's formatted traceback)`."""
    from torch._utils import ExceptionWrapper

    from aimv2_eval.data.images import ImageError, open_image

    try:
        open_image(b"not an image", "row 7")
    except ImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ImageError) as err:
        wrapped.reraise()
    message = str(err.value)
    assert message.startswith("cannot read image row 7 (UnidentifiedImageError") and "remove or replace" in message
    assert "\n" not in message and "Traceback" not in message and "worker" not in message
