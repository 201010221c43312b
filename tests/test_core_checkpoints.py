"""Save/load through every key scheme, sources (dir, file, hub id) and clear failures."""

import json

import pytest
import torch

from aimv2_eval.core.checkpoints import SCHEMES, detect_scheme, load_encoder, read_state_dict, save_encoder
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.errors import UserError


@pytest.fixture(params=["learned", "sincos"])
def encoder(request):
    enc = AIMv2Encoder(EncoderConfig(embed_dim=64, depth=2, num_heads=4, image_size=56, pos_embed=request.param))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return enc.eval()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_through_each_scheme(tmp_path, encoder, scheme):
    save_encoder(encoder, tmp_path / scheme, scheme=scheme)
    from safetensors.torch import load_file

    assert detect_scheme(load_file(str(tmp_path / scheme / "model.safetensors"))) == scheme
    loaded, ckpt = load_encoder(tmp_path / scheme)
    assert ckpt.scheme == scheme
    assert loaded.cfg == encoder.cfg
    x = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))


def test_file_source_and_torch_pickle(tmp_path, encoder):
    path = tmp_path / "enc.pt"
    torch.save({"state_dict": encoder.state_dict()}, path)
    # No config.json: heads come from the released-size table, which has no 64-wide entry.
    with pytest.raises(UserError, match="num_attention_heads"):
        load_encoder(path)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "image_size": 56, "is_native": encoder.cfg.pos_embed == "sincos"}))
    loaded, _ = load_encoder(path)
    assert loaded.cfg == encoder.cfg


def test_corrupt_and_missing_checkpoints_fail_clearly(tmp_path, encoder):
    save_encoder(encoder, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read weights"):
        load_encoder(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_encoder(tmp_path / "nowhere" / "x.safetensors")
    with pytest.raises(UserError, match="no weights"):
        (tmp_path / "empty").mkdir()
        load_encoder(tmp_path / "empty")


def test_foreign_keys_are_rejected(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="unrecognised checkpoint keys"):
        read_state_dict(tmp_path / "other.pt") and load_encoder(tmp_path / "other.pt")


def test_hub_id_offline_without_cache_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"apple/aimv2-large-patch14-224.*hf download"):
        load_encoder("apple/aimv2-large-patch14-224")


def test_hub_id_resolves_from_the_cache(tmp_path, monkeypatch, encoder):
    # A hub-layout snapshot in the cache is found without network.
    import huggingface_hub.constants as c

    cache = tmp_path / "cache"
    snap = cache / "models--apple--aimv2-test" / "snapshots" / "abc123"
    save_encoder(encoder, snap)
    (cache / "models--apple--aimv2-test" / "refs").mkdir(parents=True)
    (cache / "models--apple--aimv2-test" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    loaded, ckpt = load_encoder("apple/aimv2-test")
    assert loaded.cfg == encoder.cfg


def test_sharded_safetensors_directory(tmp_path, encoder):
    from safetensors.torch import save_file

    sd = encoder.state_dict()
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: sd[k].contiguous() for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "image_size": 56}))
    loaded, _ = load_encoder(tmp_path)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))


def test_apple_lit_checkpoint_yields_its_image_tower(tmp_path, encoder):
    from safetensors.torch import save_file

    sd = {f"image_encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    sd["image_encoder.head.k.weight"] = torch.zeros(64, 64)
    sd["text_encoder.trunk.post_trunk_norm.weight"] = torch.ones(8)
    sd["log_logit_scale"] = torch.zeros(())
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "image_size": 56}))
    loaded, ckpt = load_encoder(tmp_path)
    assert ckpt.scheme == "apple" and "head.k.weight" in ckpt.extra_state and "log_logit_scale" in ckpt.extra_state
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
