"""The built-in Grounding DINO head (aimv2_eval.plugins.grounding.dino / loss) on tiny CPU configs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torchvision.ops import box_iou

from aimv2_eval.plugins.grounding.dino import (
    PADDING_LOGIT,
    DinoConfig,
    GroundingDINOHead,
    denoising_attention_mask,
    ms_deform_attn,
)
from aimv2_eval.plugins.grounding.loss import LossWeights, grounding_loss, hungarian_match, match_cost, predict_phrases

pytestmark = pytest.mark.usefixtures("one_thread")

IN_CHANNELS = [8, 16]
TEXT_WIDTH = 24


def tiny_config(**kw) -> DinoConfig:
    base: dict[str, Any] = dict(hidden=32, num_queries=20, encoder_layers=1, decoder_layers=2, num_heads=2, ffn=64, text_ffn=64,
                fusion_ffn=64, num_levels=2, num_points=2, dn_queries=4, text_heads=2, fusion_heads=2,
                max_text_len=16, fusion_dropout=0.0)
    base.update(kw)
    return DinoConfig(**base)


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(losses.values())).sum()


def tiny_batch() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, list[dict]]:
    """Two images; 6 text tokens, the first image's caption has 2 padding tokens."""
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 16, 4, 4, generator=g)]
    text = torch.randn(2, 6, TEXT_WIDTH, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    map0 = torch.zeros(1, 6)
    map0[0, 1:3] = 1
    map1 = torch.zeros(2, 6)
    map1[0, 1] = 1
    map1[1, 4] = 1
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]]), "positive_map": map0},
               {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]), "positive_map": map1}]
    return feats, text, mask, targets


def test_forward_shapes_and_padding_tokens() -> None:
    cfg = tiny_config()
    head = GroundingDINOHead(IN_CHANNELS, TEXT_WIDTH, cfg).train()
    feats, text, mask, targets = tiny_batch()
    out = head(feats, text, mask, targets=targets)
    assert out["logits"].shape == (2, 2, 20, 6)
    assert out["boxes"].shape == (2, 2, 20, 4)
    assert out["enc_logits"].shape == (2, 20, 6) and out["enc_boxes"].shape == (2, 20, 4)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    # dynamic groups: 4 // 2 targets = 2 groups of (positive, negative) x 2 slots
    assert out["dn"]["groups"] == 2 and out["dn"]["logits"].shape == (2, 2, 8, 6)
    for logits in (out["logits"][-1], out["enc_logits"]):
        assert (logits[0, :, 4:] == PADDING_LOGIT).all()
        assert (logits.argmax(-1)[0] < 4).all()  # a padding token never wins
    head.eval()
    assert head(feats, text, mask)["dn"] is None


def test_sub_sentence_mask_and_empty_targets() -> None:
    head = GroundingDINOHead(IN_CHANNELS, TEXT_WIDTH, tiny_config()).train()
    feats, text, mask, targets = tiny_batch()
    phrase = torch.tensor([0, 1, 1, 2, 2, 2])  # three phrases; tokens see only their own, positions restart
    allowed = (phrase[:, None] == phrase[None, :]).expand(2, 6, 6)
    position_ids = torch.tensor([0, 0, 1, 0, 1, 2]).expand(2, 6)
    targets[0] = {"boxes": torch.zeros(0, 4), "positive_map": torch.zeros(0, 6)}  # an image without boxes
    out = head(feats, text, mask, allowed, position_ids, targets=targets)
    assert out["dn"]["groups"] == 2 and torch.isfinite(out["logits"]).all()
    with torch.no_grad():
        plain = head.eval()(feats, text, mask)
        masked = head(feats, text, mask, allowed, position_ids)
    assert not torch.allclose(plain["logits"], masked["logits"])  # the mask and positions reach the outputs
    losses = grounding_loss(out, targets, mask)
    assert all(torch.isfinite(v) for v in losses.values())
    total(losses).backward()


