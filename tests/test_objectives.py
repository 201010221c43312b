"""Pretraining objectives (issue #17): the pixel/text loss reductions, and the Table 9 objectives CLIP and CapPa (9b)
and separate decoders (9d): loss definitions, model behaviour, and a few steps of each in the pretraining loop."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aimv2_eval.cli import main as cli_main
from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.encoder import EncoderConfig
from aimv2_eval.core.model import AIMv2, AIMv2Config
from aimv2_eval.core.objective import clip_loss, image_loss, sample_parallel, text_loss
from aimv2_eval.core.pretrain import OptimConfig, PretrainConfig, init_from, pretrain
from aimv2_eval.data.tokenizer import load_tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.pretraining import build_model, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = EncoderConfig(embed_dim=48, depth=2, num_heads=2, image_size=56)  # 4 x 4 = 16 patches
DEC = DecoderConfig(width=48, depth=2, num_heads=2, vocab_size=64, max_text_len=8)
EOT = 63


def _model(objective="aimv2", layout="joint", seed=0, **kw) -> AIMv2:
    torch.manual_seed(seed)
    return AIMv2(AIMv2Config(encoder=ENC, decoder=replace(DEC, layout=layout), objective=objective, eot_id=EOT, **kw))


def _tokens(eot_at, generator) -> torch.Tensor:
    """Captions of random ids 1..59, end-of-text at the given positions, zero padding after it."""
    tokens = torch.randint(1, 60, (len(eot_at), 8), generator=generator)
    for b, t in enumerate(eot_at):
        tokens[b, t] = EOT
        tokens[b, t + 1 :] = 0
    return tokens


def _batch(eot_at=(5, 5, 5, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(eot_at), 3, 56, 56, generator=g), _tokens(eot_at, g)


# ---------------------------------------------------------------- loss reductions (Section 2.1's 1/I, 1/T)
def _random_pixels(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 15, 12, generator=g), torch.randn(4, 16, 12, generator=g)


def test_reductions_agree_when_every_sample_keeps_as_many_tokens():
    pred, targets = _random_pixels()
    same_prefix = torch.tensor([3, 3, 3, 3])
    assert torch.allclose(image_loss(pred, targets, same_prefix, "token"), image_loss(pred, targets, same_prefix, "sample"))
    assert torch.equal(image_loss(pred, targets, None, "token"), image_loss(pred, targets, None, "sample"))
    g = torch.Generator().manual_seed(2)
    logits, tokens = torch.randn(4, 8, 64, generator=g), _tokens((5, 5, 5, 5), g)
    assert torch.allclose(text_loss(logits, tokens, EOT, "token"), text_loss(logits, tokens, EOT, "sample"))


def test_sample_reduction_is_the_mean_of_per_sample_means():
    pred, targets = _random_pixels()
    prefix = torch.tensor([1, 3, 8, 15])  # kept predicted patches: 15, 13, 8, 1
    per_sample = [np.mean([((pred[b, j - 1] - targets[b, j]) ** 2).mean().item() for j in range(int(m), 16)])
                  for b, m in enumerate(prefix)]
    sample, token = image_loss(pred, targets, prefix, "sample"), image_loss(pred, targets, prefix, "token")
    assert sample.item() == pytest.approx(np.mean(per_sample), rel=1e-6)
    assert abs(sample.item() - token.item()) > 1e-3  # the short-prefix samples weigh more under "token"

    g = torch.Generator().manual_seed(2)
    logits, tokens = torch.randn(4, 8, 64, generator=g), _tokens((0, 2, 5, 7), g)
    logp = logits.log_softmax(-1)
    per_caption = [np.mean([-logp[b, t, tokens[b, t]].item() for t in range(e + 1)]) for b, e in enumerate((0, 2, 5, 7))]
    sample, token = text_loss(logits, tokens, EOT, "sample"), text_loss(logits, tokens, EOT, "token")
    assert sample.item() == pytest.approx(np.mean(per_caption), rel=1e-6)
    assert abs(sample.item() - token.item()) > 1e-3


def test_default_reduction_keeps_the_first_version_bit_for_bit():
    """`token` (the core default) is exactly the expression the bundled aimv2-tiny was trained with."""
    pred, targets = _random_pixels()
    prefix = torch.tensor([1, 3, 8, 15])
    err = (pred - targets[:, 1:]).pow(2).mean(-1)
    keep = (torch.arange(1, 16)[None] >= prefix[:, None]).float()
    assert torch.equal(image_loss(pred, targets, prefix), (err * keep).sum() / keep.sum())
    assert AIMv2Config().loss_reduction == "token"


def test_model_reduction_only_matters_for_unequal_samples():
    images, tokens = _batch()
    token, sample = _model(), _model(loss_reduction="sample")
    equal = torch.tensor([4, 4, 4, 4])
    a, b = token(images, tokens, prefix_len=equal), sample(images, tokens, prefix_len=equal)
    assert torch.allclose(a["loss"], b["loss"], atol=1e-6)
    images, tokens = _batch(eot_at=(1, 3, 5, 7))
    unequal = torch.tensor([1, 4, 9, 15])
    a, b = token(images, tokens, prefix_len=unequal), sample(images, tokens, prefix_len=unequal)
    assert abs(a["loss_img"] - b["loss_img"]) > 1e-4 and abs(a["loss_text"] - b["loss_text"]) > 1e-4


def test_recipes_choose_the_reduction():
    assert load_config("paper")["model"]["loss_reduction"] == "sample"  # the paper's formula
    assert load_config("tiny")["model"]["loss_reduction"] == "token"  # what built the bundled aimv2-tiny
    with pytest.raises(UserError, match="model.loss_reduction must be one of token, sample"):
        load_config("tiny", ["model.loss_reduction=mean"])
    tiny_dir = Path(__file__).resolve().parents[1] / "aimv2_eval" / "assets" / "aimv2-tiny"
    recipe = json.loads((tiny_dir / "pretrain.json").read_text())["recipe"]  # written before the option existed
    assert build_model(recipe, load_tokenizer(tiny_dir / "tokenizer.json")).cfg.loss_reduction == "token"


# ---------------------------------------------------------------- CLIP (Table 9b)
def test_clip_loss_is_open_clips():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = torch.tensor(1 / 0.07)
    ours = clip_loss(img, txt, scale)
    theirs = ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert clip_loss(img, img.clone(), torch.tensor(100.0)) < 1e-3  # matched pairs, sharp temperature
    assert clip_loss(img, img.flip(0), torch.tensor(100.0)) > 5  # every pair mismatched


def test_clip_head_temperature_pooling_and_gradients():
    model = _model("clip")
    head = model.clip
    assert head.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        head.log_logit_scale.fill_(10.0)
    assert head.logit_scale().item() == pytest.approx(100.0)  # clamped at 100, as CLIP
    with torch.no_grad():
        head.log_logit_scale.fill_(math.log(1 / 0.07))
    _, tokens = _batch(eot_at=(2, 3, 4, 5))
    after = tokens.clone()
    after[:, 6:] = 7  # after every first end-of-text: the pooled feature cannot change
    before = tokens.clone()
    before[:, 1] = 9
    with torch.no_grad():
        emb = head.embed_text(tokens)
        assert torch.allclose(emb, head.embed_text(after), atol=1e-6)
        assert not torch.allclose(emb, head.embed_text(before), atol=1e-4)
    images, tokens = _batch()
    out = model(images, tokens)
    assert out["loss_img"] == 0 and out["loss_text"] == 0 and out["loss"] > 0
    # whole images, bidirectional: a prefix length makes no difference to CLIP
    assert torch.equal(out["loss"], model(images, tokens, prefix_len=torch.tensor([1, 2, 3, 4]))["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())  # nothing unused (DDP needs no extra flag)
    assert not hasattr(model, "decoder") and model.head is model.clip


# ---------------------------------------------------------------- CapPa (Table 9b)
def test_cappa_parallel_fraction_is_per_sample():
    drawn = sample_parallel(4000, 0.75, torch.Generator().manual_seed(0))
    assert 0.73 < drawn.float().mean().item() < 0.77


def test_parallel_prediction_sees_no_caption_and_causal_sees_only_the_past():
    model = _model("cappa").eval()
    images, tokens = _batch()
    changed = tokens.clone()
    changed[:, 3] = 11
    with torch.no_grad():
        feats = model.encoder(images)
        for parallel, same_upto in ((torch.ones(4, dtype=torch.bool), 8), (torch.zeros(4, dtype=torch.bool), 4)):
            _, a = model.decoder(feats, tokens, parallel=parallel)
            _, b = model.decoder(feats, changed, parallel=parallel)
            # logits[:, t] predicts token t: parallel ones never read the caption, causal ones read tokens < t
            assert torch.allclose(a[:, :same_upto], b[:, :same_upto], atol=1e-5)
            assert same_upto == 8 or not torch.allclose(a[:, same_upto:], b[:, same_upto:], atol=1e-4)


def test_parallel_text_queries_attend_to_every_position():
    from aimv2_eval.core.decoder import _parallel_mask

    mask = _parallel_mask(torch.tensor([True, False]), n_img=3, n=6)[:, 0]  # (B, N, N), True = may attend
    causal = torch.ones(6, 6).tril().bool()
    assert torch.equal(mask[1], causal)  # autoregressive sample
    assert torch.equal(mask[0, :3], causal[:3])  # image queries stay causal
    assert mask[0, 3:].all()  # text queries of a parallel sample see the whole caption


def test_cappa_without_parallel_samples_is_cap():
    cappa = _model("cappa", parallel_fraction=0.0)
    cap = _model("cap")
    missing, unexpected = cap.load_state_dict(cappa.state_dict(), strict=False)
    assert not missing and unexpected == ["decoder.mask_token"]
    images, tokens = _batch(eot_at=(1, 3, 5, 7))
    prefix = torch.tensor([2, 5, 9, 14])
    assert torch.allclose(cappa(images, tokens, prefix_len=prefix)["loss"], cap(images, tokens, prefix_len=prefix)["loss"],
                          atol=1e-5)
    everything_parallel = _model("cappa", parallel_fraction=1.0)
    everything_parallel.load_state_dict(cappa.state_dict())
    assert not torch.allclose(everything_parallel(images, tokens, prefix_len=prefix)["loss"],
                              cappa(images, tokens, prefix_len=prefix)["loss"], atol=1e-3)


# ---------------------------------------------------------------- separate decoders (Table 9d)
def test_separate_decoders_do_not_share_weights():
    model = _model("aimv2", layout="separate")
    names = [n for n, _ in model.decoder.named_parameters()]
    assert all(n.startswith(("image.", "text.")) for n in names)
    assert not any("text" in n for n in names if n.startswith("image."))  # no text embedding or head in the pixel one
    assert "image.pixel_head.weight" in names and "text.pixel_head.weight" not in names
    images, tokens = _batch()
    out = model(images, tokens)
    out["loss_img"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.decoder.text.parameters())  # pixels never reach the text decoder
    model.zero_grad(set_to_none=True)
    out["loss_text"].backward()
    assert all(p.grad is None for p in model.decoder.image.parameters())
    model.zero_grad(set_to_none=True)
    model(images, tokens)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_separate_decoders_need_the_two_term_objective():
    with pytest.raises(ValueError, match="separate decoders"):
        _model("cap", layout="separate")
    with pytest.raises(ValueError, match="layout"):
        replace(DEC, layout="shared")


# ---------------------------------------------------------------- in the pretraining loop
def _random_pairs(n=8, seed=0):
    """n fixed random image-caption pairs (56px, captions of 3-8 tokens), indexed by position modulo n."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 56, 56, generator=g)
    tokens = _tokens([int(t) for t in torch.randint(2, 8, (n,), generator=g)], g)

    def sample(position, area):
        return images[position % n], tokens[position % n]

    return sample


