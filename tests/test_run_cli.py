"""`aimv2-eval run`: end to end on an embedded task, records, skipping, resuming, and clear failures."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aimv2_eval.backbones import get_spec
from aimv2_eval.cli import main
from aimv2_eval.plugins import probe

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "aimv2-tiny"] + ([] if get_spec("aimv2-tiny").weights_present() else ["--random-init"])


pytestmark = pytest.mark.usefixtures("one_thread")


def records(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if not p.name.startswith("."))


def test_end_to_end_embedded_task_with_tiny_aimv2(tmp_path, capsys):
    """The README's main command: the embedded defaults of digits_probe, unchanged, in a piped log."""
    assert main(["run", *TINY, "--task", "digits_probe", "--out", str(tmp_path)]) == 0
    [path] = records(tmp_path)
    rec = json.loads(path.read_text())
    assert rec["cell"]["task"] == "digits_probe" and rec["cell"]["backbone"].startswith("aimv2-tiny")
    assert path.name == f"{rec['cell']['protocol_hash']}-seed0.json"
    assert rec["main_metric"] == "top1" and 0 <= rec["metrics"]["top1"] <= 100
    assert rec["task_config"]["resolved_protocol"]["image_size"] == 112  # the tiny AIMv2's native size
    assert rec["task_config"]["protocol"]["lr_grid"] and rec["task_config"]["data"]["source"] == "sklearn_digits"
    assert rec["backbone"]["name"] == "aimv2-tiny" and rec["backbone"]["weights_id"]
    assert torch.__version__.startswith(rec["environment"]["versions"]["torch"]) and "git_revision" in rec["environment"]
    assert rec["wall_time_s"] > 0 and rec["peak_memory_mb"]["host_rss_mb"] > 0
    assert rec["throughput"]["train_images_per_s"] > 0 and rec["throughput"]["eval_test_images_per_s"] > 0
    assert len(rec["selection"]["candidates"]) == 14  # Table A2: 7 learning rates x 2 weight decays
    assert rec["selection"]["split"] == "val"
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.ckpt"))  # atomic, cleaned up
    assert rec["backbone"]["trainable"] is False and rec["backbone"]["trainable_params"] == 0  # frozen
    assert rec["models"] == [{"role": "backbone", "name": "aimv2-tiny", "weights_id": rec["backbone"]["weights_id"],
                              "weights_source": rec["backbone"]["weights_source"]}]
    assert rec["cell"]["models"] == {"backbone": "aimv2-tiny"}
    # the chosen head's test predictions, in the cell's output folder, referenced from the record
    preds = (tmp_path / rec["artifacts"]["test_predictions"]).read_text().splitlines()
    assert preds[0].startswith("index,label,prediction") and len(preds) == 1 + rec["details"]["sizes"]["test"]
    correct = sum(int(line.split(",")[1]) == int(line.split(",")[2]) for line in preds[1:])
    assert 100 * correct / (len(preds) - 1) == pytest.approx(rec["metrics"]["top1"])
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    out, err = capsys.readouterr()
    chosen = rec["selection"]["chosen"]
    assert f"(lr={chosen['lr']} wd={chosen['wd']}, chosen on val)" in out
    # piped (capsys is not a terminal): no bar, one line per epoch and one per cached split, nothing per step
    epochs = rec["task_config"]["resolved_protocol"]["epochs"]
    lines = err.splitlines()
    assert [ln for ln in lines if ": epoch " in ln] == [ln for ln in lines if ln.startswith("digits_probe: training")]
    assert len([ln for ln in lines if ": epoch " in ln]) == epochs
    assert len(lines) <= epochs + 2 and "\r" not in err, err


def small(out: Path, *extra: str) -> list[str]:
    return ["run", *TINY, "--task", "digits_probe", "--out", str(out), "--no-progress", "--limit", "60",
            "--epochs", "3", "--batch-size", "16", *extra]


def test_existing_cell_is_skipped_unless_overwrite(tmp_path, capsys):
    out, cache = tmp_path / "records", ["--feature-cache", str(tmp_path / "cache")]
    assert main(small(out, *cache)) == 0
    [path] = records(out)
    before = path.stat().st_mtime_ns
    assert main(small(out, *cache)) == 0
    assert "skip" in capsys.readouterr().out and path.stat().st_mtime_ns == before
    assert main(small(out, *cache, "--overwrite")) == 0
    assert path.stat().st_mtime_ns != before
    assert main(small(out, *cache, "--seed", "1")) == 0
    assert len(records(out)) == 2  # another seed is another cell


