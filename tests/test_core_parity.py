"""Our encoder equals timm's and transformers' AIMv2 on the same random weights, converted through our loader."""

import pytest
import timm
import torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel

from aimv2_eval.core.checkpoints import infer_config, to_apple
from aimv2_eval.core.encoder import AIMv2Encoder

TOL = 1e-4


def _randomize(model: torch.nn.Module) -> None:
    # Non-trivial norms too: the released weights are far from the init values.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05 if p.ndim > 1 else 1.0)


def _ours_from(state_dict, config=None) -> AIMv2Encoder:
    sd, _ = to_apple(state_dict)
    enc = AIMv2Encoder(infer_config(sd, config)).eval()
    enc.load_state_dict(sd, strict=True)
    return enc


def test_timm_aimv2_large_224_parity():
    ref = timm.create_model("aimv2_large_patch14_224", pretrained=False, dynamic_img_size=True).eval()
    _randomize(ref)
    ours = _ours_from(ref.state_dict())
    assert ours.cfg.embed_dim == 1024 and ours.cfg.depth == 24 and ours.cfg.num_heads == 8
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (ref.forward_features(x) - ours(x)).abs().max().item()
    assert diff <= TOL, diff


def test_timm_parity_at_other_resolution_resizes_positions_like_timm():
    ref = timm.create_model(
        "aimv2_large_patch14_224", pretrained=False, embed_dim=96, depth=2, num_heads=2, dynamic_img_size=True
    ).eval()
    _randomize(ref)
    ours = _ours_from(ref.state_dict(), {"num_attention_heads": 2})
    x = torch.randn(2, 3, 168, 294)  # 12 x 21 grid, resized from the 16 x 16 table
    with torch.no_grad():
        assert (ref.forward_features(x) - ours(x)).abs().max().item() <= TOL


@pytest.mark.parametrize("native,size", [(False, (224, 224)), (True, (168, 252))])
def test_transformers_parity(native, size):
    cfg = Aimv2VisionConfig(
        hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=2, use_head=False,
        is_native=native,
    )
    ref = Aimv2VisionModel(cfg).eval()
    _randomize(ref)
    ours = _ours_from(ref.state_dict(), cfg.to_dict())
    assert ours.cfg.pos_embed == ("sincos" if native else "learned")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        diff = (ref(pixel_values=x).last_hidden_state - ours(x)).abs().max().item()
    assert diff <= TOL, diff


def test_transformers_large_config_maps_to_our_large():
    with torch.device("meta"):
        ref = Aimv2VisionModel(Aimv2VisionConfig(use_head=False))
    sd, _ = to_apple(ref.state_dict())
    cfg = infer_config(sd, Aimv2VisionConfig().to_dict())
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.image_size) == (1024, 24, 8, 2816, 224)
