"""`aimv2-eval sweep`: an embedded grid through submitit's local executor (processes, as Slurm runs them), reruns
that submit nothing, a killed cell that resumes to the clean run's record, a preempted cell that submitit requeues,
the sbatch scripts of the Slurm executor (written by submitit, handed to a stand-in `sbatch`), and bad grids."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aimv2_eval.backbones import get_spec
from aimv2_eval.cli import main

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = get_spec("aimv2-tiny").weights_present()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread_jobs(monkeypatch):
    # job processes inherit this: 1 intra-op thread each (2 jobs share 2 cores), and bit-equal to in-process runs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep_file(tmp_path: Path, **options) -> Path:
    """2 backbones (the tiny AIMv2, pretrained and random-init) x 2 embedded tasks x 2 seeds."""
    groups = [{"backbones": ["aimv2-tiny"], "tasks": ["digits_probe", "scenes_probe"]}]
    if PRETRAINED:
        groups.append({**groups[0], "options": {"random_init": True}})
    else:  # without the bundled weights: random init at two depths of the grid is still two backbones
        groups = [{**groups[0], "options": {"random_init": True}}, {"backbones": ["aimv2-tiny"],
                  "tasks": ["digits_probe", "scenes_probe"], "options": {"random_init": True, "batch_size": 8}}]
    doc = {"name": "tiny", "seeds": [0, 1], "options": {"epochs": 1, "limit": 60, **options}, "grid": groups}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def records(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out).with_suffix("")): json.loads(p.read_text())
            for p in sorted(out.glob("*/*/*.json")) if not p.relative_to(out).parts[0].startswith(".")}


def job_folders(out: Path) -> list[Path]:
    return sorted(p for p in (out / ".sweep" / "submitit").glob("*") if p.name != "%j")


def test_embedded_grid_through_submitit_local_then_rerun_submits_nothing(tmp_path, capsys, one_thread_jobs):
    out, cache = tmp_path / "records", ["--feature-cache", str(tmp_path / "cache")]
    args = ["sweep", str(sweep_file(tmp_path)), "--out", str(out), "--executor", "slurm", "--cluster", "local",
            "--array-parallelism", "2", *cache]
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "8 cells, 8 to run, 0 done" in dry and "no earlier record" in dry and not out.exists()

    assert main(args) == 0
    recs = records(out)
    assert len(recs) == 8 and len(job_folders(out)) == 8  # one submitit job (and log folder) per cell
    backbones = {r["cell"]["backbone"] for r in recs.values()}
    assert len(backbones) == 2 and {r["cell"]["task"] for r in recs.values()} == {"digits_probe", "scenes_probe"}
    assert {r["cell"]["seed"] for r in recs.values()} == {0, 1}
    for rec in recs.values():  # cost fields of every cell, for the next --dry-run
        assert rec["wall_time_s"] > 0 and rec["peak_memory_mb"]["host_rss_mb"] > 0
        assert rec["throughput"]["train_images_per_s"] > 0
    assert not list(out.rglob("*.ckpt")) and not list((out / ".sweep" / "state").rglob("*.json"))
    capsys.readouterr()

    # the same cell ids as `run`: a direct run of one cell is skipped, and a rerun of the sweep submits nothing
    key = next(iter(recs))
    backbone = recs[key]["cell"]["backbone"]
    run_args = ["run", "--backbone", "aimv2-tiny", "--task", recs[key]["cell"]["task"], "--seed",
                str(recs[key]["cell"]["seed"]), "--epochs", "1", "--limit", "60", "--out", str(out), *cache]
    assert main(run_args + (["--random-init"] if backbone.endswith("-random") else [])) == 0
    assert "skip" in capsys.readouterr().out
    mtimes = {k: r["created"] for k, r in records(out).items()}
    assert main(args) == 0
    assert "nothing to run: 8 of 8 cells done" in capsys.readouterr().out
    assert len(job_folders(out)) == 8 and mtimes == {k: r["created"] for k, r in records(out).items()}

    assert main(["sweep", "status", str(out)]) == 0
    assert "8 done, 0 running, 0 failed, 0 missing (8 cells)" in capsys.readouterr().out
    assert main([*args, "--dry-run", "--seeds", "0-2"]) == 0  # a third seed: costs from the records just written
    dry = capsys.readouterr().out
    assert "12 cells, 4 to run, 8 done" in dry and dry.count("from 2 record(s)") == 4 and " s, " in dry


def _wait_for(predicate, timeout: float = 240.0, what: str = "") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _cell_files(out: Path, suffix: str) -> list[Path]:
    return list(out.glob(f"*/*/*{suffix}")) if out.exists() else []


def _running_pid(out: Path) -> int | None:
    for st in (out / ".sweep" / "state").rglob("*.json") if (out / ".sweep").exists() else []:
        data = json.loads(st.read_text())
        if data.get("state") == "running" and data.get("pid"):
            return int(data["pid"])
    return None


ONE_CELL = ["--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds", "0", "--epochs", "3", "--limit", "60",
            "--batch-size", "16", *([] if PRETRAINED else ["--random-init"])]


def _clean_run(tmp_path: Path) -> dict:
    out = tmp_path / "clean"
    assert main(["run", "--backbone", "aimv2-tiny", "--task", "digits_probe", "--epochs", "3", "--limit", "60",
                 "--batch-size", "16", "--out", str(out), "--no-progress",
                 *([] if PRETRAINED else ["--random-init"])]) == 0
    return records(out)


def _same_record(a: dict, b: dict) -> None:
    assert a["cell"] == b["cell"]
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    assert a["selection"]["chosen"] == b["selection"]["chosen"]
    for x, y in zip(a["selection"]["candidates"], b["selection"]["candidates"]):
        assert x == pytest.approx(y, abs=1e-5)


def test_killed_job_resumes_from_its_checkpoint_and_equals_a_clean_run(tmp_path, capsys, one_thread_jobs):
    out = tmp_path / "records"
    args = ["sweep", *ONE_CELL, "--out", str(out), "--executor", "slurm", "--cluster", "local"]
    sweep = subprocess.Popen([sys.executable, "-m", "aimv2_eval.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _cell_files(out, ".ckpt") and _running_pid(out), what="the first epoch's checkpoint")
        os.kill(_running_pid(out), signal.SIGKILL)  # the job dies mid-cell: no exit, no record
        log = sweep.communicate(timeout=120)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 1 and "FAILED" in log, log
    assert not records(out) and _cell_files(out, ".ckpt")
    assert main(["sweep", "status", str(out)]) == 0
    assert "failed   " in capsys.readouterr().out  # killed without a word: its pid is gone

    assert main(args) == 0  # the rerun submits that cell again; run --resume continues from epoch 1
    [(key, resumed)] = records(out).items()
    assert len(resumed["details"]["epoch_seconds"]) < 3  # this process trained only the remaining epochs
    [(clean_key, clean)] = _clean_run(tmp_path).items()
    assert key == clean_key
    _same_record(resumed, clean)
    assert not _cell_files(out, ".ckpt")


@pytest.mark.slow
def test_preempted_job_is_requeued_by_submitit_and_resumes(tmp_path, capsys, one_thread_jobs):
    """USR2 (what Slurm sends before preemption / the time limit): CellJob.checkpoint() hands submitit the same cell,
    the job is requeued in place and `run --resume` continues; one record, equal to a clean run's."""
    out = tmp_path / "records"
    args = ["sweep", *ONE_CELL, "--out", str(out), "--executor", "slurm", "--cluster", "local"]
    sweep = subprocess.Popen([sys.executable, "-m", "aimv2_eval.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _cell_files(out, ".ckpt") and _running_pid(out), what="the first epoch's checkpoint")
        os.kill(_running_pid(out), signal.SIGUSR2)
        log = sweep.communicate(timeout=240)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 0, log
    [job] = job_folders(out)
    assert "Requeued" in "".join(p.read_text() for p in job.glob("*_log.*"))
    [(key, resumed)] = records(out).items()
    assert len(resumed["details"]["epoch_seconds"]) < 3
    [(clean_key, clean)] = _clean_run(tmp_path).items()
    assert key == clean_key
    _same_record(resumed, clean)


@pytest.mark.slow
def test_multi_gpu_cell_is_one_job_of_ranks_that_join_torch_distributed(tmp_path, one_thread_jobs):
    """--gpus-per-cell 2 on submitit's local executor: one job of 2 tasks; the worker initialises torch.distributed
    (gloo on CPU) from submitit's environment and rank 0 alone writes the record."""
    out = tmp_path / "records"
    assert main(["sweep", "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--epochs", "1", "--limit", "60",
                 "--device", "cpu", "--out", str(out), "--executor", "slurm", "--cluster", "local",
                 "--gpus-per-cell", "2"]) == 0
    [rec] = records(out).values()
    assert rec["environment"]["world_size"] == 2
    [job] = job_folders(out)
    assert sorted(p.name for p in job.glob("*_result.pkl")) == [f"{job.name}_0_result.pkl", f"{job.name}_1_result.pkl"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins: sbatch keeps the script it was given and answers like Slurm."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        'if grep -q "partition=nope" "$1"; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi\n'
        f'n=$(ls "{scripts}" | wc -l); id=$((4200 + n))\n'
        f'cp "$1" "{scripts}/$id.sh"\n'
        'echo "Submitted batch job $id"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_slurm_executor_writes_job_arrays_with_resources_and_cell_commands(tmp_path, capsys, fake_slurm):
    import submitit

    grid = {"name": "paper", "seeds": [0, 1], "options": {"device": "cuda", "precision": "bf16"},
            "resources": {"gpus_per_cell": 1, "cpus_per_cell": 6, "mem_gb": 32, "time_min": 90},
            "grid": [{"backbones": ["aimv2-tiny"], "tasks": ["digits_probe", "scenes_probe"]},
                     {"backbones": ["aimv2-tiny"], "tasks": ["scenes_vitdet"], "seeds": [0],
                      "resources": {"gpus_per_cell": 4, "time_min": 600}}]}
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "records"
    assert main(["sweep", str(path), "--out", str(out), "--executor", "slurm", "--partition", "gpu", "--account",
                 "proj", "--array-parallelism", "3", "--slurm-extra", "constraint=h100",
                 "--slurm-setup", "source .venv/bin/activate"]) == 0
    said = capsys.readouterr().out
    assert "submitted 4 cell(s) as array 4200" in said and "submitted 1 cell(s) as array 4201" in said
    probe, detection = (fake_slurm / "4200.sh").read_text(), (fake_slurm / "4201.sh").read_text()

    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --mem=32GB", "#SBATCH --nodes=1", "#SBATCH --constraint=h100", "#SBATCH --signal=USR2@120",
                 "#SBATCH --open-mode=append", "#SBATCH --job-name=aimv2-paper", "source .venv/bin/activate"):
        assert line in probe, line
    # logs per cell: each array task writes into its own folder, %A_%a
    logs = out / ".sweep" / "submitit"
    assert f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out" in probe
    assert f"srun --unbuffered --output {logs}/%A_%a/%A_%a_%t_log.out" in probe and "-m submitit.core._submit" in probe
    # a multi-GPU cell: one job of 4 tasks (4 torch.distributed ranks), its own time limit (alone: no array)
    for line in ("#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --time=600"):
        assert line in detection, line
    assert "--array" not in detection

    # the command line of every array task: the pickled cell is `run --resume` with the cell's own arguments
    manifest = json.loads((out / ".sweep" / "sweeps" / "paper.json").read_text())
    assert sorted(c["job_id"] for c in manifest["cells"]) == ["4200_0", "4200_1", "4200_2", "4200_3", "4201"]
    for cell in manifest["cells"]:
        pkl = out / ".sweep" / "submitit" / cell["job_id"] / f"{cell['job_id']}_submitted.pkl"
        job = submitit.helpers.DelayedSubmission.load(pkl).function
        assert job.key == cell["key"] and "--resume" in job.argv and job.argv[job.argv.index("--device") + 1] == "cuda"
        assert cell["command"] == "aimv2-eval run " + " ".join(job.argv)
        assert job.argv[job.argv.index("--task") + 1] == cell["task"]
        # requeue: the checkpoint of a cell is the same cell
        assert job.checkpoint().function.argv == job.argv

    # queued on Slurm: status says so, and a second sweep leaves them alone
    assert main(["sweep", "status", str(out)]) == 0
    assert "0 done, 5 running, 0 failed, 0 missing" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out), "--executor", "slurm"]) == 0
    assert "nothing to run: 0 of 5 cells done, 5 running" in capsys.readouterr().out
    assert sorted(p.name for p in fake_slurm.iterdir()) == ["4200.sh", "4201.sh"]


