"""`aimv2-eval encode`: patch tokens of image files from any registered backbone, saved as safetensors.

Each image is stored under its own key (`image/<index>`) because native-resolution backbones give every image its
own token grid; the file list and grids go into the safetensors metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aimv2_eval.errors import UserError
from aimv2_eval.io import atomic_write, write_json_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="registered name (see `aimv2-eval list backbones`)")
    p.add_argument("--weights", help="local directory, file or hub id overriding the backbone's weights")
    p.add_argument("--random-init", action="store_true", help="random weights (no download); for smoke tests")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")


def collect_images(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"no such image file or folder: {path}")
    if not found:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(paths)}")
    return found


def check_out(raw: str) -> Path:
    """The tokens file and its .json sidecar can both be written (checked before any image or weight loads)."""
    from aimv2_eval.paths import writable_file

    out = writable_file(raw, "--out", example="tokens.safetensors")
    if out.with_suffix(".json") == out:
        raise UserError(f"--out {raw}: the file list and grids go to a .json beside the tokens, so the tokens "
                        "cannot be a .json; give a .safetensors file")
    sidecar = out.with_suffix(".json")
    if sidecar.is_dir():
        raise UserError(f"--out {raw}: its file list goes to {sidecar}, which is a folder; remove it or choose "
                        "another --out")
    return out


def main(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from aimv2_eval.backbones import build_eval_transform, create_backbone
    from aimv2_eval.data.images import open_image
    from aimv2_eval.launch.distributed import resolve_device

    if not str(args.backbone).strip():
        raise UserError("--backbone is empty; give a name (`aimv2-eval list backbones`)")
    out_path = check_out(args.out)
    device = resolve_device(args.device)
    files = collect_images(args.images)
    backbone = create_backbone(args.backbone, pretrained=not args.random_init, weights=args.weights).to(device)
    transform = build_eval_transform(backbone.preprocess)
    tensors, grids = {}, []
    start = time.perf_counter()
    with torch.inference_mode():
        for i, f in enumerate(files):
            out = backbone.tokens(transform(open_image(f))[None].to(device))
            tensors[f"image/{i}"] = out.tokens[0].float().cpu().contiguous()
            grids.append(list(out.grid))
    elapsed = time.perf_counter() - start
    meta = {"backbone": backbone.meta.name, "weights_id": backbone.weights_id,
            "files": json.dumps([str(f) for f in files]), "grids": json.dumps(grids)}
    atomic_write(out_path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    write_json_atomic(out_path.with_suffix(".json"), {**meta, "files": [str(f) for f in files], "grids": grids,
                                                       "images_per_s": len(files) / max(elapsed, 1e-9)})
    print(f"encoded {len(files)} images with {backbone.meta.name} ({len(files) / elapsed:.1f} img/s) -> {out_path}")
    return 0
