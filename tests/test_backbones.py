"""The backbone adapter registry: every name builds offline, metadata is consistent, every adapter equals its
library's own features, the anatomy re-assembles to the same tokens, and real packaged weights produce features."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no network calls from this module

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from aimv2_eval.backbones import (
    BACKBONES,
    build_eval_transform,
    create_backbone,
    get_spec,
    list_backbones,
)
from aimv2_eval.backbones import aimv2 as aimv2_family
from aimv2_eval.backbones.base import Preprocess
from aimv2_eval.core.checkpoints import save_encoder
from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.variants import encoder_config
from aimv2_eval.errors import UserError

TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables"
SMALL = 25e6  # built for real below this many parameters; bigger ones on the meta device


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, private Hugging Face cache in offline mode."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does: blobs named by sha256, a snapshot of symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


# ---------------------------------------------------------------- registry and metadata
def test_every_registered_name_builds_offline_with_consistent_metadata():
    specs = list_backbones()
    assert len(specs) >= 30
    for spec in specs:
        with torch.device("meta"):
            meta_bb = spec.build(pretrained=False)
        n = meta_bb.num_params
        if n < SMALL:  # real random weights for the small ones, same code path
            bb = create_backbone(spec.name, pretrained=False)
            assert bb.num_params == n and not bb.training
            assert not any(p.requires_grad for p in bb.parameters())
            assert bb.weights_id == "random"
        m = meta_bb.meta
        assert (m.name, m.family) == (spec.name, spec.family)
        assert m.image_size == spec.resolution == meta_bb.preprocess.image_size, spec.name
        assert m.num_prefix_tokens >= 0 and m.embed_dim > 0 and m.depth > 0
        assert (meta_bb.anatomy() is not None) == m.is_vit, spec.name
        if m.is_vit:
            assert len(meta_bb.anatomy().blocks) == m.depth
        for alias in BACKBONES.aliases_of(spec.name):
            assert get_spec(alias) is spec
        assert isinstance(spec.weights_present(), bool)


def test_aimv2_names_aliases_and_table1_sizes():
    names = {s.name for s in list_backbones("aimv2-*")}
    for size in ("large", "huge", "1B", "3B"):
        for res in (224, 336, 448):
            assert f"aimv2-{size}-patch14-{res}" in names
    for extra in ("aimv2-large-patch14-224-distilled", "aimv2-large-patch14-336-distilled",
                  "aimv2-large-patch14-native", "aimv2-large-patch14-224-lit", "aimv2-tiny"):
        assert extra in names
    assert get_spec("aimv2-l").name == "aimv2-large-patch14-224"
    assert get_spec("aimv2-h-448").name == "aimv2-huge-patch14-448"
    assert get_spec("aimv2-1b-336").name == "aimv2-1B-patch14-336"
    assert get_spec("aimv2-3b").source == "apple/aimv2-3B-patch14-224"
    assert get_spec("aimv2-l-native").name == "aimv2-large-patch14-native"
    assert get_spec("AIMV2-1B-PATCH14-224").name == "aimv2-1B-patch14-224"  # case-insensitive fallback
    # Table 1: parameters (billions, printed truncated to one decimal), width and depth
    if not (TABLES / "table1_model_family.csv").is_file():
        pytest.skip(f"the paper's tables are not at {TABLES} (the shared/ folder beside the checkout)")
    rows = list(csv.DictReader(open(TABLES / "table1_model_family.csv")))
    table = {(r["model"], r["field"]): float(r["value"]) for r in rows}
    for model, alias in (("AIMv2-L", "aimv2-l"), ("AIMv2-H", "aimv2-h"), ("AIMv2-1B", "aimv2-1b"), ("AIMv2-3B", "aimv2-3b")):
        with torch.device("meta"):
            bb = get_spec(alias).build(pretrained=False)
        assert math.floor(bb.num_params / 1e8) / 10 == table[(model, "params_billion")], model
        assert bb.meta.embed_dim == table[(model, "d_enc")] and bb.meta.depth == table[(model, "L_enc")]


def test_baseline_metadata():
    with torch.device("meta"):
        g = create_backbone("dinov2-vit-g-14", pretrained=False)
        so = create_backbone("siglip-so400m-14", pretrained=False)
        clip = create_backbone("openai-clip-vit-l-14-336", pretrained=False)
        mae = create_backbone("mae-vit-h-14", pretrained=False)
    assert (g.meta.embed_dim, g.meta.depth, g.meta.patch_size, g.meta.num_prefix_tokens) == (1536, 40, 14, 1)
    assert (so.meta.embed_dim, so.meta.depth, so.meta.patch_size, so.meta.num_prefix_tokens) == (1152, 27, 14, 0)
    assert so.preprocess.mean == (0.5, 0.5, 0.5) and so.preprocess.resize_mode == "squash"
    assert (clip.meta.embed_dim, clip.meta.image_size, clip.meta.num_prefix_tokens) == (1024, 336, 1)
    assert (mae.meta.embed_dim, mae.meta.depth, mae.preprocess.resize) == (1280, 32, 248)  # crop_pct 0.9


def test_unknown_names_get_closest_matches():
    with pytest.raises(UserError, match="did you mean.*aimv2-large-patch14-224"):
        get_spec("aimv2-large-patch14-22")
    with pytest.raises(UserError, match="timm:vit_small_patch16_224"):
        get_spec("timm:vit_smal_patch16_224")
    with pytest.raises(UserError, match="known tags"):
        get_spec("ViT-B-32:no_such_tag")
    with pytest.raises(UserError, match="not a VisionTransformer"):
        create_backbone("timm:resnet18", pretrained=False)


# ---------------------------------------------------------------- small models of every family
TINY_OPEN_CLIP = {
    # open_clip's own ViT tower (the OpenAI CLIP / DFN-CLIP architecture), tiny
    "test-clip-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    },
    # a timm trunk with attention-pool head inside open_clip (the SigLIP architecture), small
    "test-siglip-tiny": {
        "embed_dim": 192,
        "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    },
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One small random backbone per family, built through the registry (timm DINOv2-reg4 at 56 px directly)."""
    import open_clip
    import timm

    from aimv2_eval.backbones.timm_vit import TimmViT, timm_preprocess

    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in TINY_OPEN_CLIP.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    reg = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=56).eval()
    pre = timm_preprocess(timm.get_pretrained_cfg("vit_small_patch14_reg4_dinov2").to_dict())
    return {
        "aimv2": create_backbone("aimv2-tiny", pretrained=False),
        "timm": create_backbone("timm:vit_tiny_patch16_224", pretrained=False),
        "timm-reg4": TimmViT(reg, "dinov2-reg4-56", "dinov2", pre).requires_grad_(False),
        "open_clip": create_backbone("open_clip:test-clip-tiny", pretrained=False),
        "siglip": create_backbone("open_clip:test-siglip-tiny", pretrained=False),
        "efficientnet": create_backbone("efficientnet-lite0", pretrained=False),
    }


