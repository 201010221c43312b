"""Encoder throughput: ours against timm (and transformers) on the same weights, and the registry's ViT wrappers
against calling timm / open_clip directly, as ratios measured in one run (issue #19).

    python benchmarks/encoder_throughput.py [--size base|large|huge|1b] [--batch 4] [--res 224] [--reps 5]
        [--modes fp32,bf16,bf16_precast] [--transformers] [--part all|encoder|wrappers] [--out FILE]

Every call runs as the probe runs its frozen backbone: under torch.no_grad(), and for bf16 inside a torch.autocast
entered per call (autocast casts the fp32 weights again on every call: a frozen model's are never cached). The
compared models take turns in every round (ours, timm, ours, timm, ...), and each ratio is the median over rounds of
the ratio within a round, so that load on a shared machine hits all alike: absolute numbers depend on the load, the
ratios much less. `base` is a ViT-B-size AIMv2 (width 768, depth 12, head dim 128; not a released model) for quick
runs; large / huge / 1b are the released sizes.

The limit: a GEMM of the model's MLP shape takes a turn in every round too, giving the machine's GEMM rate per dtype
now; each model's rate (FLOPs from torch.utils.flop_counter) is reported as a fraction of it (target: 85% in bf16).
Mode `bf16_precast` stores the GEMM weights (Linear, Conv2d) in bf16 before autocast sees them, as a frozen harness
could: the outputs equal `bf16` bit for bit (checked), so the gap is autocast's per-call weight casts.

Wrappers: a randomly initialised ViT-B/16 from timm (`timm:vit_base_patch16_224`) and from open_clip
(`open_clip:ViT-B-16`), built through the registry; `Backbone.tokens` (what the tasks call) against the same module's
own forward (timm `forward_features`, open_clip `visual(x)`). Target: < 3% overhead.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aimv2_eval.core.checkpoints import from_apple, infer_config, to_apple
from aimv2_eval.core.encoder import AIMv2Encoder

# size -> (timm model, overrides): `base` is the large architecture at ViT-B width and depth, head dim 128 as AIMv2's
SIZES = {
    "base": ("aimv2_large_patch14_224", {"embed_dim": 768, "depth": 12, "num_heads": 6}),
    "large": ("aimv2_large_patch14_224", {}),
    "huge": ("aimv2_huge_patch14_224", {}),
    "1b": ("aimv2_1b_patch14_224", {}),
}
MODES = {"fp32": None, "bf16": torch.bfloat16, "bf16_precast": torch.bfloat16}
WRAPPED = {"timm": "timm:vit_base_patch16_224", "open_clip": "open_clip:ViT-B-16"}


# ---------------------------------------------------------------- timing
def call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """One frozen forward as the probe's `encode` runs it (no_grad, autocast entered per call)."""
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return fn(x)


