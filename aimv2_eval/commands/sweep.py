"""`aimv2-eval sweep`: run a grid of cells (backbones x tasks x seeds); `aimv2-eval sweep status DIR`: where it stands.

    aimv2-eval sweep --backbones aimv2-l,clip-l --tasks '*_probe' --seeds 0,1,2 [--executor local --parallel 2]
    aimv2-eval sweep sweeps/table3.yaml --executor slurm --partition gpu --account proj --array-parallelism 16
    aimv2-eval sweep status records/

Every cell is one `aimv2-eval run --resume` with the same cell id and record; cells whose record exists are
skipped before anything is submitted, and cells running elsewhere are left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aimv2_eval.config import records_home
from aimv2_eval.errors import UserError
from aimv2_eval.paths import writable_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="*", metavar="FILE | status DIR",
                        help="a sweep file (sweeps/*.yaml), or `status DIR` for the state of the sweeps under DIR")
    grid = parser.add_argument_group("grid (instead of a file)")
    grid.add_argument("--backbones", help="comma-separated backbone names or globs, e.g. aimv2-l,'siglip-*'")
    grid.add_argument("--tasks", help="comma-separated task names or globs, e.g. '*_probe'")
    grid.add_argument("--seeds", help="seeds: 0,1,2 or 0-4 (default: the file's, else 0)")
    grid.add_argument("--name", help="the sweep's name in {out}/.sweep/ (default: the file's name, else 'sweep')")
    ex = parser.add_argument_group("execution")
    ex.add_argument("--out", type=Path, default=records_home(),
                    help="records folder (default: $AIMV2_EVAL_HOME/records = %(default)s)")
    ex.add_argument("--executor", default="local", help="local, torchrun or slurm (default: local)")
    ex.add_argument("--parallel", type=int, default=1, help="local / torchrun: cells at a time (default: 1)")
    ex.add_argument("--dry-run", action="store_true", help="print the cells to run, those done, and their cost")
    ex.add_argument("--history", action="append", default=[], type=Path, metavar="DIR",
                    help="more records folders to estimate costs from (--dry-run)")
    res = parser.add_argument_group("resources of one cell (override the file's)")
    res.add_argument("--gpus-per-cell", dest="gpus_per_cell", type=int, help="GPUs (= torch.distributed ranks)")
    res.add_argument("--cpus-per-cell", dest="cpus_per_cell", type=int, help="CPUs per task (slurm)")
    res.add_argument("--mem-gb", dest="mem_gb", type=int, help="memory per job in GB (slurm)")
    res.add_argument("--time-min", dest="time_min", type=int, help="time limit per job in minutes (slurm)")
    sl = parser.add_argument_group("slurm (submitit)")
    sl.add_argument("--cluster", default="slurm",
                    help="slurm; or local / debug: the same submitit jobs as local processes / in this process")
    sl.add_argument("--partition")
    sl.add_argument("--account")
    sl.add_argument("--qos")
    sl.add_argument("--array-parallelism", type=int, default=32, help="array tasks running at once (default: 32)")
    sl.add_argument("--max-requeues", type=int, default=5, help="requeues of a preempted / timed-out cell (default: 5)")
    sl.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, e.g. constraint=a100 (repeatable)")
    sl.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                    help="shell line before srun, e.g. 'source .venv/bin/activate' (repeatable)")
    sl.add_argument("--wait", action="store_true", help="slurm: wait for the jobs instead of returning")
    run = parser.add_argument_group("run options of every cell (see `aimv2-eval run --help`)")
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", dest="batch_size", type=int)
    run.add_argument("--limit", type=int)
    run.add_argument("--device")
    run.add_argument("--precision")
    run.add_argument("--weights")
    run.add_argument("--random-init", dest="random_init", action="store_true")
    run.add_argument("--feature-cache", dest="feature_cache", type=Path, metavar="DIR")
    run.add_argument("--data-root", dest="data_root", type=Path)
    run.add_argument("--workers", type=int)
    run.add_argument("--tasks-dir", dest="tasks_dir", action="append", default=[], type=Path)


def _status(args: argparse.Namespace) -> int:
    from aimv2_eval.sweep.status import format_status, sweep_rows

    if len(args.target) > 2:
        raise UserError("usage: aimv2-eval sweep status [DIR] [--name NAME]")
    out = Path(args.target[1]) if len(args.target) == 2 else args.out
    print(format_status(sweep_rows(out, args.name)))
    return 0


def _check(args: argparse.Namespace) -> None:
    from aimv2_eval.sweep.executors import CLUSTERS, EXECUTORS

    if args.executor not in EXECUTORS:
        raise UserError(f"unknown --executor {args.executor!r}; use one of {', '.join(EXECUTORS)}")
    if args.cluster not in CLUSTERS:
        raise UserError(f"unknown --cluster {args.cluster!r}; use one of {', '.join(CLUSTERS)}")
    for flag in ("parallel", "array_parallelism", "gpus_per_cell", "cpus_per_cell", "mem_gb", "time_min"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if len(args.target) > 1:
        raise UserError(f"give one sweep file, got {len(args.target)}: {' '.join(args.target)}")
    for item in args.slurm_extra:
        if "=" not in item:
            raise UserError(f"--slurm-extra {item!r}: give KEY=VALUE, e.g. constraint=a100")
    if not args.dry_run:
        writable_dir(args.out, "--out")
    if args.device is not None:  # a Slurm login node has no GPU: there only the spelling can be checked
        from aimv2_eval.launch.distributed import parse_device, resolve_device

        if args.executor == "slurm":
            parse_device(args.device)
        else:
            resolve_device(args.device)


def main(args: argparse.Namespace) -> int:
    if args.target[:1] == ["status"]:
        return _status(args)
    _check(args)
    from aimv2_eval.sweep import executors
    from aimv2_eval.sweep.grid import build_grid, plan
    from aimv2_eval.sweep.status import cell_state, cost_index, estimate, write_manifest

    args.file = Path(args.target[0]) if args.target else None
    grid = build_grid(args)  # every name and pattern checked here, before anything runs
    cells = plan(grid, args.out)
    state = {pc.key: cell_state(args.out, pc.key, pc.record)[0] for pc in cells}
    done = [pc for pc in cells if state[pc.key] == "done"]
    running = [pc for pc in cells if state[pc.key] == "running"]
    todo = [pc for pc in cells if state[pc.key] in ("missing", "failed")]

    if args.dry_run:
        history = cost_index([args.out, *args.history])
        print(f"sweep {grid.name}: {len(cells)} cells, {len(todo)} to run, {len(done)} done, {len(running)} running")
        for pc in todo:
            print(f"run   {pc.label}  [{estimate(history, pc.backbone, pc.cell.task)}]")
            print(f"      {executors.run_command(pc)}")
        for pc in running:
            print(f"busy  {pc.label}")
        for pc in done:
            print(f"done  {pc.label}  {pc.record}")
        return 0

    rows = [{"key": pc.key, "backbone": pc.backbone, "task": pc.cell.task, "seed": pc.cell.seed,
             "command": executors.run_command(pc)} for pc in cells]
    write_manifest(args.out, grid.name, rows, executor=args.executor)
    if running:
        print(f"leaving {len(running)} cell(s) that are running or queued elsewhere (`aimv2-eval sweep status`)")
    if not todo:
        print(f"nothing to run: {len(done)} of {len(cells)} cells done, {len(running)} running")
        return 0
    print(f"sweep {grid.name}: running {len(todo)} of {len(cells)} cells ({len(done)} done) with {args.executor}")
    job_ids: dict[str, str] = {}
    if args.executor in ("local", "torchrun"):
        failed = executors.run_processes(todo, args.out, args.parallel, torchrun=args.executor == "torchrun",
                                         gpus_per_cell=args.gpus_per_cell or 1)
    else:
        opts = executors.SlurmOptions(
            cluster=args.cluster, partition=args.partition, account=args.account, qos=args.qos,
            array_parallelism=args.array_parallelism, max_requeues=args.max_requeues,
            extra=dict(item.split("=", 1) for item in args.slurm_extra), setup=list(args.slurm_setup),
            wait=args.wait,
        )
        job_ids, failed = executors.submit_submitit(todo, args.out, opts, grid.name)
    if job_ids:
        write_manifest(args.out, grid.name, [{"key": k, "job_id": j} for k, j in job_ids.items()],
                       executor=args.executor)
    if failed:
        print(f"{failed} cell(s) failed; `aimv2-eval sweep status {args.out}` shows why, rerunning resumes them",
              file=sys.stderr)
        return 1
    return 0