def _losses(out_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective,layout,reduction", [
    ("clip", "joint", "token"), ("cappa", "joint", "token"), ("aimv2", "separate", "token"),
    ("aimv2", "joint", "sample"),
])
def test_each_objective_learns_in_the_pretraining_loop(tmp_path, objective, layout, reduction):
    model = _model(objective, layout=layout, loss_reduction=reduction)
    cfg = PretrainConfig(out_dir=tmp_path, optim=OptimConfig(lr=3e-3, warmup_steps=2, steps=20), batch_size=8,
                         log_every=1, ckpt_every=1000, progress=False)
    summary = pretrain(model, _random_pairs(), cfg)
    losses = _losses(tmp_path)
    assert summary["finished"] and len(losses) == 20
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert (tmp_path / "model" / model.head_file).is_file()


def test_clip_refuses_micro_batches(tmp_path):
    cfg = PretrainConfig(out_dir=tmp_path, optim=OptimConfig(steps=2), batch_size=8, micro_batch=4, progress=False)
    with pytest.raises(UserError, match="micro_batch=null"):
        pretrain(_model("clip"), _random_pairs(), cfg)


def test_pretrain_command_trains_clip_and_the_export_reloads(tmp_path):
    out = tmp_path / "run"
    over = ["model.size=micro", "model.image_size=56", "model.objective=clip",
            "model.encoder={embed_dim: 64, depth: 2, num_heads: 2}", "model.decoder={width: 64, depth: 1, num_heads: 2}",
            "text.context_length=48", "text.compact_vocab=100", "data.sources=[{kind: scenes, n: 100, seed: 0, image_size: 56}]",
            "data.augment.crop_size=56", "batch.size=8", "optim.steps=3", "optim.warmup_steps=1", "optim.lr=1e-3",
            f"run.out_dir={out}", "run.export_dir=null", "run.progress=false", "run.threads=1"]
    assert cli_main(["pretrain", "--config", "tiny", *over]) == 0
    model_dir = out / "model"
    assert (model_dir / "clip_head.safetensors").is_file()
    assert json.loads((model_dir / "decoder_config.json").read_text())["objective"] == "clip"
    cfg = load_config("tiny", over)
    model = build_model(cfg, load_tokenizer(model_dir / "tokenizer.json"))
    init_from(model, model_dir)
    assert model.clip.log_logit_scale.item() != pytest.approx(math.log(1 / 0.07), abs=1e-6)  # trained value loaded
    assert cli_main(["pretrain", "--config", "tiny", *over, "model.decoder.layout=separate", "model.objective=cap",
                     f"run.out_dir={tmp_path / 'bad'}"]) == 2
