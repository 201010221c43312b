"""The grounding plugin: prompts and token targets (text.py), the built-in engine's interface, and `aimv2-eval run`
end to end on the embedded scenes (REC P@1 and OVD AP recomputed independently from the written predictions)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from aimv2_eval.backbones import create_backbone, describe_backbone
from aimv2_eval.cli import main as cli
from aimv2_eval.data.grounding import open_grounding_split
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.base import RunOptions
from aimv2_eval.plugins.grounding import plugin as grounding
from aimv2_eval.plugins.grounding import text
from aimv2_eval.tasks import load_task
from aimv2_eval.text import create_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm():
    return create_text_encoder("minilm")


# ---------------------------------------------------------------- 1. prompts and token targets
def test_detection_prompt_spans_name_each_class():
    caption, spans = text.detection_prompt(["red circle", "cat", "blue square"])
    assert caption == "red circle . cat . blue square ."
    assert [caption[s:e] for [(s, e)] in spans] == ["red circle", "cat", "blue square"]
    with pytest.raises(UserError, match="empty"):
        text.detection_prompt([])
    with pytest.raises(UserError, match="name is empty"):
        text.detection_prompt(["cat", " "])
    assert text.chunks(5, 2) == [[0, 1], [2, 3], [4]]


def test_sub_sentence_mask_matches_the_phrase_blocks():
    # [CLS] red circle . cat . [SEP] [PAD]: specials 101, 1012, 102
    ids = torch.tensor([[101, 7, 8, 1012, 9, 1012, 102, 0]])
    attention, positions = text.sub_sentence_mask(ids, [101, 102, 1012])
    blocks = [[0], [1, 2, 3], [4, 5], [6], [7]]  # the [SEP] closes an empty phrase; padding sees only itself
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for b in blocks:
        expected[np.ix_(b, b)] = True
    assert torch.equal(attention[0], expected)
    assert positions[0].tolist() == [0, 0, 1, 2, 0, 1, 0, 0]


def test_sub_sentence_features_equal_each_phrase_encoded_alone(minilm):
    """The independent computation: every phrase through the BERT on its own, positions from 0."""
    caption, spans = text.detection_prompt(["red circle", "blue square", "cat"])
    tokens = text.tokenize(minilm, [caption, "the small red circle left of the square"])
    with torch.no_grad():
        features = text.encode(minilm, tokens)
        start = 1
        for phrase in ("red circle .", "blue square .", "cat ."):
            ids = minilm.hf_tokenizer(phrase, add_special_tokens=False, return_tensors="pt")["input_ids"]
            alone = minilm.model(input_ids=ids).last_hidden_state[0]
            torch.testing.assert_close(features[0, start : start + len(alone)], alone, atol=1e-4, rtol=1e-4)
            start += len(alone)
    maps = text.phrase_maps(tokens, 0, spans)
    assert maps.sum(1).tolist() == [2.0, 2.0, 1.0]  # "red circle" is 2 tokens, "cat" 1; the '.' is in none


def test_a_phrase_cut_off_by_the_token_limit_is_an_error(minilm):
    caption, spans = text.detection_prompt([f"thing{i}" for i in range(40)])
    tokens = text.tokenize(minilm, [caption], max_tokens=16)
    with pytest.raises(UserError, match="max_text_len"):
        text.phrase_maps(tokens, 0, spans)


def test_grounding_needs_a_tokenizer_with_offsets():
    with pytest.raises(UserError, match="fast tokenizer"):
        text.require_fast_tokenizer(object())


def test_prompter_keeps_every_positive_within_the_budget_and_is_seeded(minilm):
    ovd = open_grounding_split({"source": "scenes_ovd", "scenes_ovd": {"train": {"n": 6, "seed": 0}}}, "train")
    prompter = grounding.Prompter(minilm, [ovd], max_text_len=40, seed=3)
    sample = ovd[0]
    caption, spans = prompter(ovd, sample, epoch=0, index=0)
    assert [caption[s:e] for [(s, e)] in spans] == [ovd.class_names[int(c)] for c in sample.labels]
    assert len(minilm.hf_tokenizer(caption)["input_ids"]) <= 40
    assert caption.count(" . ") + 1 < len(ovd.class_names)  # negatives were cut to fit
    assert prompter(ovd, sample, 0, 0) == (caption, spans)
    assert prompter(ovd, sample, 1, 0) != (caption, spans)  # another epoch, another draw


# ---------------------------------------------------------------- 2. the built-in engine
def _tiny_protocol() -> dict:
    task = load_task("scenes_rec")
    p = grounding.PLUGIN.resolve(task, RunOptions(), describe_backbone("aimv2-tiny", None))
    p["dino"] = {**p["dino"], "hidden": 32, "num_queries": 12, "encoder_layers": 1, "decoder_layers": 1,
                 "num_heads": 2, "ffn": 64, "text_ffn": 64, "fusion_ffn": 64, "dn_queries": 4}
    return p


def test_builtin_engine_trains_every_part_and_predicts_phrase_labels(minilm):
    torch.manual_seed(0)
    p = _tiny_protocol()
    backbone = create_backbone("aimv2-tiny", pretrained=False, trainable=True)
    encoder = create_text_encoder("minilm", trainable=True)
    model = grounding.build_detector(backbone, encoder, p)
    images = torch.randn(2, 3, 128, 128)
    captions = ["red circle . blue square .", "the small cat"]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 70.0, 120.0, 110.0]]),
                "spans": [[(0, 10)], [(13, 24)]]},
               {"boxes": torch.tensor([[0.0, 20.0, 40.0, 90.0]]), "spans": [[(0, 13)]]}]
    losses = model(images, captions, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.backbone, model.text_encoder, model.heads()):
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in part.parameters())
    out = model.predict(images, captions, [[[(0, 10)], [(13, 24)]], [[(0, 13)]]], max_detections=5)
    assert [len(o["boxes"]) for o in out] == [5, 5]
    assert set(out[0]["labels"].tolist()) <= {0, 1} and set(out[1]["labels"].tolist()) == {0}
    assert all(((o["boxes"] >= 0) & (o["boxes"] <= 128)).all() for o in out)


def test_prompts_share_the_image_pyramid_and_match_one_prompt_at_a_time():
    """predict_prompts (the chunked OVD evaluation) equals predict called once per prompt with it on every image."""
    torch.manual_seed(0)
    model = grounding.build_detector(create_backbone("aimv2-tiny", pretrained=False, trainable=True),
                                     create_text_encoder("minilm"), _tiny_protocol()).eval()
    images = torch.randn(3, 3, 128, 128)
    prompts = [text.detection_prompt(["red circle", "blue square", "cat"]), text.detection_prompt(["dog", "star"])]
    shared = model.predict_prompts(images, prompts, max_detections=6)
    for c, (caption, spans) in enumerate(prompts):
        for i, alone in enumerate(model.predict(images, [caption] * 3, [spans] * 3, max_detections=6)):
            torch.testing.assert_close(shared[i][c]["scores"], alone["scores"])
            torch.testing.assert_close(shared[i][c]["boxes"], alone["boxes"])
            assert torch.equal(shared[i][c]["labels"], alone["labels"])


def test_protocol_errors_are_one_line(tmp_path):
    meta = describe_backbone("aimv2-tiny", None)
    task = load_task("scenes_rec")
    for change, message in (({"engine": "detectron"}, "engine must be one of"),
                            ({"image_size": 96}, "multiple of 64"),
                            ({"train_scale": [0.5, 1.5]}, "train_scale"),
                            ({"train_data": []}, "non-empty list")):
        bad = type(task)(**{**task.__dict__, "protocol": {**task.protocol, **change}})
        with pytest.raises(UserError, match=message):
            grounding.PLUGIN.resolve(bad, RunOptions(), meta)
    no_key = {k: v for k, v in task.protocol.items() if k != "milestones"}
    with pytest.raises(UserError, match="missing milestones"):
        grounding.PLUGIN.resolve(type(task)(**{**task.__dict__, "protocol": no_key}), RunOptions(), meta)


# ---------------------------------------------------------------- 3. aimv2-eval run end to end
def _task(tmp_path: Path, name: str, val_n: int) -> Path:
    """The embedded task with a tiny detector, a small mixture and a small val split (the real sizes train for
    minutes; these check the plumbing and the metrics)."""
    base = load_task(name)
    source = base.data["source"]
    spec = {"include": str(base.path.resolve()),
            "protocol": {"dino": {"hidden": 32, "num_queries": 12, "encoder_layers": 1, "decoder_layers": 1,
                                  "num_heads": 2, "ffn": 64, "text_ffn": 64, "fusion_ffn": 64, "dn_queries": 4}},
            "data": {source: {"val": {"n": val_n, "seed": 1}}}}
    if source == "scenes_ovd":  # a novel class that the first val scenes hold
        spec["data"][source]["held_out"] = ["blue square"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _record(out: Path) -> dict:
    [path] = [p for p in out.rglob("*.json") if p.name != "predictions.json"]
    return json.loads(path.read_text())


def _run(task: Path, out: Path) -> list[str]:
    return ["run", "--backbone", "aimv2-tiny", "--random-init", "--task", str(task), "--out", str(out),
            "--no-progress", "--epochs", "1", "--limit", "16", "--batch-size", "8"]


def test_rec_and_ovd_cells_share_one_training_and_their_metrics_recompute(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))
    rec_out, ovd_out = tmp_path / "rec", tmp_path / "ovd"
    assert cli(_run(_task(tmp_path, "scenes_rec", 3), rec_out)) == 0
    assert cli(_run(_task(tmp_path, "scenes_ovd", 12), ovd_out)) == 0
    rec, ovd = _record(rec_out), _record(ovd_out)
    assert rec["details"]["training"]["reused"] is False and ovd["details"]["training"]["reused"] is True
    assert rec["details"]["training_key"] == ovd["details"]["training_key"]
    assert {"role": "text_encoder", "name": "minilm"}.items() <= rec["models"][-1].items()

    # REC: P@1 from the predictions file, IoU by torchvision
    val = open_grounding_split(load_task(str(_task(tmp_path, "scenes_rec", 3))).data, "val")
    rows = json.loads((rec_out / rec["artifacts"]["predictions"]).read_text())
    assert len(rows) == len(val)
    hits = [float(box_iou(torch.tensor(r["boxes"][:1]), torch.from_numpy(g)).max() >= 0.5) if r["boxes"] else 0.0
            for r, g in zip(rows, val.targets())]
    assert rec["metrics"]["p_at_1"] == pytest.approx(100 * np.mean(hits))
    assert set(rec["details"]["baselines"]) == {"whole_image", "random_box"}

    # OVD: AP straight from pycocotools on the written predictions
    gt = open_grounding_split(load_task(str(_task(tmp_path, "scenes_ovd", 12))).data, "val").coco
    results = json.loads((ovd_out / ovd["artifacts"]["predictions"]).read_text())
    assert results and max(sum(r["image_id"] == i for r in results) for i in gt.getImgIds()) <= 30
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ovd["metrics"]["ap"] == pytest.approx(100 * ev.stats[0])
    assert {"ap_base", "ap_novel"} <= set(ovd["metrics"])
    assert "largest_box" in ovd["details"]["baselines"]


def test_an_unknown_main_metric_fails_before_the_record_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))
    path = _task(tmp_path, "scenes_rec", 2)
    spec = yaml.safe_load(path.read_text())
    spec["metric"] = {"main": "ap"}
    path.write_text(yaml.safe_dump(spec))
    assert cli(_run(path, tmp_path / "out")) != 0
    assert not [p for p in (tmp_path / "out").rglob("*.json") if p.name != "predictions.json"]
