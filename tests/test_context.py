"""Every number in context: chance, trivial baselines, the random-init twin and the reference with its verdict."""

from __future__ import annotations

from aimv2_eval.report.context import baselines, chance, context_line
from aimv2_eval.report.store import write_record


def record(backbone: str = "aimv2-tiny", value: float = 74.0, phash: str = "fabfa02e6aa0", **extra) -> dict:
    rec = {"cell": {"backbone": backbone, "task": "digits_probe", "protocol_hash": phash, "seed": 0},
           "metrics": {"top1": value, "top5": 99.0}, "main_metric": "top1", "overrides": {},
           "task_config": {"data": {"num_classes": 10}, "resolved_protocol": {"epochs": 30}}}
    return rec | extra


def test_chance_from_the_class_count_and_from_lit_candidates():
    assert chance(record()) == 10.0
    assert chance(record() | {"main_metric": "top5"}) == 50.0
    lit = record(details={"chance_top1": {"top1_unseen": 16.6667}}) | {"main_metric": "top1_unseen"}
    assert chance(lit) == 16.6667
    assert chance(record(task_config={})) is None


def test_trivial_predictors_of_each_plugin_are_read_for_the_main_metric():
    rec = record(details={"baseline_largest_box": {"top1": 3.5}, "baselines": {"random_box": {"top1": 1.0}}})
    assert baselines(rec) == {"chance": 10.0, "largest box": 3.5, "random box": 1.0}


def test_context_line_names_baselines_random_init_twin_and_a_pinned_reference(tmp_path):
    twin = record("aimv2-tiny-random", 70.0, "9bbb67e4d721")
    other_protocol = record("aimv2-tiny-random", 20.0, "0000") | {"task_config": {"resolved_protocol": {"epochs": 3}}}
    write_record(tmp_path, twin)
    write_record(tmp_path, other_protocol)
    line = context_line(record(value=74.0), tmp_path)
    # the pinned reference of this protocol hash (results/embedded/references.csv), labelled as pinned, not paper
    assert line == "chance 10.00 | random-init 70.00 | pinned reference (seeds 1 2 3) 74.56 ± 7.24: pass"
    assert context_line(record(value=50.0), tmp_path).endswith(": FAIL")
    assert context_line(record(value=10.5, phash="other")) == "chance 10.00 (at chance)"  # no reference of its protocol


def test_a_paper_reference_is_judged_on_the_paper_rule_and_says_so():
    # AIMv2-L 224px on IN-1k, default protocol: the val-chosen 84.0 would fail Table 3's 86.6; the line judges the
    # best head on test, as the paper chose, and names it
    rec = {"cell": {"backbone": "aimv2-large-patch14-224", "task": "imagenet_probe", "protocol_hash": "h", "seed": 0},
           "metrics": {"top1": 84.0, "top1_paper_rule": 86.5}, "main_metric": "top1", "overrides": {},
           "selection": {"split": "val"}, "task_config": {"data": {"num_classes": 1000}}}
    assert context_line(rec) == "chance 0.10 | paper Table 3 86.6 ± 0.5 on top1_paper_rule 86.50: pass"
