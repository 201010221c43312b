"""Grounding's mmdet engine: MM-Grounding-DINO (mmdet 3.3 `GroundingDINO`) with a tiny registry ViT in ViTDet form and
MiniLM as its language model. The replacement language model against independent per-sub-sentence encoding, the config
against mmdet's own file, losses and gradients, predict's interface, and a short seeded overfit."""

from __future__ import annotations

import pytest
import torch

from aimv2_eval.backbones import create_backbone
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.grounding import mmdet_engine

if not mmdet_engine.available():
    pytest.skip("mmdet engine not installed (mmdet 3.3.0 + mmcv 2.1.0 with ops): bash scripts/install_detection.sh",
                allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "aimv2-tiny"
SIZE = 128
# the plugin's protocol shape: transformer sizes in `dino` (those of tasks/_grounding_scenes.yaml, one layer each)
DINO = {"hidden": 64, "num_queries": 30, "encoder_layers": 1, "decoder_layers": 1, "num_heads": 4, "ffn": 256,
        "text_ffn": 128, "fusion_ffn": 128, "dn_queries": 10}
CFG = {"window": 4, "global_blocks": None, "feature_norm": True, "fpn_channels": 64, "max_text_len": 64,
       "max_detections": 20, "dino": DINO}
CAPTIONS = ["a red square on the left.", "the green bar. a dog?"]


@pytest.fixture(scope="module")
def minilm():
    from aimv2_eval.text import create_text_encoder

    return create_text_encoder("minilm", trainable=True)


def _model(minilm=None, **cfg):
    from aimv2_eval.text import create_text_encoder

    torch.manual_seed(0)
    backbone = create_backbone(TINY, pretrained=False, trainable=True)
    text = minilm if minilm is not None else create_text_encoder("minilm", trainable=True)
    return mmdet_engine.MMDetGroundingDINO(backbone, text, {**CFG, **cfg}, SIZE)


def _span(caption: str, phrase: str) -> tuple[int, int]:
    s = caption.index(phrase)
    return s, s + len(phrase)


def _scenes():
    """Two 128 px images, each one bright rectangle named by a phrase of its caption (xyxy px)."""
    g = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(2, 3, SIZE, SIZE, generator=g)
    boxes = [torch.tensor([[16.0, 24.0, 64.0, 96.0]]), torch.tensor([[72.0, 40.0, 120.0, 72.0]])]
    for img, b, ch in zip(images, boxes, (0, 1)):
        x0, y0, x1, y1 = b[0].int().tolist()
        img[ch, y0:y1, x0:x1] += 2.0
    targets = [{"boxes": boxes[0], "spans": [[_span(CAPTIONS[0], "red square")]]},
               {"boxes": boxes[1], "spans": [[_span(CAPTIONS[1], "green bar")]]}]
    return images, targets


# ---------------------------------------------------------------- the replacement language model
def test_sub_sentence_features_equal_encoding_each_sub_sentence_alone(minilm):
    from mmdet.models.language_models.bert import generate_masks_with_special_tokens_and_transfer_map

    lm = mmdet_engine.AIMv2EvalLanguageModel(minilm, max_tokens=256)
    bert = minilm.model.eval()
    captions = ["a red car. the dog on the left? sky", "cat."]  # two lengths: the second row is padded
    with torch.no_grad():
        out = lm(captions)
    tok = lm.tokenizer(captions, padding="longest", return_tensors="pt")
    ids, real = tok["input_ids"], tok["attention_mask"].bool()
    assert set(out) == {"embedded", "masks", "hidden", "position_ids", "text_token_mask"}
    assert out["embedded"].shape == (2, ids.shape[1], bert.config.hidden_size)
    assert torch.equal(out["text_token_mask"], real)
    masks, pos = generate_masks_with_special_tokens_and_transfer_map(tok, lm.special_tokens)
    assert torch.equal(out["masks"], masks) and torch.equal(out["position_ids"], pos)
    special = torch.isin(ids, torch.tensor(lm.special_tokens))
    checked, length = 0, ids.shape[1]
    for b in range(2):
        # mmdet's sub-sentences: each closed by (and holding) a special token inside the row; a special token in the
        # first or last column, and a token after the last separator, stands alone
        pieces, prev = [], 0
        for j in range(length):
            if special[b, j]:
                pieces.append((j, j + 1) if j in (0, length - 1) else (prev + 1, j + 1))
                prev = j
        covered = {j for s, e in pieces for j in range(s, e)}
        pieces += [(j, j + 1) for j in range(int(real[b].sum())) if j not in covered]
        for s, e in pieces:
            with torch.no_grad():
                alone = bert(input_ids=ids[b:b + 1, s:e], position_ids=torch.arange(e - s)[None],
                             token_type_ids=torch.zeros(1, e - s, dtype=torch.long)).last_hidden_state[0]
            torch.testing.assert_close(out["embedded"][b, s:e], alone, atol=1e-4, rtol=1e-4)
            checked += e - s
    assert checked == int(real.sum())  # every real token compared, the padded row's too
    assert length > int(real[1].sum())


def test_language_model_exposes_what_grounding_dino_reads(minilm):
    lm = mmdet_engine.AIMv2EvalLanguageModel(minilm)
    assert lm.tokenizer is minilm.hf_tokenizer and lm.tokenizer.is_fast
    assert lm.language_backbone.body.language_dim == minilm.model.config.hidden_size
    assert (lm.max_tokens, lm.pad_to_max) == (256, False)
    assert lm.special_tokens == minilm.hf_tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])