# ---------------------------------------------------------------- token shapes per family, two resolutions
@pytest.mark.parametrize(
    "key, sizes, dim, patch, prefix",
    [
        ("aimv2", (112, 168), 192, 14, 0),
        ("timm", (224, 160), 192, 16, 1),
        ("timm-reg4", (56, 84), 384, 14, 5),
        ("open_clip", (64, 96), 64, 16, 1),
        ("siglip", (224, 128), 192, 16, 1),
        ("efficientnet", (224, 160), 1280, 32, 0),
    ],
)
@torch.no_grad()
def test_token_shapes(small, key, sizes, dim, patch, prefix):
    bb = small[key]
    assert (bb.meta.embed_dim, bb.meta.patch_size, bb.meta.num_prefix_tokens) == (dim, patch, prefix)
    assert bb.meta.image_size == sizes[0]
    for size in sizes:
        out = bb.tokens(torch.randn(2, 3, size, size), layers=[0, -1])
        g = size // patch
        assert out.grid == (g, g)
        assert out.tokens.shape == (2, g * g, dim)
        assert (out.prefix is None) == (prefix == 0)
        if prefix:
            assert out.prefix.shape == (2, prefix, dim)
        assert len(out.layers) == 2 and out.layers[0].shape[0] == 2
        if bb.meta.is_vit:
            assert all(t.shape == (2, g * g, dim) for t in out.layers)
        assert torch.isfinite(out.tokens).all()
    with pytest.raises(UserError, match="layer"):
        bb.tokens(torch.randn(1, 3, sizes[0], sizes[0]), layers=[bb.meta.depth])
    with pytest.raises(UserError, match="smaller than one"):
        bb.tokens(torch.randn(1, 3, patch - 1, sizes[0]))
    if bb.meta.is_vit:  # edges beyond whole patches are dropped, as a strided patch convolution does
        odd = bb.tokens(torch.randn(1, 3, sizes[0] + patch - 1, sizes[0]))
        assert odd.grid == (sizes[0] // patch, sizes[0] // patch)


# ---------------------------------------------------------------- equality with the libraries
@torch.no_grad()
def test_aimv2_adapter_equals_core_encoder_in_every_key_scheme(tmp_path):
    encoder = AIMv2Encoder(encoder_config("micro")).eval()
    x = torch.randn(2, 3, 112, 140)
    ref, ref_layers, grid = encoder.forward_features(x, layers=[1, -1])
    for scheme in ("apple", "hf", "timm"):
        folder = save_encoder(encoder, tmp_path / scheme, scheme=scheme)
        for name in (f"file:{folder}", str(folder / "model.safetensors")):
            bb = create_backbone(name)
            out = bb.tokens(x, layers=[1, -1])
            assert out.grid == grid == (8, 10)
            torch.testing.assert_close(out.tokens, ref)
            torch.testing.assert_close(out.layers[1], ref_layers[1])
            assert bb.weights_id == "sha256:" + hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    random = create_backbone(f"file:{tmp_path / 'apple'}", pretrained=False)
    assert random.meta.embed_dim == 96 and not torch.allclose(random.tokens(x).tokens, ref)


@torch.no_grad()
def test_open_clip_adapter_equals_open_clip(small):
    bb = small["open_clip"]
    visual = bb.visual
    x = torch.randn(2, 3, 64, 64)
    out = bb.tokens(x, layers=[0])
    visual.output_tokens = True
    pooled, toks = visual(x)
    visual.output_tokens = False
    torch.testing.assert_close(out.tokens, toks)
    # CLS after ln_post; the adapter drops the image-text projection, which tokens never use
    assert visual.proj is None
    torch.testing.assert_close(out.prefix[:, 0], pooled)
    inter = visual.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(out.layers[0], inter["image_intermediates"][0])


@torch.no_grad()
def test_siglip_style_tower_equals_open_clip_timm_trunk(small):
    bb = small["siglip"]
    x = torch.randn(1, 3, 224, 224)
    feats = bb.model.forward_features(x)  # open_clip's TimmModel trunk, the attention-pool head reads these
    torch.testing.assert_close(bb.tokens(x).tokens, feats[:, 1:])


@pytest.mark.parametrize("key", ["timm", "timm-reg4"])
@torch.no_grad()
def test_timm_adapter_equals_timm_at_native_and_other_sizes(small, key):
    import timm

    bb = small[key]
    native = bb.meta.image_size
    x = torch.randn(1, 3, native, native)
    out = bb.tokens(x, layers=[2])
    feats = bb.model.forward_features(x)
    p = bb.meta.num_prefix_tokens
    torch.testing.assert_close(out.tokens, feats[:, p:])
    torch.testing.assert_close(out.prefix, feats[:, :p])
    inter = bb.model.forward_intermediates(x, indices=[2], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(out.layers[0], inter[0])
    # another resolution: timm's own position resampling (dynamic_img_size) gives the same tokens
    arch = bb.model.pretrained_cfg["architecture"]
    dynamic = timm.create_model(arch, pretrained=False, num_classes=0, img_size=native, dynamic_img_size=True).eval()
    dynamic.load_state_dict(bb.model.state_dict())
    y = torch.randn(1, 3, 8 * bb.meta.patch_size, 6 * bb.meta.patch_size)
    torch.testing.assert_close(bb.tokens(y).tokens, dynamic.forward_features(y)[:, p:])


@pytest.mark.parametrize("key, size", [("aimv2", 168), ("timm-reg4", 98), ("open_clip", 96), ("siglip", 112)])
@torch.no_grad()
def test_anatomy_reassembles_the_adapter_output(small, key, size):
    bb = small[key]
    anatomy = bb.anatomy()
    for s in (bb.meta.image_size, size):
        x = torch.randn(2, 3, s, s)
        emb, grid = anatomy.embed(x)
        assert emb.shape == (2, anatomy.num_prefix_tokens + grid[0] * grid[1], bb.meta.embed_dim)
        h = emb
        for block in anatomy.blocks:
            h = block(h)
        torch.testing.assert_close(anatomy.norm(h)[:, anatomy.num_prefix_tokens :], bb.tokens(x).tokens)


@torch.no_grad()
def test_native_aimv2_any_resolution_and_sincos():
    with torch.device("meta"):
        bb = create_backbone("aimv2-l-native", pretrained=False)
    assert bb.meta.any_resolution and bb.encoder.preprocessor.pos_embed is None  # sin-cos, computed per grid
    assert bb.preprocess.multiple_of == 14 and bb.preprocess.resize is None and not bb.preprocess.crop
    tiny = AIMv2Encoder(encoder_config("micro", native=True)).eval()
    from aimv2_eval.backbones.aimv2 import AIMv2Backbone, aimv2_preprocess

    bb = AIMv2Backbone(tiny, "micro-native", aimv2_preprocess(tiny.cfg))
    out = bb.tokens(torch.randn(1, 3, 28 * 2, 14 * 7))
    assert out.grid == (4, 7) and out.tokens.shape == (1, 28, 96)


# ---------------------------------------------------------------- real weights offline
def test_efficientnet_lite0_loads_shipped_weights_and_classifies_real_images():
    import importlib.util

    bb = create_backbone("efficientnet-lite0")
    assert bb.weights_id.startswith("sha256:") and bb.num_params == 4_652_008
    folder = Path(importlib.util.find_spec("foolbox").origin).parent / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    assert len(files) == 20
    transform = build_eval_transform(bb.preprocess)
    x = torch.stack([transform(Image.open(f)) for f in files])
    labels = torch.tensor([int(f.stem.split("_")[-1]) for f in files])
    with torch.no_grad():
        out = bb.tokens(x)
        assert out.grid == (7, 7) and out.tokens.shape == (20, 49, 1280)
        torch.testing.assert_close(out.tokens, bb.model.extract_features(x).flatten(2).transpose(1, 2))
        logits = bb.model._fc(out.tokens.mean(1))  # the network's own classifier on pooled tokens
    correct = int((logits.argmax(1) == labels).sum())
    assert correct >= 16, correct  # OFFLINE_ASSETS.md: 18/20 with mean = std = 0.5


def test_hub_weights_load_from_the_cache_and_missing_ones_fail_in_one_line(hub_cache):
    import timm

    from aimv2_eval.backbones.timm_vit import TimmViT

    # absent: one line naming the repo and how to provide it
    for name, repo in (("aimv2-l", "apple/aimv2-large-patch14-224"),
                       ("dinov2-vit-s-14", "timm/vit_small_patch14_dinov2.lvd142m"),
                       ("siglip-vit-l-16", "timm/ViT-L-16-SigLIP-256")):
        assert not get_spec(name).weights_present()
        with pytest.raises(UserError) as err:
            create_backbone(name)
        msg = str(err.value)
        assert "\n" not in msg and repo in msg and "hf download" in msg and "local" in msg, msg
    # present: an AIMv2 checkpoint in the cache (transformers' scheme) loads through the hub id, checksum = blob name
    encoder = AIMv2Encoder(encoder_config("micro")).eval()
    folder = save_encoder(encoder, hub_cache.parent / "micro", scheme="hf")
    data = (folder / "model.safetensors").read_bytes()
    processor = {"do_resize": True, "size": {"shortest_edge": 112}, "do_center_crop": True,
                 "crop_size": {"height": 112, "width": 112}, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    put_in_cache(hub_cache, "apple/aimv2-large-patch14-224", {"config.json": (folder / "config.json").read_bytes(),
                                                               "preprocessor_config.json": json.dumps(processor).encode(),
                                                               "model.safetensors": data})
    assert get_spec("aimv2-l").weights_present()
    bb = create_backbone("aimv2-l")
    assert bb.weights_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert bb.preprocess == Preprocess(112, 112, True, "bilinear", (0.5,) * 3, (0.25,) * 3)  # the hub's processor
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(bb.tokens(x).tokens, encoder(x))
    # a timm model from the cache goes through timm's loader
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).eval()
    put_in_cache(hub_cache, "timm/vit_small_patch14_dinov2.lvd142m", {"model.safetensors": safetensors_bytes(ref.state_dict())})
    bb = create_backbone("dinov2-vit-s-14")
    assert bb.weights_id.startswith("sha256:")
    expected = TimmViT(ref, "ref", "dinov2", bb.preprocess)
    y = torch.randn(1, 3, 98, 98)
    with torch.no_grad():
        torch.testing.assert_close(bb.tokens(y).tokens, expected.tokens(y).tokens)


def test_open_clip_weights_from_the_cache(small, hub_cache):
    import open_clip

    repo = "timm/vit_base_patch32_clip_224.openai"
    assert not get_spec("ViT-B-32:openai").weights_present()
    with pytest.raises(UserError, match=f"hf download {repo} open_clip_model.safetensors"):
        create_backbone("ViT-B-32:openai")
    clip = open_clip.create_model("test-clip-tiny", pretrained=None).eval()
    put_in_cache(hub_cache, repo, {"open_clip_model.safetensors": safetensors_bytes(clip.state_dict())})
    assert get_spec("ViT-B-32:openai").weights_present()  # open_clip's hf_hub entry found in the cache
    bb = create_backbone("open_clip:test-clip-tiny", weights=repo)  # a hub id as the weights source
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.tokens(x).prefix[:, 0] @ clip.visual.proj, clip.encode_image(x))


def test_tiny_aimv2_asks_for_the_pretrain_command_until_built(tmp_path, monkeypatch):
    monkeypatch.setattr(aimv2_family, "TINY_DIR", tmp_path / "aimv2-tiny")
    with pytest.raises(UserError, match="aimv2-eval pretrain --config configs/pretrain/tiny.yaml"):
        create_backbone("aimv2-tiny")
    encoder = AIMv2Encoder(encoder_config("tiny")).eval()
    save_encoder(encoder, tmp_path / "aimv2-tiny")
    bb = create_backbone("aimv2-tiny")
    assert bb.preprocess.image_size == 112 and bb.weights_id.startswith("sha256:")
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(bb.tokens(x).tokens, encoder(x))


# ---------------------------------------------------------------- eval transform
def test_eval_transform_matches_timm_and_open_clip():
    import open_clip
    import timm
    from timm.data import create_transform, resolve_data_config

    image = Image.fromarray(torch.randint(0, 256, (300, 410, 3), dtype=torch.uint8).numpy())
    with torch.device("meta"):
        mae = create_backbone("mae-vit-b-16", pretrained=False)
        siglip = create_backbone("siglip-vit-l-16", pretrained=False)
        oai = create_backbone("openai-clip-vit-l-14", pretrained=False)
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False)
    ref = create_transform(**resolve_data_config({}, model=model))
    torch.testing.assert_close(build_eval_transform(mae.preprocess)(image), ref(image))
    for bb in (siglip, oai):
        p = bb.preprocess
        ref = open_clip.image_transform(p.image_size, is_train=False, mean=p.mean, std=p.std,
                                        resize_mode=p.resize_mode, interpolation=p.interpolation)
        torch.testing.assert_close(build_eval_transform(p)(image), ref(image))


