"""LLaVA plugin (issue 14): tiling, the connector splice, chat-template encoding with answer-only labels, batched
KV-cached generation equal to one-at-a-time generation, LM loading errors, and the run command end to end on the
embedded scene tasks (one training shared by two benchmark cells)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aimv2_eval.backbones import create_backbone
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.llava import lm as lms
from aimv2_eval.plugins.llava.model import IGNORE_INDEX, IMAGE_TOKEN_ID, Connector, LlavaModel, VisionTower, tile
from aimv2_eval.plugins.llava.prompts import encode_conversation, encode_prompt, left_padded

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["how many red shapes are there ?", "two", "what colour is the circle ?", "blue", "is there a star ?", "no",
         "a red circle left of a blue square .", "Answer the question using a single word or phrase."]
LM_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tok():
    return lms.word_tokenizer(TEXTS)


@pytest.fixture(scope="module")
def model(tok):
    tower = VisionTower(create_backbone("aimv2-tiny", pretrained=False))
    return LlavaModel(tower, lms.build_config_lm(LM_CONFIG, tok, seed=0)).eval()


# ---------------------------------------------------------------- tiling
def test_tile_pads_to_square_then_cuts_reading_order():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    crops = tile(img, crop=14, grid=2, thumbnail=False, fill=(0, 0, 255))
    assert len(crops) == 4 and all(c.size == (14, 14) for c in crops)
    top_left, top_right, bottom_left = (np.asarray(c, dtype=float) for c in crops[:3])
    # the 40x20 image sits in the middle rows of a 40x40 blue square: the top-left crop is blue above, red below
    assert top_left[0, 0, 2] > 200 and top_left[-1, 0, 0] > 200
    assert top_right[-1, -1, 0] < 60  # the right half of the image is black
    assert bottom_left[0, 0, 0] > 200 and bottom_left[-1, 0, 2] > 200
    with_thumb = tile(img, 14, 2, thumbnail=True, fill=(0, 0, 255))
    assert len(with_thumb) == 5 and len(tile(img, 14, 1, thumbnail=True, fill=(0, 0, 0))) == 1


def test_tower_features_per_crop_and_frozen():
    tower = VisionTower(create_backbone("aimv2-tiny", pretrained=False), layer=-2)
    out = tower(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 64, 192) and not out.requires_grad
    tower.train()
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())


# ---------------------------------------------------------------- prompts
def test_conversation_labels_cover_only_answers(tok):
    ids, labels = encode_conversation(tok, [("how many red shapes are there ?", "two"),
                                            ("what colour is the circle ?", "blue")], n_image_tokens=5, has_image=True)
    assert len(ids) == len(labels) and ids.count(IMAGE_TOKEN_ID) == 5
    answer = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(answer) == ["two", "<|end|>", "blue", "<|end|>"]
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels) if t == IMAGE_TOKEN_ID)
    prompt = encode_prompt(tok, "how many red shapes are there ?", 5)
    assert ids[: len(prompt)] == prompt  # training and evaluation see the same prompt tokens
    assert tok.convert_ids_to_tokens(prompt[-1:]) == ["<|assistant|>"]


def test_template_without_prefix_property_is_refused(tok):
    import copy

    bad = copy.deepcopy(tok)
    bad.chat_template = "{% for m in messages|reverse %}{{ m['content'] + ' ' }}{% endfor %}"
    with pytest.raises(ValueError, match="prefixes"):
        encode_conversation(bad, [("a ?", "b"), ("c ?", "d")], 1, True)


def test_lm_without_chat_template_is_a_user_error(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        lms.set_chat_template(bare, "tokenizer", "my-lm")
    lms.set_chat_template(bare, "llama3", "my-lm")
    assert "start_header_id" in bare.chat_template


def test_local_lm_folder_with_missing_files_names_them(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="weights .*tokenizer files"):
        lms.load_pretrained_lm(str(tmp_path))


def test_local_lm_folder_round_trip(tmp_path, tok):
    lm = lms.build_config_lm(LM_CONFIG, tok, seed=0)
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = lms.load_pretrained_lm(str(tmp_path))
    torch.testing.assert_close(loaded.lm_head.weight, lm.lm_head.weight)
    assert loaded_tok("two")["input_ids"] == tok("two")["input_ids"]


# ---------------------------------------------------------------- the model
def test_embed_splices_projected_image_tokens(model, tok):
    ids = torch.tensor([encode_prompt(tok, "is there a star ?", 4)])
    feats = [torch.randn(4, 192)]
    x = model.embed(ids, feats)
    slots = (ids[0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
    torch.testing.assert_close(x[0, slots], model.connector(feats[0]))
    text = (ids[0] != IMAGE_TOKEN_ID).nonzero()[:, 0]
    torch.testing.assert_close(x[0, text], model.lm.get_input_embeddings()(ids[0, text]))
    with pytest.raises(ValueError, match="placeholders"):
        model.embed(ids, [torch.randn(3, 192)])


def test_connector_is_two_layer_mlp_with_gelu():
    c = Connector(8, 16)
    kinds = [type(m).__name__ for m in c.net]
    assert kinds == ["Linear", "GELU", "Linear"] and c.net[0].in_features == 8 and c.net[2].out_features == 16


def test_batched_left_padded_generation_equals_one_at_a_time(model, tok):
    """KV-cached batched greedy decoding of prompts of different lengths gives each prompt's own continuation."""
    torch.manual_seed(0)
    questions = ["is there a star ?", "how many red shapes are there ?", "what colour is the circle ?"]
    prompts = [encode_prompt(tok, q, 4) for q in questions]
    feats = [torch.randn(4, 192) for _ in questions]
    pad = tok.pad_token_id
    ids, mask = left_padded(prompts, pad)
    batched = model.generate(ids, mask, feats, max_new_tokens=6, min_new_tokens=6, pad_token_id=pad)
    for k, p in enumerate(prompts):
        single = model.generate(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), [feats[k]],
                                max_new_tokens=6, min_new_tokens=6, pad_token_id=pad)
        assert batched[k].tolist() == single[0].tolist()


