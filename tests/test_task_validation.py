"""A bad task YAML ends in one clear line before any work (no data, no backbone), never in a traceback mid-run.

Each case writes a task file that includes a real built-in task and breaks one field, then runs `aimv2-eval run` in
process: exit status 2, one `aimv2-eval run: error:` line naming the field, nothing under --out. The last tests check
that every built-in task still resolves and that its metric.main / metric.report are names its plugin produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aimv2_eval.cli import main

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"


def probe(**fields: Any) -> dict[str, Any]:
    return {"include": str(TASKS / "digits_probe.yaml"), **fields}


def probe_protocol(**protocol: Any) -> dict[str, Any]:
    return probe(protocol=protocol)


def based_on(task: str, **fields: Any) -> dict[str, Any]:
    return {"include": str(TASKS / f"{task}.yaml"), **fields}


# (case id, task body (a dict, or a callable (tmp_path) -> dict that writes what it includes), words in the error)
CASES: list[tuple[str, Any, list[str]]] = [
    # ------------------------------------------------ include syntax
    ("include_list", {"include": ["_probe_table_a2.yaml", "digits_probe.yaml"], "version": 1},
     ["include must be one file name"]),
    ("include_number", {"include": 3, "version": 1}, ["include must be one file name", "got 3"]),
    ("include_folder", {"include": str(TASKS), "version": 1}, ["is a folder", "include a .yaml file"]),
    ("include_not_mapping", lambda d: _include(d, "- a\n- b\n"), ["shared.yaml", "must hold a mapping", "list"]),
    ("include_empty_file", lambda d: _include(d, ""), ["shared.yaml", "the file is empty"]),
    # ------------------------------------------------ common fields
    ("version_string", probe(version="one"), ["version must be an integer >= 1", "'one'"]),
    ("version_bool", probe(version=True), ["version must be an integer"]),
    ("plugin_not_string", probe(plugin=["probe"]), ["plugin must be a plugin name"]),
    ("description_list", probe(description=["a", "b"]), ["description must be a string"]),
    ("embedded_string", probe(embedded="maybe"), ["embedded must be true or false", "'maybe'"]),
    ("paper_string", probe(paper="Table 3"), ["paper must be a mapping"]),
    ("metric_main_list", probe(metric={"main": ["top1"]}), ["metric.main must be a non-empty string"]),
    ("metric_report_string", probe(metric={"report": "top1"}), ["metric.report must be a non-empty list of strings"]),
    ("metric_report_numbers", probe(metric={"report": [1, 5]}), ["metric.report must be"]),
    ("metric_unknown_key", probe(metric={"mian": "top1"}), ["metric has an unknown key 'mian'", "did you mean main"]),
    ("num_classes_zero", probe(data={"num_classes": 0}), ["data.num_classes must be an integer >= 1", "got 0"]),
    ("num_classes_negative", probe(data={"num_classes": -3}), ["data.num_classes must be an integer >= 1"]),
    ("num_classes_word", probe(data={"num_classes": "ten"}), ["data.num_classes must be", "'ten'"]),
    ("num_classes_fraction", probe(data={"num_classes": 2.5}), ["data.num_classes must be", "2.5"]),
    # ------------------------------------------------ probe protocol
    ("probe_lr_grid_empty", probe_protocol(lr_grid=[]), ["protocol.lr_grid must be a non-empty list of numbers > 0"]),
    ("probe_lr_grid_strings", probe_protocol(lr_grid=["fast", "slow"]), ["protocol.lr_grid must be", "'fast'"]),
    ("probe_lr_grid_negative", probe_protocol(lr_grid=[1e-3, -1e-3]), ["protocol.lr_grid must be"]),
    ("probe_wd_grid_strings", probe_protocol(wd_grid=["a"]), ["protocol.wd_grid must be"]),
    ("probe_betas_one", probe_protocol(betas=[0.9]), ["protocol.betas must be a list of 2 numbers >= 0 and < 1"]),
    ("probe_betas_above_one", probe_protocol(betas=[0.9, 1.5]), ["protocol.betas must be", "1.5"]),
    ("probe_epochs_zero", probe_protocol(epochs=0), ["protocol.epochs must be an integer >= 1", "got 0"]),
    ("probe_epochs_negative", probe_protocol(epochs=-2), ["protocol.epochs must be an integer >= 1"]),
    ("probe_epochs_word", probe_protocol(epochs="x"), ["protocol.epochs must be an integer >= 1", "'x'"]),
    ("probe_batch_size_zero", probe_protocol(batch_size=0), ["protocol.batch_size must be an integer >= 1"]),
    ("probe_warmup_negative", probe_protocol(warmup_epochs=-1), ["protocol.warmup_epochs must be a number >= 0"]),
    ("probe_min_lr_word", probe_protocol(min_lr="low"), ["protocol.min_lr must be a number >= 0"]),
    ("probe_unknown_key", probe_protocol(warmup_epoch=5), ["unknown key 'warmup_epoch'", "did you mean warmup_epochs"]),
    ("probe_optimizer", probe_protocol(optimizer="sgd"), ["protocol.optimizer must be one of adamw"]),
    ("probe_augment_typo", probe_protocol(augment={"crop_sise": 224}),
     ["protocol.augment has an unknown key 'crop_sise'", "scale"]),
    ("probe_augment_scale_reversed", probe_protocol(augment={"scale": [0.9, 0.2]}),
     ["protocol.augment.scale must be [low, high] with 0 < low <= high <= 1"]),
    ("probe_augment_scale_zero", probe_protocol(augment={"scale": [0, 1]}), ["protocol.augment.scale must be"]),
    ("probe_augment_scale_number", probe_protocol(augment={"scale": 0.5}), ["protocol.augment.scale must be"]),
    ("probe_augment_hflip", probe_protocol(augment={"hflip": 2}), ["protocol.augment.hflip must be a number >= 0"]),
    ("probe_augment_interpolation", probe_protocol(augment={"interpolation": "cubic"}),
     ["protocol.augment.interpolation must be one of", "bicubic"]),
    ("probe_augment_auto_augment", probe_protocol(augment={"auto_augment": 9}), ["protocol.augment.auto_augment"]),
    ("probe_image_size_word", probe_protocol(image_size="big"), ["protocol.image_size must be an integer >= 1"]),
    ("probe_image_size_zero", probe_protocol(image_size=0), ["protocol.image_size must be an integer >= 1"]),
    ("probe_head_num_heads", probe_protocol(head={"num_heads": "many"}), ["protocol.head.num_heads must be"]),
    ("probe_head_typo", probe_protocol(head={"num_head": 8}), ["unknown key 'num_head'", "did you mean num_heads"]),
    ("probe_selection_fraction", probe_protocol(selection={"val_fraction": 1.5}),
     ["protocol.selection.val_fraction must be a number >= 0 and < 1"]),
    ("probe_selection_seed", probe_protocol(selection={"split_seed": -1}), ["protocol.selection.split_seed"]),
    ("probe_selection_metric", probe_protocol(selection={"metric": "top5"}), ["protocol.selection.metric", "top1"]),
    ("probe_head_not_mapping", probe_protocol(head=16), ["protocol.head must be a mapping"]),
    ("probe_main_metric_unknown", probe(metric={"main": "accuracy"}),
     ["metric.main 'accuracy' is not a metric the probe plugin produces", "top1, top1_paper_rule, top5"]),
    ("probe_report_metric_unknown", probe(metric={"report": ["top1", "top3"]}), ["metric.report[1] 'top3'"]),
    # ------------------------------------------------ lit
    ("lit_lr_word", based_on("scenes_zeroshot_unseen", protocol={"lr": "fast"}),
     ["protocol.lr must be a positive number"]),
    ("lit_templates_number", based_on("scenes_zeroshot_unseen", protocol={"templates": 5}), ["protocol.templates"]),
    ("lit_warmup_fraction", based_on("scenes_zeroshot_unseen", protocol={"warmup_fraction": 2}),
     ["protocol.warmup_fraction must be a number >= 0 and <= 1"]),
    ("lit_main_metric_unknown", based_on("scenes_zeroshot_unseen", metric={"main": "top1"}),
     ["metric.main 'top1' is not a metric the lit plugin produces", "top1_unseen"]),
    # ------------------------------------------------ llava
    ("llava_iterations_zero", based_on("scenes_vqa", protocol={"train": {"iterations": 0}}),
     ["protocol.train.iterations must be an integer >= 1"]),
    ("llava_grid_word", based_on("scenes_vqa", protocol={"tower": {"grid": "two"}}), ["protocol.tower.grid must be"]),
    ("llava_max_length_word", based_on("scenes_vqa", protocol={"max_length": "long"}), ["protocol.max_length must be"]),
    ("llava_max_new_tokens", based_on("scenes_vqa", protocol={"eval": {"max_new_tokens": 0}}),
     ["protocol.eval.max_new_tokens must be an integer >= 1"]),
    ("llava_train_typo", based_on("scenes_vqa", protocol={"train": {"lm_lrate": 1e-3}}),
     ["protocol.train has an unknown key 'lm_lrate'", "did you mean lm_lr"]),
    ("llava_main_metric_unknown", based_on("scenes_vqa", metric={"main": "cider"}),
     ["metric.main 'cider' is not a metric the llava plugin produces", "accuracy"]),
    # ------------------------------------------------ vitdet
    ("vitdet_window_zero", based_on("scenes_vitdet", protocol={"window": 0}), ["protocol.window must be an integer"]),
    ("vitdet_epochs_word", based_on("scenes_vitdet", protocol={"epochs": "ten"}), ["protocol.epochs must be"]),
    ("vitdet_image_size_word", based_on("scenes_vitdet", protocol={"image_size": "x"}), ["protocol.image_size"]),
    ("vitdet_lsj_reversed", based_on("scenes_vitdet", protocol={"lsj_scale": [2.0, 0.5]}), ["protocol.lsj_scale"]),
    ("vitdet_anchor_sizes", based_on("scenes_vitdet", protocol={"anchor_sizes": [8, 16]}),
     ["protocol.anchor_sizes must be a list of 5 numbers > 0"]),
    ("vitdet_layer_decay", based_on("scenes_vitdet", protocol={"layer_decay": 1.5}), ["protocol.layer_decay"]),
    ("vitdet_main_metric_unknown", based_on("scenes_vitdet", metric={"main": "ap"}),
     ["metric.main 'ap' is not a metric the vitdet plugin produces", "box_ap"]),
    # ------------------------------------------------ grounding
    ("grounding_milestones_words", based_on("scenes_rec", protocol={"milestones": ["six"]}),
     ["protocol.milestones must be a list of integers >= 1"]),
    ("grounding_epochs_word", based_on("scenes_rec", protocol={"epochs": "x"}), ["protocol.epochs must be"]),
    ("grounding_train_scale_word", based_on("scenes_rec", protocol={"train_scale": "x"}), ["protocol.train_scale"]),
    ("grounding_dino_typo", based_on("scenes_rec", protocol={"dino": {"hiden": 64}}),
     ["protocol.dino has an unknown key 'hiden'", "did you mean hidden"]),
    ("grounding_dino_hidden_zero", based_on("scenes_rec", protocol={"dino": {"hidden": 0}}),
     ["protocol.dino.hidden must be an integer >= 1"]),
    ("grounding_main_metric_unknown", based_on("scenes_rec", metric={"main": "ap"}),
     ["metric.main 'ap' is not a metric the grounding plugin produces", "p_at_1"]),
    ("grounding_ovd_report_unknown", based_on("scenes_ovd", metric={"report": ["ap", "ap_rare"]}),
     ["metric.report[1] 'ap_rare'", "ap_novel"]),
]


def _include(folder: Path, text: str) -> dict[str, Any]:
    (folder / "shared.yaml").write_text(text)
    return {"include": "shared.yaml", "version": 1}


@pytest.fixture
def no_work(monkeypatch):
    """Starting the device, opening data or building the backbone is a failure: every case must stop before."""
    import aimv2_eval.backbones
    import aimv2_eval.launch.distributed

    def boom(*args, **kwargs):
        raise AssertionError("work started on a bad task file")

    monkeypatch.setattr(aimv2_eval.launch.distributed, "init_distributed", boom)
    monkeypatch.setattr(aimv2_eval.backbones, "create_backbone", boom)


@pytest.mark.parametrize("body, words", [pytest.param(b, w, id=i) for i, b, w in CASES])
def test_bad_task_file_is_one_line_before_any_work(tmp_path, capsys, no_work, body, words):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    if callable(body):
        body = body(tasks)
    path = tasks / "bad_task.yaml"
    path.write_text(yaml.safe_dump(body))
    out = tmp_path / "records"
    code = main(["run", "--backbone", "aimv2-tiny", "--task", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("aimv2-eval run: error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert "bad_task.yaml" in err or "shared.yaml" in err, err  # names the file to fix
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- every built-in task still passes
def test_every_builtin_task_resolves_and_produces_its_metrics():
    from aimv2_eval.backbones import describe_backbone
    from aimv2_eval.plugins import RunOptions, get_plugin
    from aimv2_eval.tasks import parse_task, task_files

    meta = describe_backbone("aimv2-tiny")
    files = task_files()
    assert any(p.parent != TASKS for p in files.values())  # the subfolders (llava/, cambrian/, grounding/) too
    for name, path in files.items():
        task = parse_task(path)
        plugin = get_plugin(task.plugin)
        protocol = plugin.resolve(task, RunOptions(), meta)
        names = plugin.metric_names(task, protocol)
        assert names is not None, name  # every built-in data source has known metrics
        assert task.metric["main"] in names, (name, task.metric["main"], names)
        assert set(task.metric.get("report", [])) <= names, (name, names)
        plugin.check_metrics(task, protocol)


def test_numeric_strings_stay_accepted_where_they_were():
    """YAML 1.1 reads `1e-4` (no dot) as a string; the probe has always converted it, and still does."""
    from aimv2_eval.backbones import describe_backbone
    from aimv2_eval.plugins import RunOptions, get_plugin
    from aimv2_eval.tasks import load_task

    task = load_task("digits_probe")
    task = type(task)(**{**task.__dict__, "protocol": {**task.protocol, "lr_grid": ["1e-4", 2e-4], "min_lr": "1e-6"}})
    p = get_plugin("probe").resolve(task, RunOptions(), describe_backbone("aimv2-tiny"))
    assert p["lr_grid"] == [1e-4, 2e-4] and p["min_lr"] == 1e-6