def test_eval_transform_modes_and_bad_images():
    pre = Preprocess(image_size=224, resize=224, crop=True)
    t = build_eval_transform(pre)
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        assert t(Image.new(mode, (320, 240))).shape == (3, 224, 224)
    white = t(Image.new("RGB", (300, 500), (255, 255, 255)))
    torch.testing.assert_close(white[:, 0, 0], (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std))
    native = build_eval_transform(Preprocess(224, resize=None, crop=False, multiple_of=14))
    assert native(Image.new("RGB", (640, 480))).shape == (3, 476, 630)  # 34 x 45 patches, as the native model
    buf = io.BytesIO()
    Image.fromarray(torch.randint(0, 256, (128, 128, 3), dtype=torch.uint8).numpy()).save(buf, format="JPEG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # header fine, data cut
    with pytest.raises(UserError, match="cannot read image"):
        t(truncated)
    with pytest.raises(UserError, match="PIL image"):
        t(torch.zeros(3, 8, 8))


# ---------------------------------------------------------------- the list command
def test_list_backbones_command(capsys):
    from aimv2_eval.cli import main

    assert main(["list", "backbones", "aimv2-l*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "family", "params", "resolution", "weights", "aliases"]
    table = out[2: out.index("")]  # under the header's rule, above the open-ended forms
    rows = {line.split()[0]: line.split() for line in table}
    assert rows["aimv2-large-patch14-224"][1:5] == ["aimv2", "309.2M", "224", "no"]
    assert "aimv2-l," in rows["aimv2-large-patch14-224"]
    assert any(line.strip().startswith("`timm:<model>") for line in out) and any("open_clip:" in line for line in out)
    assert main(["list", "backbones", "efficientnet*"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[4] == "yes"
    assert main(["list", "backbones", "no-such-*"]) == 1
