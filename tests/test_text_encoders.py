"""The text-encoder registry: names, the contract (tokens, mask, pooled) of every family, freezing, offline errors,
and a LiT checkpoint's text tower read back through the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aimv2_eval.backbones import read_weights, weights_checksum
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.lit.checkpoint import save_lit
from aimv2_eval.plugins.lit.model import LiT
from aimv2_eval.text import (
    AIMv2TextEncoder,
    TextConfig,
    TextEncoder,
    create_text_encoder,
    list_text_encoders,
    minilm_dir,
    text_encoder_from_state,
    text_state_from_lit,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a photo of a cat", "a dog", "a much longer caption about a small red star on a striped background"]
SMALL_AIMV2 = {"kind": "aimv2", "width": 32, "depth": 2, "num_heads": 2, "mlp_hidden": 64}
EOT = 49407


def _check_contract(enc: TextEncoder, n_tokens: list[int]) -> None:
    """Shapes of tokens / mask / pooled, and a mask that is True exactly on each caption's own tokens."""
    batch = enc.tokenize(CAPTIONS)
    with torch.no_grad():
        out = enc(batch)
    b, length = len(CAPTIONS), out.mask.shape[1]
    assert out.tokens.shape == (b, length, enc.meta.token_width)
    assert out.pooled.shape == (b, enc.width) and out.mask.dtype == torch.bool
    assert out.mask.sum(1).tolist() == n_tokens
    for row, n in zip(out.mask, n_tokens):  # real tokens first, then padding only
        assert row[:n].all() and not row[n:].any()
    assert n_tokens[1] < length  # the short caption is padded, and the mask says so


def _clip_lengths() -> list[int]:
    from aimv2_eval.data.tokenizer import ClipTokenizer

    tok = ClipTokenizer()
    return [len(tok.encode(c)) for c in CAPTIONS]  # SOT + BPE tokens + EOT


# ---------------------------------------------------------------- registry
def test_registry_lists_names_and_suggests_close_ones():
    names = {s.name for s in list_text_encoders()}
    assert {"aimv2-lit", "minilm", "bert-base-uncased"} <= names
    assert [s.name for s in list_text_encoders("all-minilm*")] == ["minilm"]  # aliases match too
    with pytest.raises(UserError, match="did you mean minilm") as err:
        create_text_encoder("minlm")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="did you mean ViT-B-32"):
        create_text_encoder("open_clip:ViT-B-32x", pretrained=False)
    with pytest.raises(UserError, match="unknown text tower kind"):
        create_text_encoder({"kind": "gpt"})


def test_released_lit_tower_architecture():
    with torch.device("meta"):  # the released design, without allocating it
        enc = create_text_encoder("aimv2-lit", pretrained=False)
    assert isinstance(enc, AIMv2TextEncoder) and enc.cfg == TextConfig() and enc.width == 768
    assert enc.meta.name == "aimv2-lit" and enc.weights_id == "random"


# ---------------------------------------------------------------- families
def test_aimv2_tower_pools_its_first_eot_token():
    enc = create_text_encoder(SMALL_AIMV2)
    _check_contract(enc, _clip_lengths())
    batch = enc.tokenize(CAPTIONS)
    ids = batch["input_ids"]
    with torch.no_grad():
        out = enc(batch)
        cheap = enc.encode(batch)  # computes only up to the last EOT
    eot = (ids == EOT).int().argmax(1)
    torch.testing.assert_close(out.pooled, out.tokens[torch.arange(len(CAPTIONS)), eot], rtol=0, atol=0)
    torch.testing.assert_close(cheap, out.pooled, atol=1e-5, rtol=1e-5)
    # causal: a caption's features do not depend on the padding after it
    with torch.no_grad():
        alone = enc({"input_ids": ids[1:2, : eot[1] + 1]})
    torch.testing.assert_close(alone.tokens[0], out.tokens[1, : eot[1] + 1], atol=1e-5, rtol=1e-5)


def test_minilm_from_the_wheel_and_by_folder():
    minilm = create_text_encoder("minilm")
    tok = minilm.hf_tokenizer
    _check_contract(minilm, [len(tok(c)["input_ids"]) for c in CAPTIONS])  # [CLS] ... [SEP]
    assert minilm.meta.name == "minilm" and minilm.width == 384
    assert minilm.weights_id == weights_checksum(minilm_dir() / "model.safetensors")
    batch = minilm.tokenize(CAPTIONS)
    with torch.no_grad():
        out = minilm(batch)
    # sentence-transformers pooling: the mean over real tokens only, L2-normalised
    m = out.mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.pooled, F.normalize((out.tokens * m).sum(1) / m.sum(1), dim=-1))
    by_folder = create_text_encoder(f"hf:{minilm_dir()}")
    assert by_folder.meta.name.startswith("hf:")
    with torch.no_grad():
        torch.testing.assert_close(by_folder.encode(batch), out.pooled)


