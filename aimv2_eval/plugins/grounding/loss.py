"""Grounding DINO training losses and postprocessing, as MM-Grounding-DINO configures mmdet's GroundingDINOHead.

- Hungarian matching per image, per decoder layer and for the selected encoder queries: cost = 2 * binary focal cost
  over the real text tokens (mmdet BinaryFocalLossCost: summed over tokens against the box's positive map) + 5 * L1
  of normalised cxcywh + 2 * (-GIoU).
- Losses per layer: sigmoid focal loss (alpha 0.25, gamma 2) over every (query, real token) pair with the matched
  boxes' positive maps as targets, L1 and GIoU on matched boxes; all three divided by the number of target boxes in
  the batch (mmdet's avg_factor with bg_cls_weight 0). Padding tokens take no part.
- Denoising queries are not matched: the positive query of group g for target t is its own target, negatives and
  padding slots are background (classification only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss


@dataclass
class LossWeights:
    """MM-Grounding-DINO: focal (alpha 0.25, gamma 2) 1.0, L1 5.0, GIoU 2.0; matcher costs 2.0 / 5.0 / 2.0."""

    cls: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    match_cls: float = 2.0
    match_l1: float = 5.0
    match_giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0


def _xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


@torch.no_grad()
def match_cost(logits: Tensor, boxes: Tensor, positive_map: Tensor, target_boxes: Tensor, text_mask: Tensor,
               w: LossWeights = LossWeights()) -> Tensor:
    """(Q, L) logits, (Q, 4) boxes vs (N, L) maps, (N, 4) boxes, (L,) real-token mask -> (Q, N) matching cost."""
    tokens = text_mask.bool()
    p = logits[:, tokens].float().sigmoid()
    gt = positive_map[:, tokens].float()
    eps = 1e-12
    neg = -(1 - p + eps).log() * (1 - w.alpha) * p.pow(w.gamma)
    pos = -(p + eps).log() * w.alpha * (1 - p).pow(w.gamma)
    cost_cls = pos @ gt.T + neg @ (1 - gt).T
    cost_l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    cost_giou = -generalized_box_iou(_xyxy(boxes.float()), _xyxy(target_boxes.float()))
    return w.match_cls * cost_cls + w.match_l1 * cost_l1 + w.match_giou * cost_giou


def hungarian_match(logits: Tensor, boxes: Tensor, target: dict, text_mask: Tensor,
                    w: LossWeights = LossWeights()) -> tuple[Tensor, Tensor]:
    """One image -> (query indices, target indices) of the minimum-cost assignment."""
    if len(target["boxes"]) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        return empty, empty
    cost = match_cost(logits, boxes, target["positive_map"], target["boxes"], text_mask, w)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=logits.device),
            torch.as_tensor(cols, dtype=torch.long, device=logits.device))


def _set_losses(logits: Tensor, boxes: Tensor, targets: list[dict], assignment: list[tuple[Tensor, Tensor]],
                text_mask: Tensor, num_boxes: float, w: LossWeights) -> dict[str, Tensor]:
    """Weighted focal / L1 / GIoU of one prediction set (B, Q, ·) given query -> target indices per image."""
    labels = torch.zeros_like(logits, dtype=torch.float32)
    pred, gt = [], []
    for b, (t, (q_idx, t_idx)) in enumerate(zip(targets, assignment)):
        labels[b, q_idx] = t["positive_map"][t_idx].float().to(labels.device)
        pred.append(boxes[b, q_idx])
        gt.append(t["boxes"][t_idx].to(boxes))
    real = text_mask.bool()[:, None, :].expand_as(logits)
    focal = sigmoid_focal_loss(logits[real].float(), labels[real], w.alpha, w.gamma, reduction="sum")
    pred_boxes, gt_boxes = torch.cat(pred).float(), torch.cat(gt).float()
    l1 = (pred_boxes - gt_boxes).abs().sum()
    giou = generalized_box_iou_loss(_xyxy(pred_boxes), _xyxy(gt_boxes), reduction="sum")
    return {"loss_cls": w.cls * focal / num_boxes, "loss_bbox": w.l1 * l1 / num_boxes,
            "loss_iou": w.giou * giou / num_boxes}


def _matched_losses(logits: Tensor, boxes: Tensor, targets: list[dict], text_mask: Tensor, num_boxes: float,
                    w: LossWeights) -> dict[str, Tensor]:
    with torch.no_grad():
        assignment = [hungarian_match(logits[b].detach(), boxes[b].detach(), t, text_mask[b], w)
                      for b, t in enumerate(targets)]
    return _set_losses(logits, boxes, targets, assignment, text_mask, num_boxes, w)


def _denoising_assignment(targets: list[dict], dn: dict, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """The positive query of target t in group g sits at g * 2 * max_targets + t (ContrastiveDenoising's layout)."""
    out = []
    for t in targets:
        n = len(t["boxes"])
        local = torch.arange(n, device=device)
        starts = torch.arange(dn["groups"], device=device) * 2 * dn["max_targets"]
        out.append(((starts[:, None] + local[None]).flatten(), local.repeat(dn["groups"])))
    return out


def _prefixed(prefix: str, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in losses.items()}


def grounding_loss(out: dict, targets: list[dict], text_mask: Tensor,
                   w: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """Flat dict of weighted scalar losses whose sum is the training loss: the last decoder layer unprefixed,
    earlier layers "d{i}.", the encoder queries "enc.", denoising "dn." (last layer) and "d{i}.dn."."""
    num_boxes = float(max(sum(len(t["boxes"]) for t in targets), 1))
    n_layers = out["logits"].shape[0]
    losses: dict[str, Tensor] = {}
    for i in range(n_layers):
        prefix = "" if i == n_layers - 1 else f"d{i}."
        losses.update(_prefixed(prefix, _matched_losses(out["logits"][i], out["boxes"][i], targets, text_mask,
                                                        num_boxes, w)))
    losses.update(_prefixed("enc.", _matched_losses(out["enc_logits"], out["enc_boxes"], targets, text_mask,
                                                    num_boxes, w)))
    dn = out.get("dn")
    if dn is not None:
        assignment = _denoising_assignment(targets, dn, dn["boxes"].device)
        num_dn = float(max(sum(len(t["boxes"]) for t in targets) * dn["groups"], 1))
        for i in range(n_layers):
            prefix = "dn." if i == n_layers - 1 else f"d{i}.dn."
            losses.update(_prefixed(prefix, _set_losses(dn["logits"][i], dn["boxes"][i], targets, assignment,
                                                        text_mask, num_dn, w)))
    return losses


@torch.no_grad()
def predict_phrases(logits: Tensor, boxes: Tensor, phrase_maps: list[Tensor], image_size: tuple[int, int],
                    max_detections: int) -> list[dict]:
    """Last-layer logits (B, Q, L) and boxes (B, Q, 4) -> per image the top `max_detections` (query, phrase) pairs.

    A phrase's score is the mean token probability over its tokens (mmdet convert_grounding_to_cls_scores); boxes are
    xyxy pixels of image_size (h, w), clamped to the image.
    """
    h, w = image_size
    results = []
    for b, phrase_map in enumerate(phrase_maps):
        pm = phrase_map.to(logits.device).float()
        if len(pm) == 0:
            empty = logits.new_zeros(0)
            results.append({"boxes": empty.view(0, 4), "scores": empty, "labels": empty.long()})
            continue
        pm = pm / pm.sum(-1, keepdim=True).clamp(min=1e-6)
        scores = logits[b].float().sigmoid() @ pm.T  # (Q, K)
        k = min(max_detections, scores.numel())
        top, index = scores.flatten().topk(k)
        n_phrases = scores.shape[1]
        xyxy = _xyxy(boxes[b].float()[torch.div(index, n_phrases, rounding_mode="floor")])
        xyxy = xyxy * xyxy.new_tensor([w, h, w, h])
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        results.append({"boxes": xyxy, "scores": top, "labels": index % n_phrases})
    return results