def test_resume_after_interruption_gives_the_same_metrics(tmp_path, monkeypatch, capsys):
    assert main(small(tmp_path / "full")) == 0
    [full] = records(tmp_path / "full")
    original = probe._ProbeRun._save
    saved: list[int] = []

    def save_then_crash(self, epochs_done):
        original(self, epochs_done)
        saved.append(epochs_done)
        if epochs_done == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(probe._ProbeRun, "_save", save_then_crash)
    assert main(small(tmp_path / "cut")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the exact command that continues
    assert err == "aimv2-eval run: interrupted; continue with: aimv2-eval " + shlex.join([*small(tmp_path / "cut"), "--resume"])
    assert not records(tmp_path / "cut") and list((tmp_path / "cut").rglob("*.ckpt"))
    saved.clear()
    monkeypatch.setattr(probe._ProbeRun, "_save", lambda self, n: (original(self, n), saved.append(n)))
    assert main(small(tmp_path / "cut", "--resume")) == 0
    assert saved == [2, 3]  # continued from the last completed epoch
    [cut] = records(tmp_path / "cut")
    a, b = json.loads(full.read_text()), json.loads(cut.read_text())
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    for x, y in zip(a["selection"]["candidates"], b["selection"]["candidates"]):
        assert x == pytest.approx(y, abs=1e-5)


def test_resume_from_inside_an_epoch_gives_the_same_metrics(tmp_path, monkeypatch):
    """A long epoch is checkpointed every --checkpoint-minutes (0: every update); killed after the second update
    of the second epoch, --resume skips exactly the updates made and ends where an uncut run ends."""
    from aimv2_eval import engine

    assert main(small(tmp_path / "full")) == 0
    original = engine.Checkpointer.save
    positions: list[tuple[int, int]] = []

    def save_then_crash(self, state):
        original(self, state)
        positions.append((state["epochs_done"], (state.get("position") or {}).get("step", 0)))
        if positions[-1] == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Checkpointer, "save", save_then_crash)
    assert main(small(tmp_path / "cut", "--checkpoint-minutes", "0")) == 130
    assert positions[:3] == [(0, 1), (0, 2), (1, 0)]  # every update inside an epoch (3 per epoch), then its end
    positions.clear()
    monkeypatch.setattr(engine.Checkpointer, "save", lambda self, state: (
        original(self, state), positions.append((state["epochs_done"], (state.get("position") or {}).get("step", 0)))))
    assert main(small(tmp_path / "cut", "--resume")) == 0
    assert positions[0] == (2, 0)  # the rest of epoch 2 ran (default: no mid-epoch save in seconds), then epoch 3
    [full], [cut] = records(tmp_path / "full"), records(tmp_path / "cut")
    a, b = json.loads(full.read_text()), json.loads(cut.read_text())
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    for x, y in zip(a["selection"]["candidates"], b["selection"]["candidates"]):
        assert x == pytest.approx(y, abs=1e-5)


def test_missing_weights_and_data_end_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "AIMV2_EVAL_DATA": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "aimv2_eval.cli", "run", "--backbone", "aimv2-l", "--task", "imagenet_probe",
         "--out", str(tmp_path / "records")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("aimv2-eval run: error:") and "ILSVRC/imagenet-1k" in lines[0]
    assert str(tmp_path / "imagenet" / "train") in lines[0]  # where to put the images
    assert not (tmp_path / "records").exists()


def test_unknown_names_answer_with_closest(tmp_path, capsys):
    assert main(["run", "--backbone", "aimv2-tiny", "--task", "digit_probe", "--out", str(tmp_path)]) == 2
    assert "did you mean digits_probe" in capsys.readouterr().err
    assert main(["run", "--backbone", "aimv2-tinny", "--task", "digits_probe", "--out", str(tmp_path)]) == 2
    assert "aimv2-tiny" in capsys.readouterr().err