# ---------------------------------------------------------------- the run command end to end
from aimv2_eval.cli import main as cli  # noqa: E402
from aimv2_eval.tasks import BUILTIN_DIR  # noqa: E402

SMALL = {"iterations": 12, "batch_size": 8, "warmup_iters": 2, "log_every": 4}


def _small_task(tmp_path: Path, name: str, kind: str = "vqa", **train) -> Path:
    """scenes_vqa / scenes_captions in miniature: 24 training scenes, 12 steps, 6 evaluation scenes."""
    import yaml

    base = "scenes_vqa" if kind == "vqa" else "scenes_captions"
    raw = yaml.safe_load((BUILTIN_DIR / f"{base}.yaml").read_text())
    raw["include"] = str(BUILTIN_DIR / "_llava_scenes.yaml")
    raw["data"]["scenes"].update(train={"n": 24, "seed": 0}, eval={"n": 6, "seed": 1})
    raw["protocol"]["train"] = {"data": {"source": "scenes", "n": 24, "seed": 0, "image_size": 112}, **SMALL, **train}
    raw["protocol"]["lm"] = {"config": LM_CONFIG}
    raw["protocol"]["max_length"] = 128
    path = tmp_path / "tasks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _record(folder: Path) -> dict:
    [path] = [p for p in folder.rglob("*.json") if ".partial" not in str(p)]
    return json.loads(path.read_text())


