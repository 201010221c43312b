"""What a finished pretraining run leaves beside its weights: tokenizer, preprocessing config, a README saying how
it was made; optionally all of it copied to `run.export_dir`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from aimv2_eval.backbones.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from aimv2_eval.core.model import AIMv2
from aimv2_eval.data.tokenizer import Tokenizer, save_tokenizer
from aimv2_eval.io import write_json_atomic, write_text_atomic
from aimv2_eval.pretraining.recipe import peak_lr


def readme(cfg: dict, command: str, summary: dict, model: AIMv2, files: dict[str, int]) -> str:
    data = json.dumps(cfg["data"]["sources"])
    last = summary.get("last", {})
    enc = model.cfg.encoder
    lines = [
        f"# {cfg['run']['name']}: an AIMv2 pretrained by aimv2-eval",
        "",
        "Built by the project's pretraining core (`aimv2_eval/core/pretrain.py`) with one command:",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed: {cfg['run']['seed']}; data: {data}",
        f"- recipe: {cfg['model']['size']} encoder ({enc.embed_dim}-d, {enc.depth} blocks, {enc.num_heads} heads, "
        f"patch {enc.patch_size}, {enc.image_size}px, {enc.pos_embed} positions), objective {model.cfg.objective}, "
        f"decoder {model.cfg.decoder.width}-d x {model.cfg.decoder.depth}, vocabulary {model.cfg.decoder.vocab_size}",
        f"- {summary['steps']} steps of batch {cfg['batch']['size']} ({summary['samples_seen']} samples), "
        f"peak lr {peak_lr(cfg)}, warmup {cfg['optim']['warmup_steps']}",
        f"- wall time: {summary['elapsed_s']:.0f} s on {torch.get_num_threads()} CPU thread(s), "
        f"{summary.get('cpu_s', 0):.0f} CPU-seconds (torch {torch.__version__})",
        f"- final losses (mean of the last {cfg['run']['log_every']} steps): loss {last.get('loss', float('nan')):.4f}, "
        f"loss_img {last.get('loss_img', float('nan')):.4f}, loss_text {last.get('loss_text', float('nan')):.4f}",
        "",
        "Files: " + ", ".join(f"`{k}` ({v / 1e6:.1f} MB)" for k, v in sorted(files.items())),
        "",
        "`config.json` + `model.safetensors` are the encoder in Apple's key scheme "
        "(`aimv2_eval.core.checkpoints.load_encoder`); `decoder.safetensors` + `decoder_config.json` the multimodal "
        "decoder; `tokenizer.json` the (compact) tokenizer spec; `pretrain.json` the resolved recipe.",
        "",
    ]
    if cfg["run"]["readme_note"]:
        lines += [cfg["run"]["readme_note"].strip(), ""]
    return "\n".join(lines)


def finish_export(cfg: dict, model_dir: Path, tok: Tokenizer, summary: dict, model: AIMv2, command: str) -> Path:
    save_tokenizer(tok, model_dir / "tokenizer.json")
    enc = model.cfg.encoder
    preproc = {"crop_size": {"height": enc.image_size, "width": enc.image_size}, "do_center_crop": True,
               "do_normalize": True, "do_resize": True, "image_mean": list(OPENAI_CLIP_MEAN),
               "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": {"shortest_edge": enc.image_size}}
    write_json_atomic(model_dir / "preprocessor_config.json", preproc)
    files = {p.name: p.stat().st_size for p in model_dir.iterdir() if p.is_file() and p.name != "README.md"}
    write_text_atomic(model_dir / "README.md", readme(cfg, command, summary, model, files))
    export = cfg["run"]["export_dir"]
    if not export:
        return model_dir
    dest = Path(export).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for p in model_dir.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
    return dest
