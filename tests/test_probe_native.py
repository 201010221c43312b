"""Table 6: the probe trained at one resolution and tested at another or at each image's native size; padded
batches with a key-padding mask, and a feature cache of variable token counts (issue #17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from aimv2_eval.backbones import build_eval_transform, create_backbone
from aimv2_eval.backbones.aimv2 import AIMv2Backbone, aimv2_preprocess
from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.variants import encoder_config
from aimv2_eval.data.sources import LabelledImages
from aimv2_eval.errors import UserError
from aimv2_eval.launch.distributed import DistContext
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.plugins import probe as probe_module
from aimv2_eval.plugins.probe import (
    ChannelNorm,
    FeatureCache,
    NativeTransform,
    PackedTokens,
    ProbeGrid,
    encode,
    native_grid,
    native_preprocess,
    pad_tokens,
    task_preprocess,
)
from aimv2_eval.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
# (width, height) of the test images: portrait, landscape, square, and sizes that are not multiples of 14
SIZES = [(56, 42), (70, 98), (84, 84), (112, 56), (45, 61)]


def native_micro() -> AIMv2Backbone:
    """A random-init AIMv2 of the smallest size with sin-cos positions (the native-resolution variant)."""
    cfg = encoder_config("micro", native=True)
    return AIMv2Backbone(AIMv2Encoder(cfg), "aimv2-micro-native", aimv2_preprocess(cfg)).eval()


def picture(size: tuple[int, int], label: int, i: int) -> Image.Image:
    """A class-coloured image with a little seeded noise."""
    rng = np.random.default_rng([label, i, *size])
    base = np.array([200, 40, 40] if label else [40, 40, 200], dtype=np.float64)
    pixels = base + rng.normal(0, 20, (size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def image_folder(root: Path) -> Path:
    """data/bench/{train,test}/class{0,1}/ with images of every size in SIZES."""
    for split, per_size in (("train", 3), ("test", 1)):
        for label in range(2):
            folder = root / "bench" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_size * len(SIZES)):
                picture(SIZES[i % len(SIZES)], label, i).save(folder / f"{i}.png")
    return root


def bench_task(tmp_path: Path, **protocol) -> object:
    body = {"include": str(REPO / "tasks" / "_probe_table_a2.yaml"), "version": 1,
            "data": {"num_classes": 2, "imagefolder": {"dir": "bench"}},
            "protocol": {"epochs": 2, "batch_size": 8, "lr_grid": [1e-3, 3e-3], "wd_grid": [0.05],
                         "selection": {"val_fraction": 0.2}, **protocol}}
    path = tmp_path / "bench_probe.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_task(str(path))


def probe_run(backbone, task, tmp_path: Path, cache: bool = True):
    plugin = get_plugin("probe")
    root = tmp_path / "data"
    options = RunOptions(feature_cache=tmp_path / "cache" if cache else None, progress=False,
                         data_root=root if root.exists() else image_folder(root))
    protocol = plugin.resolve(task, options, backbone.meta)
    data = plugin.load_data(task, protocol, options)
    return probe_module._ProbeRun(backbone, task, protocol, data, options, DistContext())


def split_of(images: list[Image.Image]) -> LabelledImages:
    return LabelledImages("test:sizes", np.arange(len(images)) % 2, 2, images.__getitem__)


# ---------------------------------------------------------------- the mask
def trained_grid(dim: int = 16) -> ProbeGrid:
    """A grid with distinct probes and running statistics away from (0, 1)."""
    torch.manual_seed(3)
    grid = ProbeGrid(dim, 4, num_probes=3, num_heads=4, seed=1)
    with torch.no_grad():
        for name in ("query", "key", "value", "weight"):
            getattr(grid, name).add_(torch.randn_like(getattr(grid, name)) * 0.3)
    grid(torch.randn(6, 5, dim) * 2 + 1)  # one training forward sets the running statistics
    return grid.eval()


def test_padded_logits_equal_each_image_alone():
    grid = trained_grid()
    tokens = [torch.randn(n, 16) for n in (3, 9, 5)]
    padded, mask = pad_tokens(tokens)
    assert padded.shape == (3, 9, 16) and mask.sum(1).tolist() == [3, 9, 5]
    together = grid(padded, mask)
    for i, t in enumerate(tokens):
        torch.testing.assert_close(together[i], grid(t[None])[0], rtol=1e-6, atol=1e-6)
    # whatever sits in the padding never reaches the logits
    garbage = padded.masked_fill(~mask[..., None], 1e4)
    torch.testing.assert_close(grid(garbage, mask), together, rtol=0, atol=0)
    assert not torch.allclose(grid(garbage), together)  # without the mask it would


def test_all_true_mask_is_the_unmasked_forward_bit_for_bit():
    grid = trained_grid()
    x = torch.randn(4, 7, 16)
    full = torch.ones(4, 7, dtype=torch.bool)
    assert torch.equal(grid(x, full), grid(x))
    grid.train()
    assert torch.equal(grid(x, full), grid(x))


def test_channel_norm_statistics_ignore_padding():
    tokens = [torch.randn(n, 8) * 3 + 2 for n in (4, 1, 6)]
    padded, mask = pad_tokens(tokens)
    padded = padded.masked_fill(~mask[..., None], -50.0)  # padding far from the data
    masked, plain = ChannelNorm(8), ChannelNorm(8)
    out = masked(padded, mask)
    ref = plain(torch.cat(tokens)[None])  # the real tokens alone, as one sequence
    torch.testing.assert_close(out[mask], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    reference = nn.BatchNorm1d(8, affine=False, eps=1e-6)
    torch.testing.assert_close(out[mask], reference(torch.cat(tokens)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- native preprocessing
def test_native_transform_keeps_size_and_caps_patches():
    pre = native_preprocess(native_micro())
    assert (pre.resize, pre.crop, pre.multiple_of) == (None, False, 14)
    assert native_grid(640, 480, 14, 4096) == (34, 45)  # the released checkpoint's reference grid for COCO 39769
    tf = NativeTransform(pre, max_patches=30)
    for w, h in [*SIZES, (300, 40), (40, 300), (1000, 999)]:
        x = tf(picture((w, h), 0, 0))
        rows, cols = native_grid(w, h, 14, 30)
        assert x.shape == (3, rows * 14, cols * 14), (w, h)
        assert tf.num_tokens((w, h)) == rows * cols <= 30
        if (w // 14) * (h // 14) <= 30:  # fits: trimmed to whole patches, not resized
            assert (rows, cols) == (h // 14, w // 14)
            torch.testing.assert_close(x, build_eval_transform(pre)(picture((w, h), 0, 0)))
        else:  # scaled down, aspect ratio kept to within a patch
            assert rows * cols > 30 * 0.5 and abs(cols / rows - w / h) <= max(w / h, h / w) / min(rows, cols)


def test_fixed_size_of_a_native_backbone_is_the_fixed_releases_crop():
    pre = task_preprocess(native_micro(), 224)
    assert (pre.image_size, pre.resize, pre.crop, pre.resize_mode) == (224, 224, True, "shortest")
    fixed = create_backbone("aimv2-tiny", pretrained=False)
    assert task_preprocess(fixed, fixed.preprocess.image_size) is fixed.preprocess  # fixed backbones unchanged
    assert task_preprocess(fixed, 224).resize == 224


# ---------------------------------------------------------------- the cache
def test_cache_of_three_sizes_returns_each_images_direct_tokens(tmp_path):
    backbone = native_micro()
    images = [picture(SIZES[i % 3], i % 2, i) for i in range(7)]  # 3 sizes, mixed within every batch
    split = split_of(images)
    tf = NativeTransform(native_preprocess(backbone), max_patches=4096)
    lengths = np.array([tf.num_tokens(im.size) for im in images])
    assert len(set(lengths.tolist())) == 3
    cache = FeatureCache(tmp_path, "native")
    cache.build(backbone, split, tf, 4, 0, DistContext(), "fp32", False, "test", lengths)
    packed = cache.tokens()
    assert isinstance(packed, PackedTokens) and packed.rows is None and len(packed) == 7
    assert packed.array.shape == (lengths.sum(), backbone.meta.embed_dim)
    direct = [encode(backbone, tf(im)[None], torch.device("cpu"), "fp32")[0] for im in images]
    for i, want in enumerate(direct):
        assert torch.equal(torch.from_numpy(np.array(packed.sample(i))), want.half()), i
    idx = np.array([0, 2, 5])
    tokens, mask = packed.batch(idx)
    assert tokens.shape == (3, lengths[idx].max(), backbone.meta.embed_dim)
    assert mask.sum(1).tolist() == lengths[idx].tolist()
    for row, i in enumerate(idx):
        assert torch.equal(tokens[row, : lengths[i]], direct[i].half().float())
        assert not tokens[row, lengths[i]:].any()


def test_uniform_cache_reads_back_without_a_mask(tmp_path):
    backbone = native_micro()
    split = split_of([picture(SIZES[i % 3], 0, i) for i in range(5)])
    tf = build_eval_transform(task_preprocess(backbone, 56))
    cache = FeatureCache(tmp_path, "fixed")
    cache.build(backbone, split, tf, 2, 0, DistContext(), "fp32", False)
    packed = cache.tokens()
    assert packed.token_shape == (16, backbone.meta.embed_dim)
    tokens, mask = packed.batch(np.array([1, 4]))
    assert mask is None and tokens.shape == (2, 16, backbone.meta.embed_dim)
    assert torch.equal(tokens[1], torch.from_numpy(np.array(packed.sample(4))).float())


# ---------------------------------------------------------------- the probe at native and other test resolutions
def test_native_probe_end_to_end_cached_and_padded_equals_one_by_one(tmp_path):
    backbone = native_micro()
    run = probe_run(backbone, bench_task(tmp_path, test_resolution="native", native_max_patches=32), tmp_path)
    assert run.p["test_resolution"] == "native" and run.p["image_size"] == 112
    assert run._eval_batch_size("test") == 8 * 64 // 32 and run._eval_batch_size("train") == 8
    result = run.run()
    assert run.token_shape == (64, backbone.meta.embed_dim)  # trained at 112px: 8 x 8 patches
    test_cache = run.caches["test"]
    want = [run.transforms["test"].num_tokens(run.data.test.image(i).size) for i in range(len(run.data.test))]
    assert np.diff(test_cache.offsets).tolist() == want and len(set(want)) > 2 and max(want) <= 32
    assert 0 <= result.metrics["top1"] <= 100 and result.details["sizes"]["test"] == 10
    # every test image evaluated alone (no padding) gives the same scores as the padded batches
    test = np.arange(len(run.data.test))
    batched = run._evaluate("test", run.data.test, test, "test")
    run._eval_batch_size = lambda name: 1
    alone = run._evaluate("test", run.data.test, test, "test")
    assert (batched["predictions"] == alone["predictions"]).all()
    np.testing.assert_allclose(batched["loss"], alone["loss"], rtol=1e-5)
    # and without the cache: the images through the backbone batch by batch, padded the same way
    run.cached = False
    direct = run._evaluate("test", run.data.test, test, "test")
    np.testing.assert_allclose(direct["loss"], batched["loss"], rtol=2e-2)  # the cache holds float16


def test_native_probe_runs_without_the_cache(tmp_path):
    result = probe_run(native_micro(), bench_task(tmp_path, test_resolution="native", epochs=1), tmp_path,
                       cache=False).run()
    assert result.details["feature_cache"] is None and 0 <= result.metrics["top1"] <= 100


def test_fixed_backbone_trains_at_its_size_and_tests_at_another(tmp_path):
    """aimv2-tiny (learned positions, 112px) tested at 168px: its position table is resampled to 12 x 12."""
    backbone = create_backbone("aimv2-tiny", pretrained=False)
    run = probe_run(backbone, bench_task(tmp_path, test_resolution=168), tmp_path)
    run.run()
    assert run.token_shape == (64, 192) and run.caches["test"].token_shape == (144, 192)
    assert run.preprocesses["test"].image_size == 168 and run.preprocesses["train"].image_size == 112


# ---------------------------------------------------------------- protocol
def test_test_resolution_resolves_and_is_checked(tmp_path):
    plugin, meta = get_plugin("probe"), native_micro().meta
    same = plugin.resolve(bench_task(tmp_path, test_resolution=112), RunOptions(), meta)
    plain = plugin.resolve(bench_task(tmp_path), RunOptions(), meta)
    assert same == plain and "test_resolution" not in plain  # the plain protocol, so the plain hash
    native = plugin.resolve(bench_task(tmp_path, test_resolution="native"), RunOptions(), meta)
    assert native["native_max_patches"] == probe_module.NATIVE_MAX_PATCHES == 4096
    with pytest.raises(UserError, match="test_resolution must be a size in pixels"):
        plugin.resolve(bench_task(tmp_path, test_resolution="full"), RunOptions(), meta)
    with pytest.raises(UserError, match="applies only with test_resolution: native"):
        plugin.resolve(bench_task(tmp_path, test_resolution=224, native_max_patches=100), RunOptions(), meta)


def test_table6_tasks_plan_for_their_backbones():
    from aimv2_eval.backbones import describe_backbone

    plugin = get_plugin("probe")
    native = describe_backbone("aimv2-l-native")
    p = plugin.resolve(load_task("imagenet_probe_test_native"), RunOptions(), native)
    assert (p["image_size"], p["test_resolution"], p["native_max_patches"]) == (224, "native", 4096)
    p448 = plugin.resolve(load_task("imagenet_probe_test224"), RunOptions(), describe_backbone("aimv2-l-448"))
    assert (p448["image_size"], p448["test_resolution"]) == (448, 224)
    assert load_task("imagenet_probe_test448").paper["tables"] == ["6"]


def test_native_task_offline_ends_in_the_usual_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "AIMV2_EVAL_DATA": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "aimv2_eval.cli", "run", "--backbone", "aimv2-l-native", "--task",
         "imagenet_probe_test_native", "--out", str(tmp_path / "records")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "data missing" in lines[0] and "ILSVRC/imagenet-1k" in lines[0]
