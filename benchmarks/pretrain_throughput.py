"""Pretraining throughput: patches/s and peak memory for the tiny recipe and for one AIMv2-L step at batch 2.

    python benchmarks/pretrain_throughput.py [--steps 12] [--threads 1] [--skip-large]

Each measurement runs in its own process so that its peak memory is its own; the JSON report goes to
benchmarks/out/pretrain_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out" / "pretrain_throughput.json"


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_tiny(steps: int) -> dict:
    """The tiny recipe end to end (data generation, tokenization, forward, backward, AdamW), a few steps."""
    from aimv2_eval.pretraining import load_config, run

    with tempfile.TemporaryDirectory() as tmp:
        log_every = max(1, steps // 3)
        cfg = load_config("tiny", [f"optim.steps={steps}", f"run.out_dir={tmp}", "run.export_dir=null",
                                   "run.progress=false", f"run.log_every={log_every}", f"run.threads={torch.get_num_threads()}"])
        summary = run(cfg)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows  # the first window holds one-off costs (allocations, caches)
    enc = cfg["model"]
    return {
        "what": "tiny recipe (configs/pretrain/tiny.yaml), data pipeline included",
        "model": enc["size"], "batch": cfg["batch"]["size"], "steps": steps,
        "patches_per_s": sum(r["patches_per_s"] for r in steady) / len(steady),
        "images_per_s": sum(r["images_per_s"] for r in steady) / len(steady),
        "s_per_step": summary["elapsed_s"] / steps, "cpu_s_per_step": summary["cpu_s"] / steps,
        "peak_memory_mb": _peak_mb(),
    }


def measure_large(batch: int = 2) -> dict:
    """One full AIMv2-L pretraining step (Table 1 encoder + 1024-d x 12 decoder, CLIP vocabulary, 224px)."""
    from aimv2_eval.core.model import AIMv2
    from aimv2_eval.core.pretrain import OptimConfig, build_optimizer
    from aimv2_eval.core.variants import model_config
    from aimv2_eval.data.tokenizer import ClipTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = AIMv2(model_config("large")).to(device)
    opt = build_optimizer(model, OptimConfig())
    tok = ClipTokenizer()
    images = torch.randn(batch, 3, 224, 224, device=device)
    tokens = tok(["a small red circle left of the square"] * batch).to(device)
    timings = []
    for _ in range(2):  # the first step allocates the optimizer state
        t0 = time.perf_counter()
        loss = model(images, tokens)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t0)
    patches = batch * (224 // 14) ** 2
    return {
        "what": "one AIMv2-L step (forward, backward, clip, AdamW)", "batch": batch, "device": device.type,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "first_step_s": timings[0], "step_s": timings[1], "patches_per_s": patches / timings[1],
        "loss": float(loss), "peak_memory_mb": _peak_mb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--only", choices=("tiny", "large"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        result = measure_tiny(args.steps) if args.only == "tiny" else measure_large()
        print(json.dumps(result))
        return 0
    report = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "cuda": torch.cuda.is_available()}
    for name in ("tiny", "large"):
        if name == "large" and args.skip_large:
            continue
        proc = subprocess.run([sys.executable, __file__, "--only", name, "--steps", str(args.steps), "--threads",
                               str(args.threads)], capture_output=True, text=True)
        if proc.returncode:
            report[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            report[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(report[name]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