def test_a_text_encoder_without_a_fast_bert_tokenizer_is_one_user_error():
    from aimv2_eval.text import create_text_encoder

    clip_text = create_text_encoder({"kind": "aimv2", "width": 32, "depth": 1, "num_heads": 2, "mlp_hidden": 64})
    with pytest.raises(UserError, match="BERT-like text encoder with a fast tokenizer"):
        mmdet_engine.AIMv2EvalLanguageModel(clip_text)


# ---------------------------------------------------------------- config and registry
def test_config_is_mm_grounding_dinos_with_our_parts(minilm):
    base = mmdet_engine.base_config()
    backbone = create_backbone(TINY, pretrained=False, trainable=True)
    full = mmdet_engine.build_config(backbone, minilm, {})
    assert base["type"] == "GroundingDINO" and full["type"] == "AIMv2EvalGroundingDINO"
    assert full["num_queries"] == 900 == base["num_queries"]
    assert full["encoder"]["num_layers"] == 6 and full["decoder"]["num_layers"] == 6
    assert full["bbox_head"]["loss_bbox"]["loss_weight"] == 5.0  # GIoU x2 is the head's default (checked below)
    assert full["train_cfg"] == base["train_cfg"] and full["test_cfg"]["max_per_img"] == 300
    assert full["dn_cfg"] == base["dn_cfg"]
    assert full["encoder"]["text_layer_cfg"] == base["encoder"]["text_layer_cfg"]
    assert full["encoder"]["fusion_layer_cfg"] == base["encoder"]["fusion_layer_cfg"]
    assert full["decoder"]["layer_cfg"] == base["decoder"]["layer_cfg"]
    assert full["language_model"]["special_tokens_list"] == ["[CLS]", "[SEP]", ".", "?"]
    assert full["neck"]["mapper"]["norm_cfg"] == {"type": "GN", "num_groups": 32}
    tiny = mmdet_engine.build_config(backbone, minilm, CFG)
    assert tiny["num_queries"] == 30 and tiny["dn_cfg"]["group_cfg"]["num_dn_queries"] == 10
    assert tiny["encoder"]["text_layer_cfg"]["ffn_cfg"]["feedforward_channels"] == 128
    assert tiny["encoder"]["fusion_layer_cfg"]["num_heads"] == 2 and tiny["bbox_head"]["embed_dims"] == 64
    # the brief's flat keys work too; missing sizes keep the config's ratios (4 text heads per 8, FFN halves)
    flat = mmdet_engine.build_config(backbone, minilm, {"hidden": 128, "num_heads": 8, "ffn": 512, "num_queries": 50})
    assert flat["encoder"]["text_layer_cfg"]["self_attn_cfg"] == {"num_heads": 4, "embed_dims": 128, "dropout": 0.0}
    assert flat["encoder"]["fusion_layer_cfg"]["embed_dim"] == 256 and flat["num_queries"] == 50
    with pytest.raises(UserError, match="not divisible"):
        mmdet_engine.build_config(backbone, minilm, {**CFG, "dino": {**DINO, "num_heads": 3}})


def test_width_256_is_mmdets_grounding_dino_and_other_widths_build(minilm):
    """The width-generic subclass changes nothing at 256: same parameters, same encoder outputs as mmdet's own
    GroundingDINO.forward_encoder (which hard-codes 256-wide text positions)."""
    from mmdet.models.detectors import GroundingDINO

    model = _model(minilm, dino={**DINO, "hidden": 256, "num_heads": 8, "fusion_ffn": 256})
    det = model.detector
    assert isinstance(det, GroundingDINO) and det.decoder.ref_point_head.layers[0].in_features == 512
    images, _ = _scenes()
    det.eval()
    samples = [model._sample(i, images, c) for i, c in enumerate(CAPTIONS)]
    data = model._preprocess(images, samples, training=False)
    with torch.no_grad():
        feats = det.extract_feat(data["inputs"])
        text = det.language_model(CAPTIONS)
        text["embedded"] = det.text_feat_map(text["embedded"])
        enc_in, _ = det.pre_transformer(feats, data["data_samples"])
        ours = det.forward_encoder(**enc_in, text_dict=text)
        theirs = GroundingDINO.forward_encoder(det, **enc_in, text_dict=text)
    for k in ("memory", "memory_text"):
        torch.testing.assert_close(ours[k], theirs[k], atol=0, rtol=0)
    small = _model(minilm).detector
    assert small.embed_dims == 64 and small.decoder.ref_point_head.layers[-1].out_features == 64


