"""Harness overhead of an uncached probe epoch: the probe's training epoch against the bare frozen backbone forward at
the same batch size, with the epoch's time broken down, as ratios measured in one run (issue #19; target >= 0.90).

    python benchmarks/harness_overhead.py [--backbone timm:vit_base_patch16_224] [--batch-size 16] [--images 64]
        [--precision bf16] [--workers 0,1] [--reps 2] [--out FILE]

The probe runs through its plugin as `aimv2-eval run --no-feature-cache` would: the imagenet_probe protocol (Table A2:
the 14-head lr x wd grid, RandomResizedCrop + RandAugment + colour jitter) on a synthetic ImageFolder of JPEGs
(ImageNet-like 400 x 300 px, 4 classes) written to a temporary folder, two epochs, the second one timed. The breakdown
of that epoch comes from hooks, not from a copy of the loop: DataLoader iterator creation and `next` (decode +
augment + collate; with workers, the wait for them), `Backbone.tokens` (encoder forward), other module forwards
(heads forward; transforms are modules too, so those inside a fetch count as data), `Tensor.backward` (heads
backward), optimizer steps (torch's global step hooks); "other" is the rest (loss, clipping, logging, bookkeeping).
The bare forward is `Backbone.tokens` under no_grad + autocast on a ready batch. Probe runs and bare forwards take
turns (--reps rounds) and ratios are medians of per-round ratios: absolute numbers depend on the machine's load, the
ratios much less.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from aimv2_eval.backbones import create_backbone
from aimv2_eval.engine import autocast
from aimv2_eval.launch.distributed import init_distributed
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.report.store import environment
from aimv2_eval.tasks import TaskSpec, load_task

CLASSES = 4
VAL_FRACTION = 0.125  # held out of the training folder by the probe's selection rule (not trained on)
COMPONENTS = ("data", "encoder", "heads_forward", "heads_backward", "optimizer_step")


def make_image_folder(root: Path, train: int, test: int, seed: int = 0) -> None:
    """`root/synthetic/{train,test}/<class>/<i>.jpg`: smooth random colour fields, 400 x 300 JPEGs (quality 90)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            folder = root / "synthetic" / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            small.resize((400, 300), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def synthetic_task() -> TaskSpec:
    base = load_task("imagenet_probe")
    protocol = {**base.protocol, "selection": {**base.protocol["selection"], "val_fraction": VAL_FRACTION}}
    data = {"num_classes": CLASSES, "imagefolder": {"dir": "synthetic", "splits": {"train": "train", "test": "test"}}}
    return dataclasses.replace(base, name="synthetic_probe", data=data, protocol=protocol, paper=None)


class Breakdown:
    """Seconds per component, per DataLoader (each probe epoch and evaluation pass makes a new one)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.loader = 0
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COMPONENTS, 0.0))
        self.busy = False  # inside a data fetch or the encoder: module calls there are theirs (transforms are modules)
        self.depth = 0
        self.marks: dict[str, float] = {}

    def add(self, component: str, seconds: float) -> None:
        self.seconds[self.loader][component] += seconds

    @contextlib.contextmanager
    def installed(self) -> Iterator[Breakdown]:
        get_iterator, next_batch, backward = DataLoader._get_iterator, _BaseDataLoaderIter.__next__, torch.Tensor.backward
        tokens = self.backbone.tokens
        me = self

        def timed(component, fn, before=None, outer=False):
            def run(*args, **kwargs):
                if before:
                    before()
                was_busy, t0 = me.busy, time.perf_counter()
                me.busy = was_busy or outer
                try:
                    return fn(*args, **kwargs)
                finally:
                    me.busy = was_busy
                    me.add(component, time.perf_counter() - t0)
            return run

        def new_loader() -> None:
            me.loader += 1

        def forward_pre(module, args):
            if not me.busy:
                me.depth += 1
                if me.depth == 1:
                    me.marks["forward"] = time.perf_counter()

        def forward_post(module, args, output):
            if not me.busy:
                me.depth -= 1
                if me.depth == 0:
                    me.add("heads_forward", time.perf_counter() - me.marks["forward"])

        def step_pre(optimizer, args, kwargs):
            me.marks["step"] = time.perf_counter()

        def step_post(optimizer, args, kwargs):
            me.add("optimizer_step", time.perf_counter() - me.marks["step"])

        handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(forward_pre),
            torch.nn.modules.module.register_module_forward_hook(forward_post),
            register_optimizer_step_pre_hook(step_pre),
            register_optimizer_step_post_hook(step_post),
        ]
        DataLoader._get_iterator = timed("data", get_iterator, before=new_loader, outer=True)
        _BaseDataLoaderIter.__next__ = timed("data", next_batch, outer=True)
        torch.Tensor.backward = timed("heads_backward", backward)
        self.backbone.tokens = timed("encoder", tokens, outer=True)
        try:
            yield self
        finally:
            DataLoader._get_iterator, _BaseDataLoaderIter.__next__, torch.Tensor.backward = get_iterator, next_batch, backward
            del self.backbone.tokens
            for h in handles:
                h.remove()


def probe_epoch(backbone, task: TaskSpec, args, workers: int, root: Path, ctx) -> dict:
    """The second epoch of a two-epoch uncached probe run: seconds, images/s and its breakdown."""
    plugin = get_plugin(task.plugin)
    options = RunOptions(epochs=2, batch_size=args.batch_size, precision=args.precision, feature_cache=None,
                         workers=workers, progress=False, data_root=root, checkpoint_minutes=None)
    protocol = plugin.resolve(task, options, backbone.meta)
    data = plugin.load_data(task, protocol, options)
    with Breakdown(backbone).installed() as breakdown:
        result = plugin.run(backbone, task, protocol, data, options, ctx)
    seconds = float(result.details["epoch_seconds"][-1])
    parts = breakdown.seconds[2]  # the second DataLoader: the second training epoch
    parts = {**parts, "other": seconds - sum(parts.values())}
    return {"epoch_s": seconds, "images_per_s": float(result.throughput["train_images_per_s"]), "parts_s": parts}


def bare_images_per_s(backbone, args, device: torch.device, passes: int = 3) -> float:
    x = torch.randn(args.batch_size, 3, backbone.meta.image_size, backbone.meta.image_size, device=device)
    times = []
    for i in range(passes + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(device, args.precision):
            backbone.tokens(x)
        if i:  # the first pass warms up
            times.append(time.perf_counter() - t0)
    return args.batch_size / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="timm:vit_base_patch16_224", help="built with random weights")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--images", type=int, default=64, help="training images per epoch")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--workers", default="0,1", help="comma-separated DataLoader worker counts to compare")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "harness_overhead.json")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    ctx = init_distributed(args.device)
    torch.manual_seed(0)
    backbone = create_backbone(args.backbone, pretrained=False)
    task = synthetic_task()
    print("absolute numbers depend on the machine's load now; ratios are medians of per-round ratios", flush=True)
    runs: dict[int, list[dict]] = {w: [] for w in workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_image_folder(root, train=round(args.images / (1 - VAL_FRACTION)), test=2 * CLASSES)
        for r in range(args.reps):
            for w in workers:  # probe epochs and bare forwards take turns
                run = probe_epoch(backbone, task, args, w, root, ctx)
                run["bare_images_per_s"] = bare_images_per_s(backbone, args, ctx.device)
                runs[w].append(run)
                parts = " ".join(f"{k} {v:.2f}s" for k, v in run["parts_s"].items())
                print(f"round {r + 1} workers {w}: epoch {run['epoch_s']:.2f}s {run['images_per_s']:.2f} img/s, bare "
                      f"{run['bare_images_per_s']:.2f} img/s | {parts}", flush=True)
    summary = {}
    for w, rs in runs.items():
        summary[f"workers_{w}"] = {
            "ratio_to_bare_forward": statistics.median(r["images_per_s"] / r["bare_images_per_s"] for r in rs),
            "images_per_s": statistics.median(r["images_per_s"] for r in rs),
            "bare_images_per_s": statistics.median(r["bare_images_per_s"] for r in rs),
            "parts_share": {k: statistics.median(r["parts_s"][k] / r["epoch_s"] for r in rs) for k in rs[0]["parts_s"]},
        }
        s = summary[f"workers_{w}"]
        print(f"workers {w}: harness {s['images_per_s']:.2f} img/s = {s['ratio_to_bare_forward']:.3f} x bare forward "
              f"(target >= 0.90); shares " + " ".join(f"{k} {100 * v:.0f}%" for k, v in s["parts_share"].items()))
    report = {"benchmark": "harness_overhead", "config": {**vars(args), "out": str(args.out)},
              "note": "absolute numbers depend on the machine's load; ratios are medians of per-round ratios",
              "summary": summary, "runs": {str(w): rs for w, rs in runs.items()}, "environment": environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
