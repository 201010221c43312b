"""The pretraining loop: schedule and decoupled decay, native-resolution batches, objectives that learn, resume after a
kill, export, and the committed tiny AIMv2."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from aimv2_eval.cli import main as cli_main
from aimv2_eval.core.checkpoints import load_encoder
from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.model import AIMv2, AIMv2Config
from aimv2_eval.core.pretrain import (
    NativeConfig,
    OptimConfig,
    PretrainConfig,
    batches,
    build_optimizer,
    build_scheduler,
    init_from,
    native_grid,
    pretrain,
    reinit_linears,
    sample_index,
    sample_native_area,
)
from aimv2_eval.core.variants import encoder_config
from aimv2_eval.data.pairs import ScenePairs
from aimv2_eval.data.tokenizer import ClipTokenizer, load_tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.pretraining import Augment, Sampler, build_model, load_config, peak_lr, run

SMALL_DECODER = DecoderConfig(width=32, depth=1, num_heads=2, vocab_size=16, max_text_len=8)
TINY_DIR = Path(__file__).resolve().parents[1] / "aimv2_eval" / "assets" / "aimv2-tiny"


def _overrides(out_dir, objective="aimv2", steps=24, **extra):
    """A micro recipe: 64-d encoder, 56px (16 patches), 200 scenes; a few seconds on 2 cores."""
    over = {
        "model.size": "micro", "model.image_size": 56, "model.objective": objective,
        "model.encoder": "{embed_dim: 64, depth: 2, num_heads: 2}", "model.decoder": "{width: 64, depth: 1, num_heads: 2}",
        "text.context_length": 48, "text.compact_vocab": 300,
        "data.sources": "[{kind: scenes, n: 200, seed: 0, image_size: 56}]", "data.augment.crop_size": 56,
        "batch.size": 16, "optim.steps": steps, "optim.warmup_steps": 4, "optim.lr": 3e-3,
        "run.out_dir": str(out_dir), "run.export_dir": None, "run.progress": False, "run.log_every": 1,
        "run.ckpt_every": 1000, "run.threads": 1,
    }
    over.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in over.items()]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out_dir, **kw):
    return load_config("tiny", _overrides(out_dir, **kw))


def _losses(out_dir, key="loss"):
    return [json.loads(line)[key] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- schedule and optimizer
def _lr(step, o):
    opt = build_optimizer(torch.nn.Linear(2, 2), o)
    build_scheduler(opt, o).set(step)
    return opt.param_groups[0]["lr"]


def test_warmup_then_cosine_to_min_lr():
    o = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, steps=110)
    assert _lr(0, o) == pytest.approx(1e-4)  # Table A1: linear warmup, the first step already learns
    assert _lr(9, o) == pytest.approx(1e-3)
    assert _lr(60, o) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert _lr(110, o) == pytest.approx(1e-5)
    lrs = [_lr(s, o) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_fully_decoupled_weight_decay_follows_the_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=True), torch.nn.LayerNorm(4))
    o = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10, steps=20)
    opt = build_optimizer(model, o)
    sched = build_scheduler(opt, o)
    sched.set(0)
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves the weights
    opt.step()
    lr0 = _lr(0, o)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0)
    # decay = wd * lr_t / peak_lr (not wd * lr_t as torch's AdamW alone would do)
    assert torch.allclose(model[0].weight, w0 * (1 - 0.1 * lr0 / 1e-3))
    assert torch.equal(model[0].bias, b0)  # biases and norms are not decayed
    assert all(g["weight_decay"] == 0 for g in build_optimizer(model, o, highres=True).param_groups)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_reinit_linears_is_truncated_normal():
    model = AIMv2(AIMv2Config(encoder=encoder_config("micro", image_size=28), decoder=SMALL_DECODER, eot_id=15))
    reinit_linears(model, 0.02)
    w = model.encoder.trunk.blocks[0].mlp.fc1.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.003 and float(w.abs().max()) <= 0.04
    assert not model.decoder.pixel_head.bias.any()


def test_paper_recipe_is_table_a1():
    cfg = load_config("paper")
    o = cfg["optim"]
    assert (o["min_lr"], o["weight_decay"], o["betas"], o["warmup_steps"], o["steps"], o["grad_clip"]) == (
        1e-5, 1e-4, [0.9, 0.95], 12500, 1500000, 1.0)
    assert cfg["batch"]["size"] == 8192 and cfg["text"]["context_length"] == 77
    a = cfg["data"]["augment"]
    assert (a["crop_size"], a["scale"], a["ratio"], a["interpolation"], a["hflip"]) == (
        224, [0.4, 1.0], [0.75, 1.33], "bicubic", 0.5)
    lrs = [peak_lr(load_config("paper", [f"model.size={s}"])) for s in ("large", "huge", "1b", "3b")]
    assert lrs == [1e-3, 8e-4, 8e-4, 4e-4]


# ---------------------------------------------------------------- native resolution (Section 2.4)
def test_native_area_distribution():
    areas = [sample_native_area(0, s) for s in range(3000)]
    ns = np.log2(areas)
    assert set(ns) <= set(range(7, 13)) and {7, 12} <= set(ns)
    assert abs(ns.mean() - 9.5) < 0.1  # symmetric about the middle of [7, 12]
    counts = np.bincount(ns.astype(int))[7:]
    assert counts[0] < counts[2] and counts[5] < counts[3]  # truncated normal: fewer at the ends


def test_native_grid_respects_budget_and_aspect():
    for h, w in [(100, 100), (100, 200), (300, 100), (480, 640), (10, 1000)]:
        for area in (16, 128, 1024, 4096):
            gh, gw = native_grid(h, w, area)
            assert 1 <= gh * gw <= area
            if min(gh, gw) >= 4:
                assert abs(math.log((gw / gh) / (w / h))) < 1.2 / min(gh, gw) + 0.02
                assert gh * gw >= area / 2


def test_native_batches_keep_patches_per_batch_constant():
    tok = ClipTokenizer(context_length=32)
    src = ScenePairs.generate(n=64, seed=0, image_size=84, aspect_ratios=(0.5, 1.0, 2.0))
    sampler = Sampler(src, tok, Augment(84, (0.4, 1.0), (0.75, 1.33), "bicubic", 0.5), seed=0, patch_size=14)
    cfg = PretrainConfig(out_dir=Path("."), native=NativeConfig(True, (3, 5), 256), seed=1)
    stream = batches(sampler, cfg, step=0, position=0)
    seen_areas, shapes = set(), set()
    for step in range(8):
        groups, _ = next(stream)
        area = sample_native_area(1, step, (3, 5))
        seen_areas.add(area)
        assert sum(len(images) for images, _ in groups) * area == 256  # C = A_i * B_i
        for images, tokens in groups:
            gh, gw = images.shape[-2] // 14, images.shape[-1] // 14
            assert images.shape[-2] % 14 == 0 and images.shape[-1] % 14 == 0
            assert area / 2 <= gh * gw <= area
            shapes.add((gh, gw))
            assert tokens.shape == (len(images), 32)
    assert len(seen_areas) >= 2 and any(h != w for h, w in shapes)  # sizes and aspect ratios vary
    # the source aspect ratio is kept: wide scenes give wide grids
    for position in range(6):
        img, _ = sampler.image(position, 64)
        src_img = src[sample_index(position, len(src), 0)].image
        assert abs(math.log((img.width / img.height) / (src_img.width / src_img.height))) < 0.25


def test_native_training_runs(tmp_path):
    over = _overrides(tmp_path, steps=3, **{
        "native.enabled": "true", "native.n_range": "[3, 5]", "native.patches_per_batch": 256,
        "model.native_pos_embed": "true",
        "data.sources": "[{kind: scenes, n: 50, seed: 0, image_size: 70, aspect_ratios: [0.5, 1.0, 2.0]}]"})
    summary = run(load_config("tiny", over))
    assert summary["finished"] and all(math.isfinite(v) for v in _losses(tmp_path))
    assert summary["samples_seen"] == sum(256 // sample_native_area(0, s, (3, 5)) for s in range(3))


# ---------------------------------------------------------------- the loop learns
@pytest.mark.parametrize("objective,key", [("aimv2", "loss"), ("cap", "loss_text"), ("aimv1", "loss_img")])
def test_loss_falls_for_each_objective(tmp_path, objective, key):
    summary = run(_cfg(tmp_path, objective=objective))
    losses = _losses(tmp_path, key)
    assert summary["finished"] and len(losses) == 24
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.85 * first, (objective, first, last)
    if objective == "aimv1":
        assert _losses(tmp_path, "loss_text") == [0.0] * 24
    if objective == "cap":
        assert _losses(tmp_path, "loss_img") == [0.0] * 24


KILLER = textwrap.dedent("""
    import json, os, signal, sys
    from aimv2_eval import pretraining as P
    cfg, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
    call = P.Sampler.__call__
    def killing(self, position, area):
        if position == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a real kill
        return call(self, position, area)
    P.Sampler.__call__ = killing
    P.run(cfg)