def rounds(turns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each turn in each of `reps` rounds, after one warm-up round; every other round runs the turns in
    reverse order, so that no model always follows the same one."""
    times: dict[str, list[float]] = {k: [] for k in turns}
    for r in range(reps + 1):
        for name, turn in (list(turns.items()) if r % 2 else list(turns.items())[::-1]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            turn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of times[num] / times[den]: neighbours in time share the machine's load."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def count_flops(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        call(fn, x, None)
    return counter.get_total_flops()


class Gemm:
    """A few GEMMs of one shape in one dtype: the machine's rate for that dtype, measured in the same rounds."""

    def __init__(self, m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeat: int = 3) -> None:
        self.a = torch.randn(m, k, device=device).to(dtype)
        self.b = torch.randn(k, n, device=device).to(dtype)
        self.repeat = repeat
        self.flops = 2 * m * k * n * repeat

    def __call__(self) -> None:
        for _ in range(self.repeat):
            torch.mm(self.a, self.b)


def precast_gemm_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store Linear / Conv2d parameters in `dtype`: what autocast would cast them to on every call."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.to(dtype)
    return model


# ---------------------------------------------------------------- ours vs timm (vs transformers)
def build_models(size: str, device: str, with_transformers: bool) -> dict[str, nn.Module]:
    """Implementations sharing one set of random weights."""
    name, overrides = SIZES[size]
    ref = timm.create_model(name, pretrained=False, **overrides).eval()
    sd, _ = to_apple(ref.state_dict())
    heads = overrides.get("num_heads")
    cfg = infer_config(sd, {"num_attention_heads": heads} if heads else None)
    ours = AIMv2Encoder(cfg).eval()
    ours.load_state_dict(sd)
    models: dict[str, nn.Module] = {"aimv2_eval": ours, "timm": ref}
    if with_transformers:
        from transformers import Aimv2VisionConfig, Aimv2VisionModel

        hf = Aimv2VisionModel(Aimv2VisionConfig(
            hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_hidden, num_hidden_layers=cfg.depth,
            num_attention_heads=cfg.num_heads, use_head=False, attn_implementation="sdpa",
        )).eval()
        hf.load_state_dict(from_apple(sd, "hf"), strict=False)
        models["transformers"] = hf
    return {k: m.to(device).requires_grad_(False) for k, m in models.items()}


def forward_fn(name: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "timm":
        return model.forward_features
    if name == "transformers":
        return lambda x: model(pixel_values=x).last_hidden_state
    return model


def encoder_part(args, device: torch.device) -> dict:
    models = build_models(args.size, args.device, args.transformers)
    fns = {k: forward_fn(k, m) for k, m in models.items()}
    x = torch.randn(args.batch, 3, args.res, args.res, device=device)
    flops = count_flops(fns["aimv2_eval"], x)
    ours = models["aimv2_eval"].cfg
    tokens = (args.res // ours.patch_size) ** 2
    out: dict = {"gflop_per_image": flops / args.batch / 1e9, "modes": {}}
    reference = {}
    for mode in args.modes:
        dtype = MODES[mode]
        if mode == "bf16_precast":
            reference = {k: call(fn, x, dtype) for k, fn in fns.items()}
            for m in models.values():
                precast_gemm_weights(m, torch.bfloat16)
        gemm = Gemm(args.batch * tokens, ours.embed_dim, ours.mlp_hidden, dtype or torch.float32, device)
        turns = {k: (lambda fn=fn, dtype=dtype: call(fn, x, dtype)) for k, fn in fns.items()}
        times = rounds({**turns, "gemm": gemm}, args.reps, device)
        gemm_rate = statistics.median(gemm.flops / t for t in times["gemm"])
        row: dict = {"gemm_gflop_per_s": gemm_rate / 1e9}
        for k in fns:
            t = statistics.median(times[k])
            row[k] = {"images_per_s": args.batch / t, "median_s": t, "ratio_to_timm": paired_ratio(times, "timm", k),
                      "fraction_of_gemm_limit": paired_ratio(times, "gemm", k) * flops / gemm.flops}
        if reference:
            row["bit_identical_to_bf16"] = {k: torch.equal(call(fn, x, dtype), reference[k]) for k, fn in fns.items()}
        out["modes"][mode] = row
        print(f"{mode:13s} GEMM {gemm_rate / 1e9:7.1f} GFLOP/s | " + " | ".join(
            f"{k} {row[k]['images_per_s']:.2f} img/s x{row[k]['ratio_to_timm']:.3f} timm "
            f"{100 * row[k]['fraction_of_gemm_limit']:.0f}% of GEMM" for k in fns), flush=True)
    return out


# ---------------------------------------------------------------- registry wrappers vs the libraries
def direct_fn(family: str, backbone) -> Callable[[torch.Tensor], torch.Tensor]:
    return backbone.model.forward_features if family == "timm" else backbone.visual


def wrappers_part(args, device: torch.device) -> dict:
    from aimv2_eval.backbones import create_backbone

    out: dict = {}
    for family, name in WRAPPED.items():
        backbone = create_backbone(name, pretrained=False).to(device)
        direct = direct_fn(family, backbone)
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        wrapped_out, direct_out = call(backbone.tokens, x, None), call(direct, x, None)
        # the same computation: timm's tokens after the prefix, open_clip's pooled output = the normed class token
        same = (wrapped_out.tokens, direct_out[:, backbone.meta.num_prefix_tokens:]) if family == "timm" else (
            wrapped_out.prefix[:, 0], direct_out)
        row: dict = {"backbone": name, "max_abs_diff_fp32": (same[0] - same[1]).abs().max().item()}
        for mode in ("fp32", "bf16"):
            dtype = MODES[mode]
            turns = {"direct": partial(call, direct, x, dtype), "wrapper": partial(call, backbone.tokens, x, dtype)}
            times = rounds(turns, args.reps, device)
            overhead = paired_ratio(times, "wrapper", "direct") - 1
            row[mode] = {"direct_s": statistics.median(times["direct"]), "wrapper_s": statistics.median(times["wrapper"]),
                         "overhead": overhead}
            print(f"wrapper {family:9s} {mode:5s} direct {row[mode]['direct_s']:.3f}s wrapper "
                  f"{row[mode]['wrapper_s']:.3f}s overhead {100 * overhead:+.1f}% (target < 3%)", flush=True)
        if family == "open_clip":  # for the record: open_clip's own module, without our attention pre-hook
            row["bf16_as_shipped_s"] = shipped_open_clip_seconds(backbone, x)
            print(f"open_clip as shipped, bf16, one call: {row['bf16_as_shipped_s']:.2f}s "
                  "(its attention projects a non-contiguous view under CPU autocast)", flush=True)
        out[family] = row
    return out


def shipped_open_clip_seconds(backbone, x: torch.Tensor) -> float:
    import open_clip

    from aimv2_eval.backbones.open_clip import _quiet

    with _quiet():
        visual = open_clip.create_model(WRAPPED["open_clip"].split(":", 1)[1], pretrained=None).visual
    visual.proj = None
    visual.load_state_dict(backbone.visual.state_dict())
    visual = visual.eval().requires_grad_(False).to(x.device)
    t0 = time.perf_counter()
    call(visual, x, torch.bfloat16)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="large", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", default="fp32,bf16,bf16_precast",
                    help=f"comma-separated, of {', '.join(MODES)} (bf16_precast runs last: it changes the models)")
    ap.add_argument("--transformers", action="store_true", help="also time transformers' Aimv2VisionModel")
    ap.add_argument("--part", default="all", choices=["all", "encoder", "wrappers"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/out/encoder_throughput.json")
    args = ap.parse_args()
    # timm's RmsNorm hands torch a bf16 input and an fp32 weight under CPU autocast (ours does not:
    # tests/test_rmsnorm_autocast.py); torch's warning about it would read as ours.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    args.modes = sorted(args.modes.split(","), key=list(MODES).index)  # precasting changes the models: last
    torch.manual_seed(0)
    device = torch.device(args.device)
    report = {
        "benchmark": "encoder_throughput", "size": args.size, "batch": args.batch, "resolution": args.res,
        "reps": args.reps, "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "note": "absolute numbers depend on the machine's load at the time; the ratios are measured turn by turn",
    }
    print("absolute numbers depend on the machine's load now; ratios are medians of turn-by-turn ratios", flush=True)
    if args.part in ("all", "encoder"):
        report["encoder"] = encoder_part(args, device)
    if args.part in ("all", "wrappers"):
        report["wrappers"] = wrappers_part(args, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
