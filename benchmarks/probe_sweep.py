"""Probe sweep cost: the 14-head lr x wd grid against one head and against 14 sequential runs, and a cached epoch
against an uncached one, as ratios measured in one run.

    python benchmarks/probe_sweep.py [--backbone aimv2-tiny] [--random-init] [--task digits_probe] [--limit 256]
        [--batch-size 64] [--device auto] [--precision fp32] [--workers 0] [--reps 3] [--sequential 14] [--out FILE]

Each measured run trains two epochs and keeps the second one's time, so one-time costs (worker start-up, first-call
allocation) stay out; the one-time cache build is reported on its own. Grid and single-head runs alternate --reps
times and the median is kept, so that load drift on a shared machine hits both alike. Targets: grid <= 1.5x one head
uncached (the frozen backbone runs once per batch for all heads; issue 5); cached grid <= 2x one cached head (the
heads are one batched computation) and cached grid epoch >= 20x faster than uncached (issue 19).
`--sequential k` runs k of the 14 single-configuration runs and scales their mean to 14 (default: all 14; 0: none).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aimv2_eval.backbones import create_backbone, get_spec
from aimv2_eval.launch.distributed import init_distributed
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.report.store import environment
from aimv2_eval.tasks import TaskSpec, load_task


def with_grid(task: TaskSpec, lrs: list[float], wds: list[float]) -> TaskSpec:
    protocol = {**task.protocol, "lr_grid": lrs, "wd_grid": wds}
    return TaskSpec(task.name, task.version, task.plugin, task.data, task.metric, protocol, task.description,
                    task.paper, task.embedded, task.path)


def epoch_seconds(backbone, task: TaskSpec, args, cache: Path | None, ctx) -> tuple[float, dict]:
    """Wall time of the last training epoch (as the plugin measured it) and the run's throughput."""
    plugin = get_plugin(task.plugin)
    options = RunOptions(epochs=2, batch_size=args.batch_size, limit=args.limit, precision=args.precision,
                         feature_cache=cache, workers=args.workers, progress=False)
    protocol = plugin.resolve(task, options, backbone.meta)  # what `aimv2-eval run` passes: the built backbone's meta
    data = plugin.load_data(task, protocol, options)
    result = plugin.run(backbone, task, protocol, data, options, ctx)
    return result.details["epoch_seconds"][-1], result.throughput


def alternate(reps: int, runs: dict) -> tuple[dict[str, float], dict[str, dict]]:
    """Median epoch time of each run, the runs taking turns `reps` times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    extra: dict[str, dict] = {}
    for _ in range(reps):
        for name, fn in runs.items():
            seconds, extra[name] = fn()
            times[name].append(seconds)
    return {name: statistics.median(v) for name, v in times.items()}, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="aimv2-tiny")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--task", default="digits_probe")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions of the grid and single runs")
    ap.add_argument("--sequential", type=int, default=14, help="how many of the 14 single runs to time (0: none)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "probe_sweep.json")
    args = ap.parse_args()

    ctx = init_distributed(args.device)
    spec = get_spec(args.backbone)
    pretrained = not args.random_init and spec.weights_present()
    backbone = create_backbone(spec.name, pretrained=pretrained)
    task = load_task(args.task)
    lrs, wds = [float(x) for x in task.protocol["lr_grid"]], [float(x) for x in task.protocol["wd_grid"]]
    configs = [(lr, wd) for lr in lrs for wd in wds]
    grid_task = with_grid(task, lrs, wds)

    single_task = with_grid(task, [lrs[0]], [wds[0]])
    t: dict[str, float] = {}
    med, thr = alternate(args.reps, {
        "grid": lambda: epoch_seconds(backbone, grid_task, args, None, ctx),
        "single": lambda: epoch_seconds(backbone, single_task, args, None, ctx),
    })
    t["grid_uncached_epoch_s"], t["single_uncached_epoch_s"] = med["grid"], med["single"]
    k = max(0, min(args.sequential, len(configs)))
    seq = [epoch_seconds(backbone, with_grid(task, [lr], [wd]), args, None, ctx)[0] for lr, wd in configs[:k]]
    if k:  # --sequential 0 skips the 14 single runs (the slowest part)
        t["sequential_uncached_epoch_s"] = sum(seq) / k * len(configs)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        epoch_seconds(backbone, single_task, args, Path(cache_dir), ctx)
        t["first_cached_run_s"] = time.perf_counter() - start  # includes the one-time cache build
        med, cthr = alternate(args.reps, {
            "grid": lambda: epoch_seconds(backbone, grid_task, args, Path(cache_dir), ctx),
            "single": lambda: epoch_seconds(backbone, single_task, args, Path(cache_dir), ctx),
        })
        t["grid_cached_epoch_s"], t["single_cached_epoch_s"] = med["grid"], med["single"]
    ratios = {
        "grid_vs_single_uncached": t["grid_uncached_epoch_s"] / t["single_uncached_epoch_s"],
        "grid_vs_single_cached": t["grid_cached_epoch_s"] / t["single_cached_epoch_s"],
        "cached_speedup_grid_epoch": t["grid_uncached_epoch_s"] / t["grid_cached_epoch_s"],
    }
    if k:
        ratios["sequential_vs_grid_uncached"] = t["sequential_uncached_epoch_s"] / t["grid_uncached_epoch_s"]
    report = {
        "benchmark": "probe_sweep",
        "config": {**vars(args), "out": str(args.out), "pretrained": pretrained, "heads": len(configs),
                   "device": str(ctx.device), "threads": torch.get_num_threads(), "machine": platform.machine()},
        "seconds": {k_: round(v, 4) for k_, v in t.items()},
        "ratios": {k_: round(v, 3) for k_, v in ratios.items()},
        "targets": {"grid_vs_single_uncached <= 1.5": ratios["grid_vs_single_uncached"] <= 1.5,
                    "grid_vs_single_cached <= 2": ratios["grid_vs_single_cached"] <= 2,
                    "cached_speedup_grid_epoch >= 20": ratios["cached_speedup_grid_epoch"] >= 20},
        "throughput": {"uncached": thr["grid"], "cached": cthr["grid"]},
        "sequential_timed": k,
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"], "seconds": report["seconds"]}, indent=2))


if __name__ == "__main__":
    main()