def test_unreadable_image_in_a_worker_is_one_clear_line(tmp_path, capsys):
    """A benchmark-style task on a local ImageFolder with one corrupt file, decoded in a DataLoader worker."""
    from PIL import Image

    for split in ("train", "test"):
        for c in range(2):
            folder = tmp_path / "data" / "bench" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("L", (16, 16), color=40 * i + 100 * c).save(folder / f"{i}.png")
    (tmp_path / "data" / "bench" / "train" / "class1" / "9.png").write_bytes(b"truncated")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "bench_probe.yaml").write_text(
        f"include: {REPO / 'tasks' / '_probe_table_a2.yaml'}\nversion: 1\n"
        "data: {num_classes: 2, imagefolder: {dir: bench}}\nprotocol: {epochs: 1, batch_size: 4}\n"
    )
    code = main(["run", *TINY, "--task", "bench_probe", "--tasks-dir", str(tasks), "--data-root",
                 str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "cannot read image" in err and "9.png" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--limit", "-1"], "--limit must be >= 1"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--weights", ""], "--weights is empty"),
    (["--weights", " "], "--weights is empty"),
])
def test_meaningless_run_arguments_end_in_one_line_before_any_work(tmp_path, capsys, flags, message):
    """Values argparse accepts but that meant something else (--limit -1 silently dropped a sample, --weights ''
    was ignored): one line, exit 2, no record."""
    code = main(["run", *TINY, "--task", "digits_probe", *flags, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_empty_backbone_name_is_not_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--backbone", "", "--task", "digits_probe", "--out", str(tmp_path / "out")]) == 2
    assert "--backbone is empty" in capsys.readouterr().err


def test_version_flag(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"aimv2-eval {version('aimv2-eval')}"


def test_list_json_gives_raw_rows(capsys):
    assert main(["list", "backbones", "aimv2-tiny", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "aimv2-tiny" and isinstance(row["params"], int) and row["resolution"] == 112
    assert main(["list", "tasks", "scenes_v*", "--json"]) == 0
    assert {"scenes_vqa", "scenes_vitdet"} <= {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert main(["list", "tasks", "nothing-like-this*", "--json"]) == 1 and json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("flags, overrides", [
    ([], {}),
    (["--epochs", "30", "--feature-cache"], {}),  # the task's own values: the same protocol
    (["--epochs", "1", "--limit", "80"], {"epochs": 1, "limit": 80}),
    (["--no-feature-cache"], {"feature_cache": False}),
    (["--precision", "bf16"], {}),  # how it runs, not what it measures
])
def test_overrides_name_what_moved_the_protocol_off_the_task_default(tmp_path, flags, overrides):
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    cell = plan_cell(parse_run_args([*TINY, "--task", "digits_probe", "--out", str(tmp_path), *flags]))
    assert cell.overrides == overrides


def test_feature_cache_switches_contradicting_is_one_line(tmp_path, capsys):
    args = ["run", *TINY, "--task", "digits_probe", "--feature-cache", "--no-feature-cache", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "contradict" in capsys.readouterr().err


def test_several_tasks_and_backbones_in_one_run(tmp_path, capsys):
    """`--task a,b` and globs run every cell (names checked before the first one), each its own record."""
    from aimv2_eval.commands.run import expand_names, parse_run_args

    args = parse_run_args(["--backbone", "aimv2-tiny", "--task", "foolbox_*_probe,digits_probe"])
    assert expand_names(args) == (["aimv2-tiny"], ["foolbox_cifar10_probe", "foolbox_imagenet_probe", "digits_probe"])
    assert main(["run", *TINY, "--task", "nothing_*", "--out", str(tmp_path)]) == 2
    assert "--task 'nothing_*' matches nothing" in capsys.readouterr().err
    # a typo in the second task fails before the first one runs
    typo = small(tmp_path / "typo")
    typo[typo.index("--task") + 1] = "digits_probe,digit_probe"
    assert main(typo) == 2
    assert "did you mean digits_probe" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    argv = small(tmp_path / "both")
    argv[argv.index("--task") + 1] = "digits_probe,scenes_probe,digits_probe"  # a repeated name runs once
    assert main(argv) == 0
    assert sorted(json.loads(p.read_text())["cell"]["task"] for p in records(tmp_path / "both")) == [
        "digits_probe", "scenes_probe"]
    assert "2 cells: 2 finished or skipped, 0 failed" in capsys.readouterr().out


def test_defaults_live_under_aimv2_eval_home_whatever_the_current_folder(tmp_path, monkeypatch, capsys):
    home, cwd = tmp_path / "home", tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.setenv("AIMV2_EVAL_HOME", str(home))
    monkeypatch.chdir(cwd)
    argv = small(tmp_path / "unused")
    del argv[argv.index("--out"): argv.index("--out") + 2]
    assert main(argv) == 0
    assert len(records(home / "records")) == 1
    assert main(["leaderboard"]) == 0 and (home / "leaderboard" / "leaderboard.csv").is_file()
    assert not list(cwd.iterdir())  # nothing written into the current folder