def test_register_is_idempotent_and_builds_by_name():
    from mmdet.registry import MODELS

    mmdet_engine.register()
    mmdet_engine.register()
    lm = MODELS.build({"type": "AIMv2EvalLanguageModel", "name": "minilm"})
    assert isinstance(lm, mmdet_engine.AIMv2EvalLanguageModel)
    neck = MODELS.build({"type": "AIMv2EvalGroundingNeck", "in_channels": 192, "fpn_channels": 32,
                         "mapper": {"type": "ChannelMapper", "out_channels": 64, "kernel_size": 1, "act_cfg": None,
                                    "norm_cfg": {"type": "GN", "num_groups": 32}}})
    outs = neck((torch.randn(1, 192, 8, 8),))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 8, 16, 32, 64
    assert all(o.shape[1] == 64 for o in outs)


# ---------------------------------------------------------------- engine
def test_losses_are_finite_and_reach_backbone_text_encoder_and_heads(minilm):
    model = _model(minilm)
    head = model.detector.bbox_head
    assert type(head.loss_iou).__name__ == "GIoULoss" and head.loss_iou.loss_weight == 2.0
    assert type(head.loss_cls).__name__ == "FocalLoss" and head.loss_bbox.loss_weight == 5.0
    images, targets = _scenes()
    losses = model(images, CAPTIONS, targets)
    assert {"loss_cls", "loss_bbox", "loss_iou", "enc_loss_cls", "dn_loss_cls"} <= set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    groups = {"backbone": model.backbone, "text": model.text_encoder, "heads": model.heads()}
    ids = {name: {id(p) for p in m.parameters()} for name, m in groups.items()}
    assert not (ids["backbone"] & ids["text"]) and not (ids["heads"] & (ids["backbone"] | ids["text"]))
    every = {id(p) for p in model.parameters()}
    assert every == ids["backbone"] | ids["text"] | ids["heads"]  # the three groups cover the model
    for name, m in groups.items():
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: no gradient for {missing[:5]}"
        assert any(p.grad.abs().sum() > 0 for p in m.parameters() if p.grad is not None), name
    assert not any(p.requires_grad for p in model.text_encoder.model.pooler.parameters())  # mmdet's BERT has none


def test_building_keeps_the_given_backbone_and_text_weights(minilm):
    torch.manual_seed(0)
    backbone = create_backbone(TINY, pretrained=False, trainable=True)
    before_v = {k: v.clone() for k, v in backbone.state_dict().items()}
    before_t = {k: v.clone() for k, v in minilm.state_dict().items()}
    model = mmdet_engine.MMDetGroundingDINO(backbone, minilm, CFG, SIZE)
    assert model.backbone is backbone and model.text_encoder is minilm
    assert all(torch.equal(before_v[k], v) for k, v in backbone.state_dict().items())
    assert all(torch.equal(before_t[k], v) for k, v in minilm.state_dict().items())


def test_predict_gives_boxes_scores_and_phrase_labels(minilm):
    model = _model(minilm)
    images, _ = _scenes()
    phrases = [[[_span(CAPTIONS[0], "red square")], [_span(CAPTIONS[0], "the left")]],
               [[_span(CAPTIONS[1], "green bar")], [_span(CAPTIONS[1], "dog")]]]
    out = model.predict(images, CAPTIONS, phrases, max_detections=7)
    assert len(out) == 2
    for o in out:
        assert set(o) == {"boxes", "scores", "labels"}
        assert o["boxes"].shape == (7, 4) and o["scores"].shape == (7,) and o["labels"].dtype == torch.long
        assert o["labels"].min() >= 0 and o["labels"].max() < 2
        assert (o["boxes"] >= 0).all() and (o["boxes"] <= SIZE).all()
        assert (o["boxes"][:, 2:] >= o["boxes"][:, :2]).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
    with pytest.raises(UserError, match="phrase spans"):
        model.predict(images, CAPTIONS, [[[(0, 999)]], [[(0, 3)]]], max_detections=5)


def test_tiny_overfit_grounds_each_phrase_to_its_box(minilm):
    from torchvision.ops import box_iou

    model = _model(minilm)
    images, targets = _scenes()
    phrases = [[t["spans"][0]] for t in targets]
    groups = [{"params": model.backbone.parameters(), "lr": 2e-4},
              {"params": [p for p in model.text_encoder.parameters() if p.requires_grad], "lr": 2e-5},
              {"params": model.heads().parameters(), "lr": 1e-3}]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    for _ in range(60):  # both boxes pass IoU 0.5 from about step 40 (IoU 0.84, 0.97 at 60)
        loss = sum(model(images, CAPTIONS, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # MM-G-DINO's clip_grad
        opt.step()
    out = model.predict(images, CAPTIONS, phrases, max_detections=5)
    for o, t in zip(out, targets):
        assert box_iou(o["boxes"][:1], t["boxes"]).item() > 0.5
