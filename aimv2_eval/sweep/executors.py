"""Executors: how the cells of a sweep run. Every one runs `aimv2_eval.sweep.worker` (one `run --resume` per cell).

- local:    one subprocess per cell, `--parallel N` at a time; logs in {out}/.sweep/logs/{cell}.log
- torchrun: the same, each cell under `torchrun --standalone --nproc_per_node G` (`--gpus-per-cell G`)
- slurm:    submitit; one job array per resource shape (one array task per cell, `--array-parallelism` at once),
            a multi-GPU cell is one job of G tasks that join torch.distributed from the Slurm environment; logs per
            cell in {out}/.sweep/submitit/{job id}/. `--cluster local|debug` runs the same jobs through submitit's
            local executor (processes, as Slurm would) or its debug executor (in this process).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimv2_eval.errors import UserError
from aimv2_eval.sweep.grid import PlannedCell
from aimv2_eval.sweep.worker import state_path, sweep_dir, write_state

EXECUTORS = ("local", "torchrun", "slurm")
CLUSTERS = ("slurm", "local", "debug")


@dataclass
class SlurmOptions:
    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 32
    max_requeues: int = 5  # submitit's max_num_timeout: how often a timed-out cell is requeued
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to checkpoint
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option (--slurm-extra key=value)
    setup: list[str] = field(default_factory=list)  # shell lines before srun (module load ..., source venv)
    wait: bool = False  # slurm: return after submission unless asked to wait


def worker_command(pc: PlannedCell, out: Path) -> list[str]:
    return ["-m", "aimv2_eval.sweep.worker", str(out), pc.key, "--", *pc.argv]


def run_command(pc: PlannedCell) -> str:
    """The cell as a user would type it (for manifests, dry runs and logs)."""
    return shlex.join(["aimv2-eval", "run", *pc.argv])


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ local and torchrun: subprocesses on this machine
def run_processes(cells: list[PlannedCell], out: Path, parallel: int = 1, torchrun: bool = False,
                  gpus_per_cell: int = 1) -> int:
    """Cells as child processes, `parallel` at a time; returns the number that failed. With several at a time on a
    GPU machine, each slot gets its own CUDA_VISIBLE_DEVICES slice."""
    logs = sweep_dir(out) / "logs"
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if not visible:
        try:
            import torch

            visible = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:  # pragma: no cover
            visible = []
    per_slot = gpus_per_cell if torchrun else 1
    queue, running, failed, finished = list(cells), {}, 0, 0
    free = list(range(max(1, parallel)))
    try:
        while queue or running:
            while queue and free:
                pc, slot = queue.pop(0), free.pop(0)
                log = logs / f"{pc.key}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                env = dict(os.environ, AIMV2_EVAL_SWEEP_LOG=str(log))
                devices = visible[slot * per_slot:(slot + 1) * per_slot]
                if parallel > 1 and devices:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
                launcher = [sys.executable]
                if torchrun:
                    launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus_per_cell)]
                with open(log, "a") as fh:
                    fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {run_command(pc)}\n")
                    fh.flush()
                    proc = subprocess.Popen([*launcher, *worker_command(pc, out)], stdout=fh, stderr=subprocess.STDOUT,
                                            env=env)
                running[proc] = (pc, slot, time.time(), log)
                _say(f"start {pc.label} ({pc.key})")
            for proc in [p for p in running if p.poll() is not None]:
                pc, slot, started, log = running.pop(proc)
                free.append(slot)
                finished += 1
                took = time.time() - started
                if proc.returncode == 0:
                    _say(f"[{finished}/{len(cells)}] done {pc.label} in {took:.1f} s")
                else:
                    failed += 1
                    _say(f"[{finished}/{len(cells)}] FAILED {pc.label} (status {proc.returncode}); log: {log}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        for proc in running:  # children stop at once; their checkpoints let the next sweep resume them
            proc.terminate()
        raise
    return failed


# ------------------------------------------------------------------ submitit (Slurm, or its local / debug executors)
def _resource_groups(cells: list[PlannedCell]) -> dict[tuple, list[PlannedCell]]:
    """One job array per resource shape (a probe cell and an 8-GPU detection cell cannot share an array)."""
    groups: dict[tuple, list[PlannedCell]] = {}
    for pc in cells:
        shape = tuple(pc.cell.resource(k) for k in ("gpus_per_cell", "cpus_per_cell", "mem_gb", "time_min"))
        groups.setdefault(shape, []).append(pc)
    return groups


def make_executor(out: Path, opts: SlurmOptions, shape: tuple, name: str) -> Any:
    """A submitit executor for one resource shape; the folder's %j gives every cell (array task) its own logs."""
    import submitit

    gpus, cpus, mem_gb, time_min = shape
    kwargs: dict[str, Any] = {}
    if opts.cluster in ("slurm", "local"):
        kwargs[f"{opts.cluster}_max_num_timeout"] = opts.max_requeues
    executor = submitit.AutoExecutor(folder=sweep_dir(out) / "submitit" / "%j", cluster=opts.cluster, **kwargs)
    params: dict[str, Any] = {
        "name": f"aimv2-{name}", "timeout_min": int(time_min), "nodes": 1,
        # one task per GPU: each task is one torch.distributed rank (a 1-GPU cell is one task)
        "tasks_per_node": max(1, int(gpus)),
        "slurm_array_parallelism": opts.array_parallelism,
        "slurm_signal_delay_s": opts.signal_delay_s,
    }
    if opts.cluster != "debug":  # locally: CUDA_VISIBLE_DEVICES=0..G-1 (nothing on a CPU machine)
        params["gpus_per_node"] = int(gpus)
    if opts.cluster == "slurm":
        params |= {"cpus_per_task": int(cpus), "mem_gb": int(mem_gb)}
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            params[f"slurm_{key}"] = getattr(opts, key)
    if opts.extra:
        params["slurm_additional_parameters"] = dict(opts.extra)
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    executor.update_parameters(**params)
    return executor


