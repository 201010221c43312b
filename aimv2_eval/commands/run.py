"""`aimv2-eval run --backbone NAME --task NAME`: evaluate one cell and write its result record.

One record per cell (backbone x task x protocol hash x seed) under --out, written atomically; an existing cell is
skipped unless --overwrite; --resume continues an interrupted run from its last completed epoch. The same command
under `torchrun --nproc_per_node N` trains with DistributedDataParallel on sharded data; rank 0 writes the record.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from aimv2_eval.config import cache_home, records_home
from aimv2_eval.errors import UserError
from aimv2_eval.io import remove_stale_temps
from aimv2_eval.locks import cell_lock

DEFAULT_CACHE = cache_home() / "features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True,
                        help="backbone name (`aimv2-eval list backbones`); several: comma-separated names or globs")
    parser.add_argument("--task", required=True,
                        help="task name (`aimv2-eval list tasks`) or a task YAML file; several: `a,b` or globs (`*_probe`)")
    parser.add_argument("--weights", help="weights source replacing the backbone's default (directory, file or hub id)")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (a baseline)")
    parser.add_argument("--epochs", type=int, help="override the task's number of epochs")
    parser.add_argument("--batch-size", type=int, help="override the task's global batch size")
    parser.add_argument("--limit", type=int, help="use at most this many samples per split")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of the frozen backbone (default: fp32)")
    parser.add_argument("--out", type=Path, default=records_home(),
                        help="records folder (default: $AIMV2_EVAL_HOME/records = %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rerun a cell whose record exists")
    parser.add_argument("--resume", action="store_true", help="continue from the last completed epoch")
    parser.add_argument("--tasks-dir", action="append", default=[], type=Path, help="extra folder of task YAMLs")
    parser.add_argument("--feature-cache", nargs="?", const=DEFAULT_CACHE, type=Path, metavar="DIR",
                        help=f"cache frozen tokens on disk and train without augmentation (default DIR: {DEFAULT_CACHE}); "
                             "on by default where the task's protocol sets feature_cache: true")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="train on images with augmentation even where the task caches tokens by default")
    parser.add_argument("--data-root", type=Path, help="folder with local dataset copies (default: $AIMV2_EVAL_DATA or ~/data)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0, metavar="M",
                        help="also save the resumable state inside an epoch every M minutes (default: 10; 0: every step)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars; one line per epoch (loss, img/s) is printed either way")


def check_arguments(args: argparse.Namespace) -> None:
    """Values argparse's types let through but that mean nothing (or something else than the user meant)."""
    for flag, value in (("--backbone", args.backbone), ("--task", args.task), ("--weights", args.weights)):
        if value is not None and not str(value).strip():
            raise UserError(f"{flag} is empty; give a name (`aimv2-eval list`) or drop the flag")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--limit", args.limit, 1), ("--workers", args.workers, 0), ("--seed", args.seed, 0),
                             ("--checkpoint-minutes", getattr(args, "checkpoint_minutes", 0), 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.feature_cache is not None and getattr(args, "no_feature_cache", False):
        raise UserError("--feature-cache and --no-feature-cache contradict each other; keep one")
    # Checked here, before anything loads; a sweep plans cells through this too, so the device is checked for
    # spelling only (the GPU is looked for where the cell runs, by init_distributed before data or weights load).
    from aimv2_eval.launch.distributed import parse_device
    from aimv2_eval.paths import writable_dir

    parse_device(args.device, "--device")
    writable_dir(args.out, "--out")
    if args.feature_cache is not None:
        writable_dir(args.feature_cache, "--feature-cache")


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


@dataclass
class CellPlan:
    """One cell, resolved without loading weights or data: what `run` would evaluate and where its record goes."""

    task: Any
    plugin: Any
    spec: Any
    backbone: str  # the record's backbone name (`-random` for --random-init)
    options: Any
    protocol: dict[str, Any]
    protocol_hash: str
    path: Path  # the record; it exists once the cell is done
    overrides: dict[str, Any]  # run options that moved the protocol off the task's default ({}: the default)

    @property
    def key(self) -> str:
        """The cell id as a relative path: backbone/task/hash-seedN (the record's path without root and .json)."""
        return f"{self.path.parent.parent.name}/{self.path.parent.name}/{self.path.stem}"


def plan_cell(args: argparse.Namespace) -> CellPlan:
    """Resolve a cell's id from run's arguments; `aimv2-eval sweep` calls this too, so both agree on every id."""
    from aimv2_eval.backbones import describe_backbone, get_spec
    from aimv2_eval.plugins import RunOptions, get_plugin
    from aimv2_eval.report.store import cell_path, protocol_hash
    from aimv2_eval.tasks import load_task

    check_arguments(args)
    task = load_task(args.task, args.tasks_dir)  # bad names fail before anything heavy
    plugin = get_plugin(task.plugin)
    spec = get_spec(args.backbone)
    cell_backbone = spec.name + ("-random" if args.random_init else "")
    default_cache = DEFAULT_CACHE if task.protocol.get("feature_cache") else None
    options = RunOptions(
        epochs=args.epochs, batch_size=args.batch_size, limit=args.limit, precision=args.precision, seed=args.seed,
        feature_cache=_feature_cache(args, default_cache), resume=args.resume, data_root=args.data_root,
        workers=args.workers, progress=not args.no_progress, checkpoint_minutes=args.checkpoint_minutes,
    )
    meta = describe_backbone(spec.name, args.weights)  # the architecture, without loading weights

    def hash_of(opts: Any) -> tuple[dict[str, Any], str]:
        resolved = plugin.resolve(task, opts, meta)
        return resolved, protocol_hash({"task": task.name, "version": task.version, "data": task.hashed_data,
                                        "protocol": resolved, "weights": args.weights,
                                        "pretrained": not args.random_init})

    protocol, phash = hash_of(options)
    plugin.check_metrics(task, protocol)  # a metric the plugin cannot produce fails here, not after the run
    default = replace(options, epochs=None, batch_size=None, limit=None, feature_cache=default_cache)
    path = cell_path(args.out, cell_backbone, task.name, phash, args.seed)
    overrides = _overrides(options, default, hash_of)
    return CellPlan(task, plugin, spec, cell_backbone, options, protocol, phash, path, overrides)


def _feature_cache(args: argparse.Namespace, default: Path | None) -> Path | None:
    if getattr(args, "no_feature_cache", False):
        return None
    return default if args.feature_cache is None else args.feature_cache


def _overrides(options: Any, default: Any, hash_of: Any) -> dict[str, Any]:
    """Each protocol option that, applied alone to the task's default, changes the protocol (`regress` compares
    only default-protocol records with the paper). Precision is how it runs, not what is measured: never listed."""
    base = hash_of(default)[1]
    out = {}
    for key in ("epochs", "batch_size", "limit", "feature_cache"):
        value = getattr(options, key)
        if value != getattr(default, key) and hash_of(replace(default, **{key: value}))[1] != base:
            out[key] = value is not None if key == "feature_cache" else value
    return out


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not a usage block and an exit (the caller may be a sweep)
        raise UserError(f"invalid run arguments: {message}")


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    """run's own parser on run's own flags (a sweep cell is exactly these arguments)."""
    parser = _ArgumentParser(prog="aimv2-eval run")
    add_arguments(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    backbones, tasks = expand_names(args)
    if len(backbones) * len(tasks) == 1:
        return run_cell(argparse.Namespace(**{**vars(args), "backbone": backbones[0], "task": tasks[0]}))
    if args.weights is not None and len(backbones) > 1:
        raise UserError("--weights replaces one backbone's weights; give one --backbone with it")
    cells = [argparse.Namespace(**{**vars(args), "backbone": b, "task": t}) for b in backbones for t in tasks]
    plans = [plan_cell(cell) for cell in cells]  # every name and protocol checked before the first cell runs
    codes = []
    for i, (cell, plan) in enumerate(zip(cells, plans), 1):
        print(f"[{i}/{len(cells)}] {cell.backbone} x {cell.task}", file=sys.stderr)
        try:
            codes.append(run_cell(cell, plan))
        except UserError as exc:  # one failed cell does not stop the others
            print(f"aimv2-eval run: error: {cell.backbone} x {cell.task}: {exc}", file=sys.stderr)
            codes.append(2)
    failed = sum(code != 0 for code in codes)
    print(f"{len(cells)} cells: {len(cells) - failed} finished or skipped, {failed} failed")
    return max(codes)


def expand_names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """--backbone and --task as lists: comma-separated names and globs (`*_probe`, like lm-eval's --tasks); a name
    without wildcards passes through unchanged (a task file, a hub id, a `timm:` name)."""
    from aimv2_eval.backbones import list_backbones
    from aimv2_eval.tasks import task_registry

    def expand(value: str, flag: str, matching) -> list[str]:
        names = []
        for part in str(value).split(","):
            part = part.strip()
            if any(ch in part for ch in "*?["):
                hits = matching(part)
                if not hits:
                    raise UserError(f"{flag} {part!r} matches nothing; see `aimv2-eval list {flag[2:]}s {part}`")
                names += hits
            else:
                names.append(part)
        return list(dict.fromkeys(names))

    return (expand(args.backbone, "--backbone", lambda p: [s.name for s in list_backbones(p)]),
            expand(args.task, "--task", lambda p: task_registry(args.tasks_dir).list(p)))


def run_cell(args: argparse.Namespace, cell: CellPlan | None = None) -> int:
    """One cell (planned from `args` unless given): skipped when its record exists, otherwise run under its lock."""
    start = time.perf_counter()
    cell = cell or plan_cell(args)
    path, cell_backbone, task = cell.path, cell.backbone, cell.task
    if path.exists() and not args.overwrite:
        print(f"skip {cell_backbone} x {task.name}: {path} exists (--overwrite to rerun)")
        return 0
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 holds the cell's lock for every rank
        return _run_cell(args, cell, start)
    with cell_lock(path, f"cell {cell.key}"):
        if path.exists() and not args.overwrite:  # the run that held the lock finished it
            print(f"skip {cell_backbone} x {task.name}: {path} exists (--overwrite to rerun)")
            return 0
        for target in (path, path.with_suffix(".ckpt")):  # what killed writers of this cell left
            remove_stale_temps(target)
        return _run_cell(args, cell, start)


def _run_cell(args: argparse.Namespace, cell: CellPlan, start: float) -> int:
    from aimv2_eval.backbones import create_backbone
    from aimv2_eval.launch.distributed import init_distributed, shutdown
    from aimv2_eval.report.context import context_line
    from aimv2_eval.report.store import new_record, write_record

    task, plugin, spec, options, protocol = cell.task, cell.plugin, cell.spec, cell.options, cell.protocol
    cell_backbone, phash, path = cell.backbone, cell.protocol_hash, cell.path
    options.checkpoint = path.with_suffix(".ckpt")
    # Predictions go to a hidden folder that becomes the cell's output folder only with the record.
    outputs = path.with_suffix("")
    options.output_dir = outputs.with_name(f".{outputs.name}.partial")
    shutil.rmtree(options.output_dir, ignore_errors=True)  # left by a killed run: its predictions are stale
    if options.checkpoint.exists() and not args.resume:
        print(f"note: {options.checkpoint} holds an interrupted run; starting over (--resume continues it)", file=sys.stderr)

    ctx = init_distributed(args.device)
    try:
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        torch.manual_seed(args.seed)
        data = plugin.load_data(task, protocol, options)  # missing data fails before a big backbone loads
        backbone = create_backbone(spec.name, pretrained=not args.random_init, weights=args.weights,
                                   **plugin.backbone_options(protocol))
        result = plugin.run(backbone, task, protocol, data, options, ctx)
        if not ctx.is_main:
            return 0
        task_config = task.to_dict() | {"resolved_protocol": protocol}
        artifacts = _publish_outputs(options.output_dir, outputs, result.artifacts, args.out)
        record = new_record(
            cell_backbone, task.name, phash, args.seed,
            metrics=result.metrics,
            main_metric=result.main_metric,
            backbone=_backbone_info(backbone, spec, args),
            task_config=task_config,
            overrides=cell.overrides,
            selection=result.selection,
            throughput=result.throughput,
            details=result.details,
            models=[{"role": "backbone", **_model_id(backbone, spec, args)}, *result.models],
            artifacts=artifacts,
            wall_time_s=round(time.perf_counter() - start, 2),
            peak_memory_mb=peak_memory_mb(ctx.device),
        )
        # a cell that uses several models names each one in its id
        record["cell"]["models"] = {m["role"]: m["name"] for m in record["models"]}
        record["environment"]["device"] = str(ctx.device)
        record["environment"]["world_size"] = ctx.world_size
        written = write_record(args.out, record)
        options.checkpoint.unlink(missing_ok=True)
        main_value = result.metrics[result.main_metric]
        print(f"{cell_backbone} x {task.name}: {result.main_metric} {main_value:.2f}{_chosen(result.selection)} "
              f"-> {written}")
        context = context_line(record, args.out)
        if context:
            print(f"  {context}")
        return 0
    finally:
        shutdown()


def _model_id(backbone: Any, spec: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": backbone.meta.name, "weights_id": backbone.weights_id,
            "weights_source": args.weights or spec.source}


def _backbone_info(backbone: Any, spec: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {
        **_model_id(backbone, spec, args),
        "family": backbone.meta.family,
        "pretrained": not args.random_init,
        "resolution": backbone.meta.image_size,
        "params": backbone.num_params,
        "trainable": backbone.trainable,
        "trainable_params": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
    }


def _chosen(selection: dict[str, Any]) -> str:
    """What the plugin's selection chose, as it holds it (nothing for plugins that select nothing)."""
    chosen = {k: v for k, v in (selection.get("chosen") or {}).items() if v is not None and k != "index"}
    if not chosen:
        return ""
    where = f", chosen on {selection['split']}" if selection.get("split") else ""
    return " (" + " ".join(f"{k}={v}" for k, v in chosen.items()) + where + ")"


def _publish_outputs(partial: Path, final: Path, artifacts: dict[str, str], root: Path) -> dict[str, str]:
    """Move the plugin's output folder into place and return its files relative to the records folder."""
    if not partial.exists():
        return {}
    if final.exists():  # an --overwrite: the old predictions go with the old record
        shutil.rmtree(final)
    os.replace(partial, final)
    out = {}
    for key, name in artifacts.items():
        path = final / name
        if not path.exists():
            raise RuntimeError(f"plugin reported an output {name!r} that it did not write")
        out[key] = str(path.relative_to(root))
    return out