class _EvalSplit:
    """A task's evaluation split seen through a test's changes (subclasses override what they break)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _wrap_eval_split(monkeypatch, wrapper) -> None:
    """Every evaluation split the plugin opens goes through `wrapper`; training splits are left alone."""
    from aimv2_eval.data import multimodal

    real = multimodal.open_mm_split
    monkeypatch.setattr(multimodal, "open_mm_split", lambda cfg, split, root=None: (
        wrapper(real(cfg, split, root)) if split == "eval" else real(cfg, split, root)))


def test_run_trains_once_for_two_benchmarks_and_logs_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))
    vqa, cap = _small_task(tmp_path, "tiny_vqa"), _small_task(tmp_path, "tiny_captions", kind="caption")
    common = ["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--device", "cpu"]
    assert cli([*common, "--task", str(vqa), "--out", str(tmp_path / "r1")]) == 0
    rec = _record(tmp_path / "r1")
    details = rec["details"]
    assert details["training"]["reused"] is False and len(details["training"]["loss_history"]) == 3
    assert details["image_tokens"] == 64 and 0.0 <= rec["metrics"]["accuracy"] <= 100.0
    assert "accuracy" in details["baseline_answer_prior"] and details["baseline_answer_prior"]["fitted_on"] == "train split"
    assert [m["role"] for m in rec["models"] if m.get("role") != "backbone"] == ["language_model"]
    samples_file = next((tmp_path / "r1").rglob("samples.jsonl"))
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(rows) == details["samples"] > 0
    assert all({"sample_id", "question", "prediction", "answers", "score"} <= set(r) for r in rows)
    assert rec["metrics"]["accuracy"] == pytest.approx(100 * sum(r["score"] for r in rows) / len(rows), abs=1e-3)

    # the captioning cell shares the training (same backbone, LM, recipe, seed): nothing is retrained
    assert cli([*common, "--task", str(cap), "--out", str(tmp_path / "r2")]) == 0
    rec2 = _record(tmp_path / "r2")
    assert rec2["details"]["training"]["reused"] is True
    assert rec2["details"]["training_key"] == details["training_key"] and "cider" in rec2["metrics"]


def test_a_sample_that_fails_is_recorded_and_the_others_are_answered(tmp_path, monkeypatch):
    from aimv2_eval.data import multimodal

    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))

    class OneBroken(_EvalSplit):
        def __getitem__(self, i):
            if i == 1:
                raise multimodal.SampleError("sample scene-1-0-q1: image does not decode (broken.png)")
            return self.inner[i]

    _wrap_eval_split(monkeypatch, OneBroken)
    task = _small_task(tmp_path, "tiny_vqa")
    assert cli(["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--task", str(task),
                "--out", str(tmp_path / "r")]) == 0
    rec = _record(tmp_path / "r")
    rows = [json.loads(x) for x in next((tmp_path / "r").rglob("samples.jsonl")).read_text().splitlines()]
    assert rec["metrics"]["failed_samples"] == 1.0 and "does not decode" in rows[1]["error"]
    assert all("error" not in r for k, r in enumerate(rows) if k != 1) and len(rows) == rec["details"]["samples"]


def test_nan_loss_stops_with_one_line_and_no_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))
    task = _small_task(tmp_path, "tiny_vqa", lm_lr=1e30, connector_lr=1e30)  # the weights explode after a step
    rc = cli(["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--task", str(task),
              "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "loss became" in err[-1] and not list((tmp_path / "r").rglob("*.json"))
    bad = _small_task(tmp_path, "tiny_vqa", lm_lr=float("nan"))
    assert cli(["run", "--backbone", "aimv2-tiny", "--random-init", "--task", str(bad), "--out", str(tmp_path / "r")]) != 0
    assert "train.lm_lr must be a positive number" in capsys.readouterr().err


def test_fsdp_two_processes_give_the_loss_curve_of_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) with the LM sharded by FSDP: each rank holds half of every parameter
    and half of each global batch, and the loss curve equals one process's."""
    import os
    import subprocess
    import sys

    from test_distributed import free_port

    task = _small_task(tmp_path, "tiny_vqa", fsdp=True, iterations=6, log_every=2)
    args = ["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--device", "cpu", "--task", str(task),
            "--limit", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "AIMV2_EVAL_CACHE": str(tmp_path / "c1")}
    one = subprocess.run([sys.executable, "-m", "aimv2_eval.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    env["AIMV2_EVAL_CACHE"] = str(tmp_path / "c2")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), "-m", "aimv2_eval.cli", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = _record(tmp_path / "one")["details"]["training"]["loss_history"]
    h2 = _record(tmp_path / "two")["details"]["training"]["loss_history"]
    assert len(h1) == len(h2) == 3
    np.testing.assert_allclose(h2, h1, rtol=1e-4)


def test_question_text_formats_options_and_replaces_mmes_instruction():
    from aimv2_eval.data.multimodal import MMSample
    from aimv2_eval.plugins.llava.evaluate import question_text

    mc = MMSample("1", None, "Which is a fish?", ["B"], ["cat", "shark"], "", "i1")
    assert question_text(mc, "Answer with the option's letter from the given choices directly.") == (
        "Which is a fish?\nA. cat\nB. shark\nAnswer with the option's letter from the given choices directly.")
    mme = MMSample("2", None, "Is there a dog in the image? Please answer yes or no.", ["Yes"], None, "existence", "i2")
    assert question_text(mme, "Answer the question using a single word or phrase.") == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase.")
    caption = MMSample("3", None, "", ["a dog"], None, "", "i3")
    assert question_text(caption, "Provide a one-sentence caption for the provided image.") == (
        "Provide a one-sentence caption for the provided image.")


# ---------------------------------------------------------------- the paper cells' task files
def test_every_table7_c3_reference_has_a_task_that_produces_its_metric():
    """Tables 7, 9 (instruction tuning) and C3 (tiling): each referenced task exists, uses the llava plugin, and its
    metric.main is the reference's metric; the task files are what scripts/make_llava_tasks.py writes."""
    import importlib.util

    from aimv2_eval.report import references
    from aimv2_eval.tasks import load_task, task_files

    refs = [r for r in references.load([BUILTIN_DIR.parent / "results" / "paper"])
            if r.table in ("7", "C3") or (r.table.startswith("9") and r.task.startswith("llava_"))]
    assert len({r.task for r in refs}) == 13 + 12 * 3
    files = task_files()
    for ref in refs:
        assert ref.task in files, ref.task
        task = load_task(ref.task)
        assert task.plugin == "llava" and task.metric["main"] == ref.metric, ref.task
    grids = {load_task(f"cambrian_textvqa{s}").protocol["tower"]["grid"] for s in ("", "_tiles2x2", "_tiles3x3")}
    assert grids == {1, 2, 3}
    spec = importlib.util.spec_from_file_location("make_llava_tasks", BUILTIN_DIR.parent / "scripts" / "make_llava_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body = module.task("llava_vqav2", module.BENCHMARKS["llava_vqav2"], "../_llava_sft.yaml", ["7", "9"])
    import yaml

    on_disk = yaml.safe_load(files["llava_vqav2"].read_text())
    assert on_disk == body


def test_micro_batches_accumulate_to_the_same_updates(tmp_path, monkeypatch):
    """train.micro_batch splits a step into several forwards; the loss curve is the one of whole batches."""
    histories = []
    for micro in (None, 3):
        monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / f"cache{micro}"))
        task = _small_task(tmp_path / str(micro), "tiny_vqa", micro_batch=micro, iterations=6, log_every=2)
        assert cli(["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--task", str(task),
                    "--limit", "4", "--out", str(tmp_path / f"r{micro}")]) == 0
        histories.append(_record(tmp_path / f"r{micro}")["details"]["training"]["loss_history"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-4)


def test_a_question_longer_than_the_context_is_one_failed_sample(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("AIMV2_EVAL_CACHE", str(tmp_path / "cache"))

    class LongFirst(_EvalSplit):
        def _long(self, s):
            return dataclasses.replace(s, question="how many red shapes are there ? " * 40)

        def meta(self, i):
            return self._long(self.inner.meta(i)) if i == 0 else self.inner.meta(i)

        def __getitem__(self, i):
            return self._long(self.inner[i]) if i == 0 else self.inner[i]

    _wrap_eval_split(monkeypatch, LongFirst)
    task = _small_task(tmp_path, "tiny_vqa")
    assert cli(["run", "--backbone", "aimv2-tiny", "--random-init", "--no-progress", "--task", str(task),
                "--out", str(tmp_path / "r")]) == 0
    rows = [json.loads(x) for x in next((tmp_path / "r").rglob("samples.jsonl")).read_text().splitlines()]
    assert "exceeds the context" in rows[0]["error"] and rows[0]["answers"] and rows[0]["score"] == 0.0
    assert all("error" not in r for r in rows[1:])