def submit_submitit(cells: list[PlannedCell], out: Path, opts: SlurmOptions, name: str) -> tuple[dict[str, str], int]:
    """Submit every cell; returns (cell key -> job id, cells that failed). Slurm returns after submission (unless
    opts.wait); the local and debug clusters wait, at most `array_parallelism` jobs at a time as Slurm would."""
    from aimv2_eval.sweep.worker import CellJob

    if opts.cluster not in CLUSTERS:
        raise UserError(f"unknown --cluster {opts.cluster!r}; use one of {', '.join(CLUSTERS)}")
    job_ids: dict[str, str] = {}
    failed = 0
    for shape, group in _resource_groups(cells).items():
        executor = make_executor(out, opts, shape, name)
        for pc in group:  # before submission: a job may start (and write "running") at once
            write_state(out, pc.key, "queued", cluster=opts.cluster, submitter=os.getpid(), job_id=None, pid=None)
        if opts.cluster == "slurm":
            try:
                with executor.batch():  # one sbatch --array for the whole group
                    jobs = [executor.submit(CellJob(pc.argv, str(out), pc.key)) for pc in group]
            except Exception as exc:  # sbatch refused (partition, account, limits): nothing of this group is queued
                for pc in group:
                    state_path(out, pc.key).unlink(missing_ok=True)
                lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
                raise UserError(f"sbatch failed: {lines[-1].strip()} (check --partition / --account / resources)") from None
            for pc, job in zip(group, jobs):
                job_ids[pc.key] = job.job_id
            _say(f"submitted {len(jobs)} cell(s) as array {jobs[0].job_id.split('_')[0]} "
                 f"({shape[0]} GPU(s), {shape[3]} min each, at most {opts.array_parallelism} at a time)")
            if opts.wait:
                failed += _wait(list(zip(group, jobs)), len(cells))
            continue
        # local / debug: submitit has no array limit there, so we keep `array_parallelism` jobs in flight
        pending, inflight = list(group), []
        while pending or inflight:
            while pending and len(inflight) < max(1, opts.array_parallelism):
                pc = pending.pop(0)
                job = executor.submit(CellJob(pc.argv, str(out), pc.key))
                job_ids[pc.key] = job.job_id
                inflight.append((pc, job))
                if opts.cluster == "debug":  # runs in this process when waited on
                    break
            # a result pickle means the cell is over: the next one starts while this process tears torch down
            done = [(pc, job) for pc, job in inflight
                    if opts.cluster == "debug" or job.paths.result_pickle.exists() or job.done()]
            if done:
                failed += _wait(done, len(cells))
                inflight = [x for x in inflight if x not in done]
            else:
                time.sleep(0.5)
    return job_ids, failed


def _wait(jobs: list[tuple[PlannedCell, Any]], total: int) -> int:
    failed = 0
    from submitit.core.utils import pickle_load

    for pc, job in jobs:
        try:
            if job.paths.result_pickle.exists():  # without waiting for the process to exit
                outcome, payload = pickle_load(job.paths.result_pickle)
                exc = None if outcome == "success" else RuntimeError(str(payload))
            else:
                exc = job.exception()  # not result(): the debug executor would open pdb on a failure
        except Exception as err:  # submitit's "job was killed" (no result pickle)
            exc = err
        if exc is None:
            _say(f"done {pc.label} (job {job.job_id})")
            continue
        failed += 1
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        _say(f"FAILED {pc.label} (job {job.job_id}): {last}")
    return failed
