"""AIMv2 core: sizes, prefix attention, the objective, gradients and a tiny overfit."""

import pytest
import torch

from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.layers import prefix_attention_mask, swiglu_hidden_dim
from aimv2_eval.core.model import AIMv2, AIMv2Config
from aimv2_eval.core.objective import image_loss, normalize_patches, patchify, text_loss
from aimv2_eval.core.variants import encoder_config, model_config

EOT = 49407


@pytest.mark.parametrize(
    "size,dim,heads,mlp,params_m",
    [("large", 1024, 8, 2816, 309.2), ("huge", 1536, 12, 4096, 680.9), ("1b", 2048, 16, 5632, 1235.0),
     ("3b", 3072, 24, 8192, 2720.7)],
)
def test_released_sizes(size, dim, heads, mlp, params_m):
    cfg = encoder_config(size)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden) == (dim, 24, heads, mlp)
    assert swiglu_hidden_dim(dim) == mlp
    with torch.device("meta"):
        enc = AIMv2Encoder(cfg)
    assert round(sum(p.numel() for p in enc.parameters()) / 1e6, 1) == pytest.approx(params_m, abs=0.1)


def test_decoder_is_table1_for_every_released_size():
    for size in ("large", "huge", "1b", "3b"):
        dec = model_config(size).decoder
        assert (dec.width, dec.depth) == (1024, 12)


def test_prefix_mask_semantics():
    mask = prefix_attention_mask(torch.tensor([3, 1]), 6)[:, 0]
    m = mask[0]
    assert m[:3, :3].all()  # prefix: bidirectional among themselves
    assert not m[:3, 3:].any()  # prefix never sees the future
    for i in range(3, 6):  # later tokens: causal, prefix included
        assert m[i, : i + 1].all() and not m[i, i + 1 :].any()
    assert torch.equal(mask[1], torch.tril(torch.ones(6, 6, dtype=torch.bool)))  # M = 1: plain causal


def test_prefix_encoder_outputs_of_prefix_ignore_later_patches():
    enc = AIMv2Encoder(EncoderConfig(embed_dim=32, depth=2, num_heads=2, image_size=56)).eval()
    x = torch.randn(1, 3, 56, 56)
    y = x.clone()
    y[..., 28:, :] = torch.randn(1, 3, 28, 56)  # change the bottom half: patches 8..15
    m = torch.tensor([8])
    with torch.no_grad():
        a, b = enc(x, m), enc(y, m)
        full_a, full_b = enc(x), enc(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # prefix tokens see only the prefix
    assert not torch.allclose(full_a[:, :8], full_b[:, :8], atol=1e-4)  # bidirectional sees everything


def test_patchify_matches_patch_order():
    img = torch.arange(2 * 3 * 4 * 6, dtype=torch.float).reshape(2, 3, 4, 6)
    p = patchify(img, 2)
    assert p.shape == (2, 6, 12)
    assert torch.equal(p[0, 1].reshape(2, 2, 3).permute(2, 0, 1), img[0, :, 0:2, 2:4])


def test_image_loss_ignores_prefix_patches():
    targets = normalize_patches(torch.randn(2, 8, 12))
    pred = targets[:, 1:].clone()
    pred[:, :3] += 10.0  # wrong predictions only for patches 1..3
    prefix = torch.tensor([4, 4])  # patches 0..3 are prefix: not scored
    assert image_loss(pred, targets, prefix).item() == pytest.approx(0.0, abs=1e-6)
    assert image_loss(pred, targets, torch.tensor([2, 2])).item() > 1.0


def test_text_loss_ignores_padding_after_eot():
    tokens = torch.tensor([[49406, 5, 6, EOT, 0, 0]])
    logits = torch.full((1, 6, 49408), -20.0)
    for t, tok in enumerate(tokens[0, :4]):
        logits[0, t, tok] = 20.0
    logits[0, 4:, 7] = 20.0  # confidently wrong on padding: must not count
    assert text_loss(logits, tokens, EOT).item() < 1e-3
    logits[0, 2, 6] = -20.0
    assert text_loss(logits, tokens, EOT).item() > 1.0


def _tiny_model(objective="aimv2") -> AIMv2:
    enc = EncoderConfig(embed_dim=48, depth=2, num_heads=2, image_size=56)
    dec = DecoderConfig(width=48, depth=2, num_heads=2, vocab_size=64, max_text_len=8)
    return AIMv2(AIMv2Config(encoder=enc, decoder=dec, objective=objective, eot_id=63))


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 56, 56, generator=g)
    tokens = torch.randint(1, 60, (4, 8), generator=g)
    tokens[:, 5] = 63
    return images, tokens


def test_gradients_reach_encoder_and_decoder():
    model = _tiny_model()
    images, tokens = _batch()
    out = model(images, tokens)
    assert out["loss_img"] > 0 and out["loss_text"] > 0
    out["loss"].backward()
    assert model.encoder.preprocessor.patchifier.proj.weight.grad.abs().sum() > 0
    assert model.encoder.trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.decoder.pixel_head.weight.grad.abs().sum() > 0
    assert model.decoder.text_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["aimv2", "cap", "aimv1"])
def test_tiny_model_overfits_one_batch(objective):
    model = _tiny_model(objective)
    images, tokens = _batch()
    prefix = torch.tensor([3, 5, 8, 2])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model(images, tokens, prefix_len=prefix)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, (first, loss.item())


def test_objective_variants_use_the_right_terms():
    images, tokens = _batch()
    assert _tiny_model("aimv1")(images)["loss_text"] == 0
    out = _tiny_model("cap")(images, tokens)
    assert out["loss_img"] == 0 and out["loss"] == out["loss_text"]
    with pytest.raises(ValueError, match="caption"):
        _tiny_model("cap")(images)