""")


def test_resume_after_kill_continues_the_same_loss_curve(tmp_path):
    steps, extra = 10, {"run.ckpt_every": 3}
    full = run(_cfg(tmp_path / "full", steps=steps, **extra))
    cfg = _cfg(tmp_path / "killed", steps=steps, **extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(cfg), str(7 * 16 + 5)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(_losses(tmp_path / "killed")) == 7  # it got to step 7, its last checkpoint is step 6
    resumed = run(cfg)
    assert resumed["finished"] and resumed["steps"] == full["steps"] == steps
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "killed")
    assert len(b) == steps  # the lines of the killed run after its checkpoint were replaced
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)
    wa = load_encoder(tmp_path / "full" / "model")[0].state_dict()
    wb = load_encoder(tmp_path / "killed" / "model")[0].state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_refuses_a_changed_recipe(tmp_path):
    run(_cfg(tmp_path, steps=4, **{"run.stop_after": 2}))
    with pytest.raises(UserError, match="different recipe.*run.out_dir"):
        run(_cfg(tmp_path, steps=4, **{"optim.lr": 1e-2}))
    summary = run(_cfg(tmp_path, steps=4))  # the same recipe continues
    assert summary["finished"] and len(_losses(tmp_path)) == 4


def test_nan_loss_is_a_user_error(tmp_path):
    model = AIMv2(AIMv2Config(encoder=encoder_config("micro", image_size=28), decoder=SMALL_DECODER, eot_id=15))

    def nan_samples(position, area):
        return torch.full((3, 28, 28), float("nan")), torch.tensor([1, 2, 15, 0, 0, 0, 0, 0])

    cfg = PretrainConfig(out_dir=tmp_path, optim=OptimConfig(lr=1e-3, warmup_steps=1, steps=3), batch_size=2,
                         progress=False)
    with pytest.raises(UserError, match="loss became nan"):
        pretrain(model, nan_samples, cfg)


# ---------------------------------------------------------------- output, adaptation, CLI
def test_export_loads_and_high_resolution_adaptation(tmp_path):
    summary = run(_cfg(tmp_path / "base", steps=3))
    model_dir = Path(summary["export_dir"])
    assert {"config.json", "model.safetensors", "decoder.safetensors", "decoder_config.json", "tokenizer.json",
            "README.md"} <= {p.name for p in model_dir.iterdir()}
    encoder, ckpt = load_encoder(model_dir)
    assert ckpt.scheme == "apple" and encoder.cfg.embed_dim == 64 and encoder.cfg.image_size == 56
    # high resolution: 56px -> 84px, learned positions resized, weight decay 0, starting from the export
    cfg = _cfg(tmp_path / "hr", steps=2, **{"model.image_size": 84, "data.augment.crop_size": 84,
                                             "highres.enabled": "true", "init_from": str(model_dir)})
    tok = load_tokenizer(model_dir / "tokenizer.json")
    model = build_model(cfg, tok)
    init_from(model, model_dir)
    assert model.encoder.preprocessor.pos_embed.shape == (1, 36, 64)
    assert torch.equal(model.encoder.trunk.blocks[1].mlp.fc2.weight, encoder.trunk.blocks[1].mlp.fc2.weight)
    dec = AIMv2(model.cfg).decoder
    assert not torch.equal(dec.text_head.weight, model.decoder.text_head.weight)  # the decoder was loaded too
    hr = run(cfg)
    assert hr["finished"] and load_encoder(hr["model_dir"])[0].cfg.image_size == 84


def test_cli_errors(tmp_path, capsys):
    assert cli_main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config not found" in capsys.readouterr().err
    assert cli_main(["pretrain", "--config", "tiny", "optim.stepz=3"]) == 2
    assert "did you mean optim.steps" in capsys.readouterr().err
    assert cli_main(["pretrain", "--config", "tiny", "--print-config", "batch.size=3"]) == 0
    assert "size: 3" in capsys.readouterr().out


# ---------------------------------------------------------------- the committed tiny AIMv2
def test_tiny_checkpoint_loads_and_encodes():
    assert (TINY_DIR / "model.safetensors").is_file(), "build it: aimv2-eval pretrain --config configs/pretrain/tiny.yaml"
    size = sum(p.stat().st_size for p in TINY_DIR.iterdir())
    assert size < 20e6
    encoder, ckpt = load_encoder(TINY_DIR)
    assert encoder.cfg == encoder_config("tiny")
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = encoder(images)
    assert out.shape == (2, 64, 192) and torch.isfinite(out).all()
    meta = json.loads((TINY_DIR / "pretrain.json").read_text())
    assert meta["summary"]["finished"] and "aimv2-eval pretrain" in (TINY_DIR / "README.md").read_text()
    # the decoder and tokenizer beside it rebuild the whole pretraining model
    tok = load_tokenizer(TINY_DIR / "tokenizer.json")
    model = build_model(meta["recipe"], tok)
    init_from(model, TINY_DIR)


def _scene_batch(n: int, seed: int):
    from aimv2_eval.backbones.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from aimv2_eval.data.scenes import SceneDataset

    scenes = [SceneDataset(n, seed=seed, image_size=112)[i] for i in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(s.image, np.float32) / 255 for s in scenes])).permute(0, 3, 1, 2)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return scenes, (x - mean) / std


def _attentive_probe(tokens: torch.Tensor, labels: np.ndarray, steps: int = 500) -> float:
    """A one-query attentive probe (the paper's probe, minimal) on frozen tokens; 60/40 split; test accuracy."""
    torch.manual_seed(0)
    k, y = int(0.6 * len(labels)), torch.as_tensor(labels)
    t = (tokens - tokens[:k].mean((0, 1))) / tokens[:k].std((0, 1))
    d = t.shape[-1]
    query, kv, head = torch.nn.Parameter(torch.zeros(1, 1, d)), torch.nn.Linear(d, 2 * d), torch.nn.Linear(d, int(y.max()) + 1)
    opt = torch.optim.AdamW([query, *kv.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-2)

    def forward(z):
        keys, values = kv(z).chunk(2, -1)
        attn = torch.softmax((query * keys).sum(-1) / d**0.5, -1)
        return head((attn[..., None] * values).sum(1))

    for _ in range(steps):
        idx = torch.randint(0, k, (64,))
        loss = torch.nn.functional.cross_entropy(forward(t[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((forward(t[k:]).argmax(-1) == y[k:]).float().mean())


def test_tiny_checkpoint_learned_to_see_colours():
    """The committed model against a random-init twin, on scenes it never saw (seed 123): its decoder names the colour
    of the largest object (the first colour word of the caption), and an attentive probe on its frozen tokens reads
    that colour better. Measured: decoder 0.83 (random twin 0.16); probe 0.80 vs 0.70."""
    from aimv2_eval.data.scenes import COLORS

    meta = json.loads((TINY_DIR / "pretrain.json").read_text())
    tok = load_tokenizer(TINY_DIR / "tokenizer.json")
    trained = build_model(meta["recipe"], tok)
    init_from(trained, TINY_DIR)
    torch.manual_seed(0)
    random = build_model(meta["recipe"], tok)
    scenes, x = _scene_batch(480, seed=123)
    ids = tok([s.caption for s in scenes])
    colour_ids = [int(tok(c)[0, 1]) for c in COLORS]
    targets = [colour_ids[list(COLORS).index(s.objects[0].color)] for s in scenes]
    first = [row.tolist().index(t) for row, t in zip(ids, targets)]  # the largest object is named first
    labels = np.array([list(COLORS).index(s.objects[0].color) for s in scenes])
    acc, probe = {}, {}
    for name, model in (("trained", trained), ("random", random)):
        model.eval()
        with torch.no_grad():
            tokens = model.encoder(x)
            _, logits = model.decoder(tokens[:120], ids[:120])  # logits[:, t] predicts text token t
        pred = [colour_ids[int(logits[b, first[b], colour_ids].argmax())] for b in range(120)]
        acc[name] = np.mean([p == t for p, t in zip(pred, targets[:120])])
        probe[name] = _attentive_probe(tokens, labels)
    assert acc["trained"] > 0.6 and acc["random"] < 0.4, acc
    assert probe["trained"] > probe["random"] + 0.03, probe


def test_recipe_outputs_never_land_in_the_package_or_the_current_folder(tmp_path, monkeypatch):
    """A recipe's relative run.out_dir goes under $AIMV2_EVAL_HOME/pretrain and its export inside it; only a folder
    given on the command line is relative to the current folder (how the bundled tiny model is replaced)."""
    monkeypatch.setenv("AIMV2_EVAL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = load_config("tiny")["run"]
    assert run["out_dir"] == str(tmp_path / "home" / "pretrain" / "runs" / "aimv2-tiny")
    assert run["export_dir"] == str(tmp_path / "home" / "pretrain" / "runs" / "aimv2-tiny" / "export")
    run = load_config("tiny", ["run.export_dir=aimv2_eval/assets/aimv2-tiny"])["run"]
    assert run["export_dir"] == str(tmp_path / "aimv2_eval" / "assets" / "aimv2-tiny")
    # an ablation that only moves out_dir takes the recipe's export folder with it, instead of overwriting the
    # default run's export
    run = load_config("tiny", ["model.objective=cap", "run.out_dir=runs/tiny-cap"])["run"]
    assert run["out_dir"] == str(tmp_path / "runs" / "tiny-cap")
    assert run["export_dir"] == str(tmp_path / "runs" / "tiny-cap" / "export")