def test_failed_cell_shows_its_last_error_line(tmp_path, capsys):
    out = tmp_path / "records"
    # fashion_mnist needs a Debian package's files; pointing its data at an empty folder makes the cell fail
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken_probe.yaml").write_text(
        f"include: {REPO / 'tasks' / 'fashion_mnist_probe.yaml'}\nversion: 1\n"
        f"data: {{fashion_mnist_idx: {{dir: {tmp_path / 'nothing'}}}}}\n")
    args = ["sweep", "--backbones", "aimv2-tiny", "--tasks", "broken_probe", "--tasks-dir", str(tasks),
            "--out", str(out), "--executor", "slurm", "--cluster", "debug", "--random-init"]
    assert main(args) == 1
    assert main(["sweep", "status", str(out)]) == 0
    said = capsys.readouterr().out
    assert "failed   aimv2-tiny-random x broken_probe seed 0: " in said and str(tmp_path / "nothing") in said
    assert "0 done, 0 running, 1 failed, 0 missing" in said


@pytest.mark.parametrize("argv, message", [
    (["--backbones", "aimv2-tinny", "--tasks", "digits_probe"], "unknown backbone 'aimv2-tinny'; did you mean aimv2-tiny"),
    (["--backbones", "nothing-*", "--tasks", "digits_probe"], "backbone pattern 'nothing-*' matches no registered"),
    (["--backbones", "aimv2-tiny", "--tasks", "digits_probe,nope_probe"], "unknown task 'nope_probe'"),
    (["--backbones", "aimv2-tiny", "--tasks", "zzz*"], "task pattern 'zzz*' matches no task"),
    (["--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--executor", "pbs"], "unknown --executor 'pbs'"),
    (["--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds", "a,b"], "seeds 'a,b': give integers"),
    (["--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--precision", "fp8"], "invalid run arguments: argument --precision"),
    (["--tasks", "digits_probe"], "give a sweep file (sweeps/*.yaml) or both --backbones and --tasks"),
    (["FILE:grid: [ {backbones: [aimv2-tiny], tasks: [digits_probe]"], "is not valid YAML"),
    (["FILE:grid: [{backbones: [aimv2-tiny], tasks: [digits_probe], gpus: 2}]"], "unknown key(s) gpus"),
    (["FILE:grid: [{backbones: [aimv2-tiny, clip-zz], tasks: [digits_probe]}]"], "unknown backbone 'clip-zz'"),
    (["FILE:seeds: [0]"], "non-empty `grid:` list"),
])
def test_bad_grids_fail_in_one_line_before_anything_runs(tmp_path, capsys, argv, message):
    if argv[0].startswith("FILE:"):
        path = tmp_path / "bad.yaml"
        path.write_text(argv[0][5:])
        argv = [str(path)]
    assert main(["sweep", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def make_sweeps():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sweeps", REPO / "scripts" / "make_sweeps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_files_hold_exactly_the_cells_of_their_paper_tables(make_sweeps):
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert {p.stem for p in files} == set(make_sweeps.TABLES) >= {"table3", "tableB2", "table4", "table5", "table6",
                                                                    "table7", "tableD3"}
    for path in files:
        assert path.read_text() == make_sweeps.sweep_text(path.stem), f"{path} is stale: run scripts/make_sweeps.py"
        doc = yaml.safe_load(path.read_text())
        pairs = {(b, t) for g in doc["grid"] for b in g["backbones"] for t in g["tasks"]}
        with open(REPO / "results" / "paper" / f"{path.stem}.csv") as fh:
            paper = {(make_sweeps.runnable_name(r["backbone"], r["task"]), r["task"]) for r in csv.DictReader(fh)}
        assert pairs == {p for p in paper if p[0] is not None}, path
    # the probe tables name every registered paper backbone of their rows
    table3 = yaml.safe_load((REPO / "sweeps" / "table3.yaml").read_text())
    assert sum(len(g["backbones"]) * len(g["tasks"]) for g in table3["grid"]) == 11 * 14


def test_paper_sweep_plans_all_cells_offline(tmp_path, capsys):
    """Table D3's sweep resolves every cell id without weights or data (a dry run on a laptop)."""
    assert main(["sweep", str(REPO / "sweeps" / "tableD3.yaml"), "--out", str(tmp_path), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "5 cells, 5 to run, 0 done" in said and said.count("--task coco_vitdet") == 5
    assert "--device cuda" in said and "--precision bf16" in said


def test_refused_submission_is_one_line_and_leaves_nothing_queued(tmp_path, capsys, fake_slurm):
    out = tmp_path / "records"
    args = ["sweep", "--backbones", "aimv2-tiny", "--tasks", "digits_probe", "--seeds", "0,1", "--out", str(out),
            "--executor", "slurm", "--partition", "nope"]
    assert main(args) == 2
    # sbatch's own stderr passes through (it is the scheduler talking); ours is one line after it
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("aimv2-eval sweep: error: sbatch failed") and "invalid partition specified: nope" in last
    assert main(["sweep", "status", str(out)]) == 0
    assert "0 done, 0 running, 0 failed, 2 missing" in capsys.readouterr().out
