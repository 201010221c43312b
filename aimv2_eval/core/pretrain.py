"""AIMv2 pretraining loop (paper Section 2, hyperparameters of Table A1, native resolution of Section 2.4).

The loop knows nothing about datasets: it pulls samples from `sample_fn(position, area)`, where `position` is the
global sample counter (the data position saved in checkpoints) and `area` is the patch budget of a native-resolution
batch (None at fixed resolution). Every random choice is a function of (seed, step) or (seed, position), so a run
killed and resumed from its last checkpoint replays the same batches and prefix lengths: the same loss curve.

Table A1 (../shared/paper/tables/tableA1_pretrain_hparams.csv): fully decoupled AdamW, betas (0.9, 0.95), weight
decay 1e-4, peak lr 1e-3 / 8e-4 / 8e-4 / 4e-4 (L / H / 1B / 3B), min lr 1e-5, 12,500 warmup iterations, cosine decay,
gradient clipping 1.0. Section 2.4: high-resolution adaptation uses weight decay 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aimv2_eval.core.checkpoints import read_checkpoint, save_encoder
from aimv2_eval.core.encoder import resize_pos_embed
from aimv2_eval.core.model import AIMv2
from aimv2_eval.engine import Checkpointer, ParamSet, Progress, Schedule, check_finite, clip_grad, param_groups
from aimv2_eval.engine import build_optimizer as build_optimizer_groups
from aimv2_eval.errors import UserError
from aimv2_eval.io import atomic_write, write_text_atomic

# Table A1: peak learning rate per encoder size.
PEAK_LR = {"large": 1e-3, "huge": 8e-4, "1b": 8e-4, "3b": 4e-4}

SampleFn = Callable[[int, int | None], tuple[torch.Tensor, torch.Tensor]]  # (position, area) -> (image CHW, tokens)
Group = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W) of one shape, tokens (B, T)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # Table A1, ViT-L
    min_lr: float = 1e-5  # Table A1
    weight_decay: float = 1e-4  # Table A1; 0 in high-resolution adaptation (Section 2.4)
    betas: tuple[float, float] = (0.9, 0.95)  # Table A1
    eps: float = 1e-8
    warmup_steps: int = 12_500  # Table A1
    steps: int = 1_500_000  # Table A1
    grad_clip: float = 1.0  # Table A1


@dataclass
class NativeConfig:
    """Section 2.4: A = 2^n patches per image, n ~ N(0, 1) truncated to [-1, 1] and mapped linearly to n_range;
    n is rounded so that A is a power of two and B = C / A is exact."""

    enabled: bool = False
    n_range: tuple[float, float] = (7, 12)
    patches_per_batch: int = 8192 * 256  # C: not stated in the paper; ours = the 224px stage's patches per batch


@dataclass
class PretrainConfig:
    out_dir: Path
    optim: OptimConfig = field(default_factory=OptimConfig)
    native: NativeConfig = field(default_factory=NativeConfig)
    batch_size: int = 8192  # Table A1
    micro_batch: int | None = None  # split each batch for memory; gradients are accumulated
    highres: bool = False  # high-resolution adaptation: weight decay 0 (Section 2.4)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    stop_after: int | None = None  # stop (checkpointed) after this step without finishing: a planned preemption
    device: str = "auto"
    dtype: str = "float32"  # autocast dtype: float32 (none) or bfloat16 (no loss scaling needed)
    save_dtype: str = "float32"
    progress: bool = True

    def fingerprint(self, extra: dict) -> str:
        """What must not change between a run and its resumption."""
        keys = {"optim": asdict(self.optim), "native": asdict(self.native), "batch_size": self.batch_size,
                "highres": self.highres, "seed": self.seed, **extra}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- schedule and optimizer
NO_DECAY_KEYS = ("pos_embed", "text_pos", "positional_embedding", "cls_token", "mask_token")


def _no_decay_names(model: nn.Module) -> list[str]:
    """Position tables and learned tokens (CLIP's pooling query, CapPa's mask token) are not decayed (1-D gains,
    biases and the temperature never are)."""
    return [n for n, _ in model.named_parameters() if any(key in n for key in NO_DECAY_KEYS)]


def build_optimizer(model: nn.Module, optim: OptimConfig, highres: bool = False) -> torch.optim.Optimizer:
    """Fully decoupled AdamW (Table A1): the decay follows the schedule, not the lr (p -= wd * lr_t / peak_lr * p).
    Norm gains, biases and position tables are not decayed; high-resolution adaptation uses no decay (Section 2.4)."""
    wd = 0.0 if highres else optim.weight_decay
    groups = param_groups([ParamSet(model, no_weight_decay=_no_decay_names(model))], weight_decay=wd)
    return build_optimizer_groups(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, decoupled_decay=True)


def build_scheduler(opt: torch.optim.Optimizer, optim: OptimConfig) -> Schedule:
    """Linear warmup, then cosine decay to min_lr at the last step (Table A1)."""
    return Schedule(opt, optim.steps, optim.warmup_steps, optim.min_lr)


# ---------------------------------------------------------------- data order and native resolution
@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 11]).permutation(n)


def sample_index(position: int, n: int, seed: int) -> int:
    """Dataset index of the `position`-th sample: a fresh seeded permutation every epoch."""
    return int(_epoch_order(n, seed, position // n)[position % n])


def sample_native_area(seed: int, step: int, n_range: tuple[float, float] = (7, 12)) -> int:
    """Section 2.4: A = 2^n, n from N(0, 1) truncated to [-1, 1], mapped linearly to n_range, rounded."""
    rng = np.random.default_rng([seed, step, 13])
    z = rng.standard_normal()
    while abs(z) > 1:
        z = rng.standard_normal()
    lo, hi = n_range
    return 2 ** round(lo + (z + 1) / 2 * (hi - lo))


def native_grid(height: int, width: int, area: int) -> tuple[int, int]:
    """The patch grid (h, w) with h * w <= area closest to the image's aspect ratio."""
    aspect = width / height
    ideal = math.sqrt(area / aspect)  # rows of the exact fit
    lo = max(1, min(area, math.floor(ideal) - 2))
    hi = max(1, min(area, math.ceil(ideal) + 2))
    best: tuple[float, int, int] = (math.inf, 1, 1)
    for gh in range(lo, hi + 1):
        for gw in {math.floor(gh * aspect), math.ceil(gh * aspect), area // gh}:
            gw = max(1, min(area // gh, gw))
            # aspect error plus half the unused budget, both as log ratios
            score = abs(math.log(gw / gh / aspect)) + 0.5 * math.log(area / (gh * gw))
            if score < best[0]:
                best = (score, gh, gw)
    return best[1], best[2]


def native_batch_size(patches_per_batch: int, area: int) -> int:
    """B_i = C / A_i (Section 2.4)."""
    if patches_per_batch % area:
        raise UserError(f"patches per batch C={patches_per_batch} is not a multiple of A={area}; make C a multiple of "
                        f"2^n_max")
    return patches_per_batch // area


def _groups(samples: list[tuple[torch.Tensor, torch.Tensor]], micro: int | None) -> list[Group]:
    """Stack samples by image shape (native batches mix shapes), then cut into micro-batches."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (img, _) in enumerate(samples):
        by_shape.setdefault(tuple(img.shape), []).append(i)
    out = []
    for idx in by_shape.values():
        step = micro or len(idx)
        for k in range(0, len(idx), step):
            chunk = idx[k : k + step]
            out.append((torch.stack([samples[i][0] for i in chunk]), torch.stack([samples[i][1] for i in chunk])))
    return out


def batches(sample_fn: SampleFn, cfg: PretrainConfig, step: int, position: int) -> Iterator[tuple[list[Group], int]]:
    """Batches from `step` on, starting at data position `position`; yields (groups, next position)."""
    while True:
        if cfg.native.enabled:
            area = sample_native_area(cfg.seed, step, cfg.native.n_range)
            size = native_batch_size(cfg.native.patches_per_batch, area)
        else:
            area, size = None, cfg.batch_size
        samples = [sample_fn(position + k, area) for k in range(size)]
        position += size
        step += 1
        yield _groups(samples, cfg.micro_batch), position


# ---------------------------------------------------------------- checkpoints
def reinit_linears(model: nn.Module, std: float) -> None:
    """Truncated-normal(std) weights and zero biases for every Linear (timm's ViT init), instead of the core's
    xavier-uniform (MAE/AIM). For very short CPU runs: a supervised check of the tiny encoder on digits reached
    83% after 200 steps with std 0.02 against 43% with xavier-uniform."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_from(model: AIMv2, source: str | Path) -> None:
    """Start from a pretrained run's output (encoder + decoder), e.g. for high-resolution or native adaptation.

    A learned position table is resized (bicubic) to the new grid; a missing decoder (or CLIP head) starts fresh.
    """
    ckpt = read_checkpoint(source)
    sd = dict(ckpt.encoder_state)
    pos = sd.get("preprocessor.pos_embed")
    own = model.encoder.preprocessor.pos_embed
    if pos is not None and own is not None and pos.shape != own.shape:
        old = round(pos.shape[1] ** 0.5)
        sd["preprocessor.pos_embed"] = resize_pos_embed(pos, old, (model.encoder.cfg.grid,) * 2)
    if pos is not None and own is None:
        sd.pop("preprocessor.pos_embed")  # learned table -> sin-cos encoder (native variant)
    missing, unexpected = model.encoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UserError(f"{ckpt.weights_path} does not fit this encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    dec_file = ckpt.weights_path.parent / model.head_file
    if dec_file.is_file():
        dec = load_file(str(dec_file))
        shapes = {k: v.shape for k, v in model.head.state_dict().items()}
        bad = [k for k, v in dec.items() if shapes.get(k) != v.shape]
        if bad or set(dec) != set(shapes):
            raise UserError(f"{dec_file} does not fit this decoder (first mismatch: {(bad or sorted(set(dec) ^ set(shapes)))[:1]}); "
                            "use the same decoder, objective and tokenizer as the run it came from")
        model.head.load_state_dict(dec)


def export_model(model: AIMv2, directory: Path, meta: dict, save_dtype: str = "float32") -> Path:
    """Encoder through `save_encoder` (Apple key scheme + config.json), decoder (or CLIP head) weights and the
    objective's config beside it."""
    dtype = getattr(torch, save_dtype)
    encoder = model.encoder
    if dtype != torch.float32:
        import copy

        encoder = copy.deepcopy(encoder).to(dtype)
    out = save_encoder(encoder, directory, scheme="apple")
    dec = {k: v.detach().cpu().to(dtype).contiguous() for k, v in model.head.state_dict().items()}
    atomic_write(out / model.head_file, lambda tmp: save_file(dec, str(tmp), metadata={"format": "pt"}))
    cfg = model.cfg
    decoder_cfg = {**cfg.decoder.to_dict(), "objective": cfg.objective, "alpha": cfg.alpha,
                   "encoder_attention": cfg.encoder_attention, "eot_id": cfg.eot_id,
                   "loss_reduction": cfg.loss_reduction, "parallel_fraction": cfg.parallel_fraction}
    write_text_atomic(out / "decoder_config.json", json.dumps(decoder_cfg, indent=2))
    write_text_atomic(out / "pretrain.json", json.dumps(meta, indent=2, default=str))
    return out


# ---------------------------------------------------------------- the loop
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_contrastive_batches(model: AIMv2, cfg: PretrainConfig) -> None:
    """A contrastive loss (clip) takes its negatives from the forward pass: micro-batches or native-resolution groups
    would shrink CLIP's batch (Table 9b: 8k and 16k) to each piece. Gradient caching is not implemented."""
    if not model.cfg.contrastive:
        return
    split = cfg.micro_batch is not None and cfg.micro_batch < cfg.batch_size
    if split or cfg.native.enabled:
        raise UserError(f"objective {model.cfg.objective} needs each batch in one forward pass: set "
                        "batch.micro_batch=null and native.enabled=false (or lower batch.size to fit memory)")


def _truncate_log(path: Path, step: int) -> None:
    """Drop metric lines the killed run wrote after its last checkpoint."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def pretrain(model: AIMv2, sample_fn: SampleFn, cfg: PretrainConfig, meta: dict | None = None,
             resume: bool = True) -> dict:
    """Train; resume from `out_dir/checkpoints/last.pt` when present. Returns a summary (final losses, timing).

    `meta` (the resolved recipe, data and tokenizer) is stored with the exported model and its keys
    'model'/'data'/'text' join the resume fingerprint.
    """
    _check_contrastive_batches(model, cfg)
    meta = dict(meta or {})
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoints" / "last.pt", out / "metrics.jsonl"
    # The model's whole config joins the fingerprint: a loss setting (loss_reduction, parallel_fraction) changes the
    # curve without changing any weight's shape.
    fingerprint = cfg.fingerprint({**{k: meta.get(k) for k in ("model", "data", "text")},
                                   "model_config": asdict(model.cfg)})
    device = _device(cfg.device)
    model.to(device).train()
    opt = build_optimizer(model, cfg.optim, cfg.highres)
    sched = build_scheduler(opt, cfg.optim)
    if cfg.dtype not in ("float32", "bfloat16"):
        raise UserError(f"run.dtype must be float32 or bfloat16, got {cfg.dtype!r}")
    autocast_dtype = getattr(torch, cfg.dtype)

    step, position, elapsed, cpu = 0, 0, 0.0, 0.0
    checkpointer = Checkpointer(ckpt_path, fingerprint, fix="pick a new run.out_dir or delete it to start over")
    state = checkpointer.load() if resume else None  # restores the RNG states too
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, position, elapsed, cpu = state["step"], state["position"], state["elapsed"], state.get("cpu", 0.0)
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
    _truncate_log(log_path, step)

    def checkpoint() -> None:
        checkpointer.save({"step": step, "position": position, "elapsed": elapsed, "cpu": cpu,
                           "model": model.state_dict(), "optimizer": opt.state_dict()})

    end = cfg.optim.steps if cfg.stop_after is None else min(cfg.optim.steps, cfg.stop_after)
    bar = Progress(cfg.optim.steps - step, "pretrain", enabled=cfg.progress)
    window: dict[str, float] = {"loss": 0.0, "loss_img": 0.0, "loss_text": 0.0, "patches": 0, "images": 0, "n": 0}
    last: dict = {}
    postfix: dict[str, str] = {}
    t_window = time.perf_counter()
    stream = batches(sample_fn, cfg, step, position)
    with open(log_path, "a") as log:
        while step < end:
            t0, c0 = time.perf_counter(), time.process_time()
            sched.set(step)
            groups, next_position = next(stream)
            total = sum(len(images) for images, _ in groups)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # prefix lengths M of this step
            sums = {"loss": 0.0, "loss_img": 0.0, "loss_text": 0.0}
            patches = 0
            for images, tokens in groups:
                images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
                    losses = model(images, tokens, generator=gen)
                weight = len(images) / total
                (losses["loss"] * weight).backward()
                for k in sums:
                    sums[k] += float(losses[k].detach()) * weight
                patches += len(images) * (images.shape[-2] // model.cfg.encoder.patch_size) * (
                    images.shape[-1] // model.cfg.encoder.patch_size)
            lr = opt.param_groups[0]["lr"]
            check_finite(torch.tensor(sums["loss"]), step, f"(lr {lr:.2e}) lower optim.lr, raise optim.warmup_steps "
                         "or check the data for broken images/captions")
            grad_norm = clip_grad(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step, position = step + 1, next_position
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0  # CPU seconds, all threads: less sensitive to a shared machine

            for k, v in sums.items():
                window[k] += v
            window["patches"] += patches
            window["images"] += total
            window["n"] += 1
            if step % cfg.log_every == 0 or step == end:
                dt = max(time.perf_counter() - t_window, 1e-9)
                n = window["n"]
                last = {"step": step, "loss": window["loss"] / n, "loss_img": window["loss_img"] / n,
                        "loss_text": window["loss_text"] / n, "lr": lr, "grad_norm": grad_norm,
                        "patches_per_s": window["patches"] / dt, "images_per_s": window["images"] / dt,
                        "position": position, "elapsed_s": round(elapsed, 3), "cpu_s": round(cpu, 3)}
                log.write(json.dumps(last) + "\n")
                log.flush()
                postfix = {"loss": f"{last['loss']:.4f}", "img": f"{last['loss_img']:.3f}",
                           "txt": f"{last['loss_text']:.3f}", "lr": f"{lr:.2e}", "pps": f"{last['patches_per_s']:.0f}"}
                window = dict.fromkeys(window, 0)
                t_window = time.perf_counter()
            bar.update(1, **postfix)
            if step % cfg.ckpt_every == 0 or step == end:
                checkpoint()
    bar.close()

    summary = {"steps": step, "finished": step >= cfg.optim.steps, "elapsed_s": round(elapsed, 1), "cpu_s": round(cpu, 1),
               "samples_seen": position, "last": last, "fingerprint": fingerprint}
    if summary["finished"]:
        model.eval()
        summary["model_dir"] = str(export_model(model, out / "model", {**meta, "summary": summary}, cfg.save_dtype))
    return summary