def test_open_clip_text_tower_matches_open_clip():
    import open_clip

    from aimv2_eval.data.tokenizer import ClipTokenizer

    torch.manual_seed(0)
    enc = create_text_encoder("open_clip:ViT-S-32-alt", pretrained=False)  # random: never downloads
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-S-32-alt", pretrained=None).eval()  # the same random weights
    _check_contract(enc, _clip_lengths())
    assert (enc.width, enc.meta.token_width, enc.meta.context_length) == (256, 256, 77)
    assert set(dict(enc.named_parameters())) >= {"token_embedding.weight", "positional_embedding", "text_projection"}
    assert not any(k.startswith("visual.") for k in enc.state_dict())  # only the text half is kept
    ids = ClipTokenizer()(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(enc.encode({"input_ids": ids}), clip.encode_text(ids), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="need a tag"):
        create_text_encoder("open_clip:ViT-S-32-alt")


def test_siglip_tower_with_a_sentencepiece_vocabulary(tmp_path):
    import sentencepiece as spm

    with pytest.raises(UserError, match="SigLIP vocabulary not found") as err:
        create_text_encoder(f"siglip:{tmp_path / 'missing.model'}", pretrained=False)
    assert "\n" not in str(err.value)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=24,
                                   hard_vocab_limit=False, minloglevel=2)
    with torch.device("meta"):  # shapes of the ViT-B/16 SigLIP tower without allocating it
        enc = create_text_encoder(f"siglip:{tmp_path / 'sp.model'}", pretrained=False)
    batch = enc.tokenize(CAPTIONS)
    ids = batch["input_ids"]
    assert ids.shape == (3, 64) and (ids[:, -1] == enc.tokenizer.eot_id).all()  # padded with EOS
    out = enc({"input_ids": ids.to("meta")})
    assert out.tokens.shape == (3, 64, 768) and out.pooled.shape == (3, 768) and out.mask.shape == (3, 64)


# ---------------------------------------------------------------- freezing and errors
def test_frozen_by_default_and_gradients_when_trainable():
    frozen = create_text_encoder(SMALL_AIMV2)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = create_text_encoder(SMALL_AIMV2, trainable=True)
    trainable(trainable.tokenize(CAPTIONS)).pooled.square().sum().backward()
    grads = {n: p.grad for n, p in trainable.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["preprocessor.text_embedding.weight"].abs().sum() > 0


def test_hub_encoders_offline_without_cache_fail_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="hf download google-bert/bert-base-uncased") as err:
        create_text_encoder("bert-base-uncased")
    assert "\n" not in str(err.value) and "local folder" in str(err.value)
    with pytest.raises(UserError, match="hf download apple/aimv2-large-patch14-224-lit"):
        create_text_encoder("aimv2-lit")  # weights come from Apple's LiT checkpoint
    with pytest.raises(UserError, match="not found"):
        create_text_encoder(f"hf:{tmp_path / 'no-such-folder'}")


# ---------------------------------------------------------------- LiT checkpoints
@pytest.mark.parametrize("scheme", ["apple", "hf"])
def test_lit_checkpoint_text_tower_round_trips(tmp_path, scheme):
    text = create_text_encoder(SMALL_AIMV2)
    with torch.no_grad():
        for p in text.parameters():  # off its initial values (norm gains included)
            p.add_(torch.randn_like(p) * 0.05)
    lit = LiT(None, 64, text, 16, head_heads=4)
    folder = save_lit(lit, tmp_path / scheme, scheme)
    raw, config, path = read_weights(folder)
    assert any(k.startswith("text_model." if scheme == "hf" else "text_encoder.") for k in raw)
    back = text_encoder_from_state(text_state_from_lit(raw), config, weights_checksum(path), str(path))
    assert back.cfg == text.cfg and back.weights_id.startswith("sha256:")
    batch = text.tokenize(CAPTIONS)
    with torch.no_grad():
        a, b = text(batch), back(batch)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled) and torch.equal(a.mask, b.mask)
