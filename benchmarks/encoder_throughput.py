"""Encoder throughput: ours vs timm vs transformers on the same weights (images/s, ratio to timm).

    python benchmarks/encoder_throughput.py [--size large] [--batch 8] [--res 224] [--reps 5] [--out FILE]

The three models run round-robin (one timed pass each per repetition) so that machine noise hits all of them
alike; the median pass time is reported. fp32 and bf16 autocast on the CPU (or CUDA when --device cuda).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel

from aimv2_eval.core.checkpoints import from_apple, infer_config, to_apple
from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.variants import encoder_config

TIMM_NAMES = {"large": "aimv2_large_patch14_224", "huge": "aimv2_huge_patch14_224", "1b": "aimv2_1b_patch14_224"}


def build_models(size: str, device: str) -> dict[str, torch.nn.Module]:
    """Three implementations sharing one set of random weights."""
    ref = timm.create_model(TIMM_NAMES[size], pretrained=False).eval()
    sd, _ = to_apple(ref.state_dict())
    ours = AIMv2Encoder(infer_config(sd)).eval()
    ours.load_state_dict(sd)
    cfg = encoder_config(size)
    hf = Aimv2VisionModel(
        Aimv2VisionConfig(
            hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_hidden, num_hidden_layers=cfg.depth,
            num_attention_heads=cfg.num_heads, use_head=False, attn_implementation="sdpa",
        )
    ).eval()
    hf.load_state_dict(from_apple(sd, "hf"), strict=False)
    models = {"aimv2_eval": ours, "timm": ref, "transformers": hf}
    return {k: m.to(device) for k, m in models.items()}


def forward_fn(name: str, model: torch.nn.Module):
    if name == "timm":
        return model.forward_features
    if name == "transformers":
        return lambda x: model(pixel_values=x).last_hidden_state
    return model


def bench(models, x, dtype: torch.dtype | None, reps: int) -> dict[str, list[float]]:
    device_type = x.device.type
    times: dict[str, list[float]] = {k: [] for k in models}
    fns = {k: forward_fn(k, m) for k, m in models.items()}
    with torch.inference_mode(), torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for fn in fns.values():  # warm-up
            fn(x)
        for _ in range(reps):
            for name, fn in fns.items():
                if device_type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(x)
                if device_type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(TIMM_NAMES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/out/encoder_throughput.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = build_models(args.size, args.device)
    x = torch.randn(args.batch, 3, args.res, args.res, device=args.device)
    report = {
        "benchmark": "encoder_throughput", "size": args.size, "batch": args.batch, "resolution": args.res,
        "reps": args.reps, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "results": {},
    }
    for label, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16)):
        times = bench(models, x, dtype, args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        report["results"][label] = {
            k: {"images_per_s": args.batch / t, "median_s": t, "ratio_to_timm": med["timm"] / t} for k, t in med.items()
        }
        print(label, {k: f"{args.batch / t:.2f} img/s (x{med['timm'] / t:.3f} timm)" for k, t in med.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