def test_denoising_queries_are_invisible_to_matching_queries() -> None:
    head = GroundingDINOHead(IN_CHANNELS, TEXT_WIDTH, tiny_config())
    feats, text, mask, targets = tiny_batch()
    with torch.no_grad():
        with_dn = head.train()(feats, text, mask, targets=targets)
        without = head.eval()(feats, text, mask)
    torch.testing.assert_close(with_dn["logits"], without["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_dn["boxes"], without["boxes"], atol=1e-5, rtol=1e-5)


def test_denoising_mask_blocks_groups_and_answers() -> None:
    mask = denoising_attention_mask(max_targets=2, groups=3, num_matching=5, device=torch.device("cpu"))
    assert mask.shape == (17, 17)
    assert mask[12:, :12].all() and not mask[12:, 12:].any() and not mask[:12, 12:].any()
    for a, b in itertools.product(range(3), repeat=2):
        block = mask[4 * a:4 * a + 4, 4 * b:4 * b + 4]
        assert block.all() if a != b else not block.any()


def test_every_parameter_learns() -> None:
    # the zero-initialised last box layers (and the offsets / weights of the deformable attentions) leave some
    # gradients zero at step 0 by design; after one step every parameter must get one
    head = GroundingDINOHead(IN_CHANNELS, TEXT_WIDTH, tiny_config()).train()
    feats, text, mask, targets = tiny_batch()
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        total(grounding_loss(head(feats, text, mask, targets=targets), targets, mask)).backward()
        opt.step()
    dead = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    assert any(n.startswith("text_feat_map") for n, _ in head.named_parameters())


def _bilinear(v: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """v (d, h, w) sampled at normalised (x, y), pixel centres at (i + 0.5) / size, zero outside."""
    _, h, w = v.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(v.shape[0], dtype=torch.float64)
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * v[:, yi, xi]
    return out


def test_deformable_attention_matches_direct_sampling() -> None:
    g = torch.Generator().manual_seed(3)
    shapes = [(3, 4), (2, 2)]
    b, q, m, d, p = 2, 3, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, locations, weights)
    starts = [0, shapes[0][0] * shapes[0][1]]
    want = torch.zeros(b, q, m * d, dtype=torch.float64)
    for bi, qi, mi in itertools.product(range(b), range(q), range(m)):
        acc = torch.zeros(d, dtype=torch.float64)
        for lvl, (h, w) in enumerate(shapes):
            v = value[bi, starts[lvl]:starts[lvl] + h * w, mi].T.reshape(d, h, w)
            for pi in range(p):
                x, y = locations[bi, qi, mi, lvl, pi].tolist()
                acc += weights[bi, qi, mi, lvl, pi] * _bilinear(v, x, y)
        want[bi, qi, mi * d:(mi + 1) * d] = acc
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _brute_force(cost: torch.Tensor) -> float:
    n_q, n_t = cost.shape
    return min(sum(cost[q, t].item() for t, q in enumerate(rows)) for rows in itertools.permutations(range(n_q), n_t))


def test_matcher_is_optimal() -> None:
    # three queries; the targets are query 2's and query 0's boxes, query 1 is a distractor
    text_mask = torch.tensor([True, True, True, False])
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4], [0.8, 0.7, 0.2, 0.3]])
    logits = torch.tensor([[4.0, -4, -4, PADDING_LOGIT], [0, 0, 0, PADDING_LOGIT], [-4, 4, 4, PADDING_LOGIT]])
    target = {"boxes": torch.tensor([[0.78, 0.7, 0.22, 0.3], [0.21, 0.2, 0.1, 0.12]]),
              "positive_map": torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 0]])}
    rows, cols = hungarian_match(logits, boxes, target, text_mask)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}
    cost = match_cost(logits, boxes, target["positive_map"], target["boxes"], text_mask)
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-5)

    g = torch.Generator().manual_seed(5)  # random sets: the assignment's cost is the brute-force minimum
    for _ in range(5):
        boxes = torch.rand(5, 4, generator=g) * 0.5 + 0.25
        target = {"boxes": torch.rand(3, 4, generator=g) * 0.5 + 0.25,
                  "positive_map": (torch.rand(3, 4, generator=g) > 0.5).float()}
        logits = torch.randn(5, 4, generator=g)
        rows, cols = hungarian_match(logits, boxes, target, text_mask, LossWeights())
        cost = match_cost(logits, boxes, target["positive_map"], target["boxes"], text_mask)
        assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-4)


def test_predict_phrases_order_and_boxes() -> None:
    logits = torch.tensor([[[6.0, -6, -6, PADDING_LOGIT],  # query 0: phrase A (token 0)
                            [-6, 3, 1, PADDING_LOGIT],  # query 1: phrase B (tokens 1, 2), weaker
                            [-6, -2, -6, PADDING_LOGIT]]])  # query 2: phrase B, weaker still
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.9, 0.1, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]]])
    phrases = [torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0]])]
    (res,) = predict_phrases(logits, boxes, phrases, image_size=(100, 200), max_detections=3)
    s = torch.sigmoid
    assert res["labels"].tolist() == [0, 1, 1]
    want = torch.stack([s(torch.tensor(6.0)), (s(torch.tensor(3.0)) + s(torch.tensor(1.0))) / 2,
                        (s(torch.tensor(-2.0)) + s(torch.tensor(-6.0))) / 2])
    torch.testing.assert_close(res["scores"], want)
    torch.testing.assert_close(res["boxes"][:2], torch.tensor([[80.0, 30, 120, 70], [140, 0, 200, 30]]))
    assert res["scores"].shape == (3,) and res["labels"].dtype == torch.long


def test_overfits_two_images() -> None:
    torch.manual_seed(0)
    head = GroundingDINOHead(IN_CHANNELS, TEXT_WIDTH, tiny_config()).train()
    feats, text, mask, targets = tiny_batch()
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        loss = total(grounding_loss(head(feats, text, mask, targets=targets), targets, mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        out = head.eval()(feats, text, mask)
    size = (64, 96)
    results = predict_phrases(out["logits"][-1], out["boxes"][-1], [t["positive_map"] for t in targets], size, 10)
    for res, t in zip(results, targets):
        gt = t["boxes"].clone()
        gt = torch.cat([gt[:, :2] - gt[:, 2:] / 2, gt[:, :2] + gt[:, 2:] / 2], 1) * torch.tensor([96, 64, 96, 64])
        for j in range(len(gt)):
            top = res["boxes"][res["labels"] == j][0]  # the best-scored box of phrase j
            assert box_iou(top[None], gt[j:j + 1]).item() > 0.5
