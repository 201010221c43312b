"""LLaVA evaluation cost: batched KV-cached greedy generation against one sample at a time, and tiled image encoding
(1x1, 2x2, 3x3 crops) against one crop, as ratios measured in one run.

    python benchmarks/llava_generation.py [--backbone aimv2-tiny] [--samples 64] [--batch-size 16]
        [--new-tokens 16] [--lm-width 256] [--lm-layers 4] [--reps 3] [--out FILE]

The LM is a Llama of the given size built from a config (random weights: decoding cost does not depend on them),
`min_new_tokens = max_new_tokens` so that every variant generates the same number of tokens. Targets (issue 14):
batched generation several times faster than one-at-a-time; a 3x3 tiling costs about 9x one crop (each crop is one
tower forward, batched), not more.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aimv2_eval.backbones import create_backbone
from aimv2_eval.plugins.llava import lm as lms
from aimv2_eval.plugins.llava.model import LlavaModel, VisionTower, tile
from aimv2_eval.plugins.llava.prompts import encode_prompt, left_padded
from aimv2_eval.report.store import environment

QUESTIONS = ["how many red shapes are there ?", "what colour is the circle ?", "is there a star ?",
             "what shape is left of the blue square ?"]


def timed(fn, reps: int) -> float:
    fn()  # warm-up: first-call allocation stays out
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="aimv2-tiny")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--lm-width", type=int, default=256)
    ap.add_argument("--lm-layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/llava_generation.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    backbone = create_backbone(args.backbone, pretrained=False)
    tower = VisionTower(backbone)
    tok = lms.word_tokenizer(QUESTIONS)
    config = dict(hidden_size=args.lm_width, intermediate_size=3 * args.lm_width, num_hidden_layers=args.lm_layers,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    model = LlavaModel(tower, lms.build_config_lm(config, tok, seed=0)).eval()
    crop, patch = backbone.meta.image_size, backbone.meta.patch_size
    n_tokens = (crop // patch) ** 2
    prompts = [encode_prompt(tok, QUESTIONS[k % len(QUESTIONS)], n_tokens) for k in range(args.samples)]
    feats = [torch.randn(n_tokens, backbone.meta.embed_dim) for _ in prompts]
    pad = tok.pad_token_id
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=pad)

    def one_at_a_time() -> None:
        for p, f in zip(prompts, feats):
            model.generate(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), [f], **kw)

    def batched(use_cache: bool = True) -> None:
        for lo in range(0, len(prompts), args.batch_size):
            ps, fs = prompts[lo: lo + args.batch_size], feats[lo: lo + args.batch_size]
            ids, mask = left_padded(ps, pad)
            model.generate(ids, mask, fs, use_cache=use_cache, **kw)

    report: dict = {"machine": environment(), "platform": platform.processor(), "args": vars(args) | {"out": str(args.out)}}
    with torch.inference_mode():
        t_single = timed(one_at_a_time, args.reps)
        t_batched = timed(batched, args.reps)
        t_nocache = timed(lambda: batched(use_cache=False), args.reps)
        report["generation"] = {
            "samples_per_s_one_at_a_time": round(args.samples / t_single, 2),
            "samples_per_s_batched_kv_cache": round(args.samples / t_batched, 2),
            "samples_per_s_batched_no_cache": round(args.samples / t_nocache, 2),
            "batched_over_one_at_a_time": round(t_single / t_batched, 2),
            "kv_cache_speedup": round(t_nocache / t_batched, 2),
        }
        image = Image.new("RGB", (640, 480), (90, 120, 200))
        mean = torch.tensor(backbone.preprocess.mean).view(3, 1, 1)

        def encode(grid: int) -> None:
            crops = tile(image, crop, grid, thumbnail=False, fill=(0, 0, 0))
            x = torch.stack([torch.from_numpy(np.asarray(c, dtype=np.float32) / 255).permute(2, 0, 1)
                             for c in crops]) - mean
            tower(x)

        t = {g: timed(lambda g=g: encode(g), args.reps) for g in (1, 2, 3)}
        report["tiling"] = {f"{g}x{g}_seconds": round(t[g], 4) for g in t} | {
            "2x2_over_1x1": round(t[2] / t[1], 2), "3x3_over_1x1": round(t[3] / t[1], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("generation", "tiling")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
