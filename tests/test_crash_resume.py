"""kill -9 at the worst moments, then rerun: identical metrics and nothing left behind; two runs of one cell never
both train.

Each crash is a real SIGKILL of a real `aimv2-eval run` process, placed by a fail point (aimv2_eval/faults.py):
half a feature cache written, a checkpoint written but not yet renamed, a record written but not yet renamed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aimv2_eval.backbones import get_spec
from aimv2_eval.io import owner_tag, remove_stale_temps
from aimv2_eval.locks import cell_lock, lock_path

TINY = ["--backbone", "aimv2-tiny"] + ([] if get_spec("aimv2-tiny").weights_present() else ["--random-init"])
# 80 samples: 60 train+val (batches of 16 for the cache: several cache batches), 20 test; 3 epochs.
CELL = ["--task", "digits_probe", "--no-progress", "--limit", "80", "--epochs", "3", "--batch-size", "16"]


def run(tmp_path: Path, name: str, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("AIMV2_EVAL_KILL_AT", None)
    if kill_at:
        env["AIMV2_EVAL_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "aimv2_eval.cli", "run", *TINY, *CELL, "--out", str(tmp_path / name / "records"),
           "--feature-cache", str(tmp_path / name / "cache"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def record(tmp_path: Path, name: str) -> dict:
    [path] = [p for p in (tmp_path / name / "records").rglob("*.json") if not p.name.startswith(".")]
    return json.loads(path.read_text())


def leftovers(folder: Path) -> list[Path]:
    """Temporary files and folders, locks, checkpoints and partial outputs: what a finished cell must not leave."""
    return [p for p in folder.rglob("*")
            if p.name.endswith((".tmp", ".lock", ".ckpt", ".partial")) or ".tmp" in p.parent.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference")
    proc = run(tmp, "ref")
    assert proc.returncode == 0, proc.stderr
    return record(tmp, "ref")


@pytest.mark.parametrize("kill_at, resume, left", [
    # half of the feature cache written: the rerun rebuilds it (a cache is complete or absent)
    ("feature-cache:2", False, "cache"),
    # the second epoch's checkpoint written but not yet renamed: --resume continues from the first
    ("replace.ckpt:2", True, "records"),
    # the record written but not yet renamed: --resume skips training (the last checkpoint is complete)
    ("replace.json", True, "records"),
])
def test_kill_9_then_rerun_gives_identical_metrics_and_no_leftovers(tmp_path, reference, kill_at, resume, left):
    cut = run(tmp_path, "cut", kill_at=kill_at)
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    folder = tmp_path / "cut"
    assert not [p for p in (folder / "records").rglob("*.json") if not p.name.startswith(".")]  # no record
    assert leftovers(folder / left)  # the kill left what a killed writer leaves: the rerun must clean it

    again = run(tmp_path, "cut", *(["--resume"] if resume else []))
    assert again.returncode == 0, again.stderr
    rec = record(tmp_path, "cut")
    assert rec["metrics"] == reference["metrics"]
    assert rec["selection"]["candidates"] == reference["selection"]["candidates"]
    assert not leftovers(folder), leftovers(folder)


def test_a_running_cell_is_not_run_twice(tmp_path):
    """A live process holds the cell: the second run says so in one line and writes nothing."""
    ref = run(tmp_path, "first", "--limit", "40", "--epochs", "1")
    assert ref.returncode == 0, ref.stderr
    [path] = [p for p in (tmp_path / "first" / "records").rglob("*.json") if not p.name.startswith(".")]
    path.unlink()  # the same cell, not yet done
    with cell_lock(path, "cell x"):  # held by this (live) test process
        second = run(tmp_path, "first", "--limit", "40", "--epochs", "1")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is already running (pid" in lines[0] and str(os.getpid()) in lines[0]
    assert str(lock_path(path)) in lines[0]  # what to delete if that run is gone
    assert not path.exists() and not lock_path(path).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    record_path = tmp_path / "cell.json"
    lock_path(record_path).write_text(json.dumps({"owner": f"{pid}-{owner_tag().split('-')[1]}", "pid": pid}))
    with cell_lock(record_path, "cell"):
        assert json.loads(lock_path(record_path).read_text())["pid"] == os.getpid()
    assert not lock_path(record_path).exists()


def test_stale_temporary_files_go_and_live_ones_stay(tmp_path):
    target = tmp_path / "x.json"
    host = owner_tag().split("-")[1]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.json.{int(dead.stdout)}-{host}.abc.tmp"
    live = tmp_path / f".x.json.{owner_tag()}.abc.tmp"  # this process: still writing
    other_host = tmp_path / f".x.json.{int(dead.stdout)}-{'0000' if host != '0000' else '0001'}.abc.tmp"
    other_target = tmp_path / ".x.json.gz.123-abcd.tmp"
    for p in (stale, live, other_host, other_target):
        p.write_text("")
    assert remove_stale_temps(target) == [stale]
    assert live.exists() and other_host.exists() and other_target.exists()
