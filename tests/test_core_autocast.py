"""Under bf16 autocast every RMSNorm gets input and weight of one dtype, so torch's fused kernel runs (issue #19:
a mismatch makes torch warn and fall back to the unfused path)."""

import dataclasses
import warnings

import torch

from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.layers import RMSNorm
from aimv2_eval.core.variants import encoder_config


def test_encoder_under_bf16_autocast_never_falls_back_from_fused_rms_norm():
    cfg = dataclasses.replace(encoder_config("large"), embed_dim=64, depth=2, num_heads=4, mlp_hidden=128)
    enc = AIMv2Encoder(cfg).eval()
    x = torch.randn(1, 3, 56, 56)
    with warnings.catch_warnings(), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.filterwarnings("error", message="Mismatch dtype")
        out = enc(x)
    assert torch.isfinite(out.float()).all()


def test_rms_norm_keeps_fp32_exact_and_follows_bf16_input():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 8)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.nn.RMSNorm(8)(x.bfloat16()).dtype  # as torch's layer (bf16 on CPU)
