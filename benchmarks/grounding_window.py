"""Grounding cost by window size (issue 13, Table D2's axis): one training step and inference (images/s) of the
built-in MM-Grounding-DINO with windows of 16 vs 32 tokens, at the embedded detector's scale.

    python benchmarks/grounding_window.py [--backbone aimv2-tiny] [--size 512] [--windows 16 32] [--batch 2]
        [--rounds 4] [--threads N] [--out FILE]

The embedded task's 128 px scenes give an 8 x 8 token grid, where every window >= 8 is global attention; so the
default input is 512 px (a 32 x 32 grid: window 16 = four windows per windowed block, window 32 = one), with the
embedded detector otherwise (tasks/_grounding_scenes.yaml: 64-wide Grounding DINO, MiniLM, 4 global blocks). The
configurations are built side by side and take turns, one pass each per round (the order alternating, so load drift
on a shared machine hits both alike); the first round is a warm-up and the medians of the others are reported, with
the ratio as the median of the per-round ratios. Weights are random: cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from aimv2_eval.backbones import create_backbone, describe_backbone
from aimv2_eval.plugins.base import RunOptions
from aimv2_eval.plugins.grounding import plugin as grounding
from aimv2_eval.tasks import load_task
from aimv2_eval.text import create_text_encoder

OUT = Path(__file__).resolve().parent / "out" / "grounding_window.json"
CAPTION = "orange circle . purple triangle . blue square . yellow star . red diamond . black cross ."
SPANS = [[(0, 13)], [(16, 31)]]


def build(backbone: str, size: int, window: int) -> torch.nn.Module:
    task = load_task("scenes_rec")
    p = grounding.PLUGIN.resolve(task, RunOptions(), describe_backbone(backbone, None))
    p.update(image_size=size, window=window)
    vit = create_backbone(backbone, pretrained=False, trainable=True)
    return grounding.build_detector(vit, create_text_encoder(p["text_encoder"], trainable=True), p)


def train_step(model: torch.nn.Module, images: torch.Tensor) -> float:
    n = len(images)
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 200.0, 180.0], [250.0, 260.0, 400.0, 500.0]]), "spans": SPANS}] * n
    start = time.perf_counter()
    loss = sum(model(images, [CAPTION] * n, targets).values())
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def infer(model: torch.nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    model.predict(images, [CAPTION] * len(images), [SPANS] * len(images), max_detections=30)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="aimv2-tiny")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--windows", type=int, nargs=2, default=[16, 32])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {w: build(args.backbone, args.size, w) for w in args.windows}
    images = torch.randn(args.batch, 3, args.size, args.size)
    times: dict[str, dict[int, list[float]]] = {"train_step_s": {w: [] for w in models},
                                                "infer_s": {w: [] for w in models}}
    for r in range(args.rounds + 1):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for w in order:
            models[w].train()
            t_train = train_step(models[w], images)
            models[w].eval()
            t_infer = infer(models[w], images)
            if r:  # round 0 warms up
                times["train_step_s"][w].append(t_train)
                times["infer_s"][w].append(t_infer)
    a, b = args.windows
    report = {"backbone": args.backbone, "image_size": args.size, "token_grid": args.size // 16, "batch": args.batch,
              "rounds": args.rounds, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    for kind, per in times.items():
        report[kind] = {f"window{w}": round(statistics.median(v), 4) for w, v in per.items()}
        report[f"{kind}_ratio_{a}_over_{b}"] = round(statistics.median(x / y for x, y in zip(per[a], per[b])), 3)
    report["infer_images_per_s"] = {k: round(args.batch / v, 3) for k, v in report["infer_s"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
