"""The probe's two head-selection rules on a known lr x wd grid: the head chosen on validation (the main metric)
and the paper's rule, the head with the best test top-1 (`top1_paper_rule` / `top5_paper_rule`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from aimv2_eval.backbones.base import Preprocess
from aimv2_eval.errors import UserError
from aimv2_eval.plugins import get_plugin
from aimv2_eval.plugins.probe import _ProbeRun
from aimv2_eval.tasks import load_task


class _Split(list):
    """Stands for a LabelledImages split: its length and identity."""

    def __init__(self, n: int, identity: str) -> None:
        super().__init__(range(n))
        self.identity = identity


def _finished_run(with_val: bool) -> _ProbeRun:
    """A probe run of three heads after training, built without training: just what `_result` reads."""
    run = _ProbeRun.__new__(_ProbeRun)
    run.configs = [(1e-3, 0.05), (2e-3, 0.05), (3e-3, 0.1)]
    run.history = [[1.0, 1.0, 1.0], [0.5, 0.4, 0.6]]  # final training loss: head 1 lowest
    run.data = SimpleNamespace(val_pos=np.arange(10 if with_val else 0), train_pos=np.arange(40),
                               train=_Split(50, "train"), test=_Split(100, "test"))
    run.p = {"selection": {"split_seed": 0}}
    run.task = SimpleNamespace(metric={"main": "top1"})
    run.grid, run.token_shape, run.epoch_seconds = SimpleNamespace(num_heads=4), (16, 32), [0.1, 0.1]
    run.preprocess, run.cached = Preprocess(32, 32), False
    run.opt, run.ctx, run.throughput = SimpleNamespace(output_dir=None), SimpleNamespace(world_size=1, is_main=True), {}
    return run


def _split(top1, top5=None) -> dict[str, np.ndarray]:
    top1 = np.asarray(top1, dtype=float)
    return {"top1": top1, "top5": np.asarray(top5 if top5 is not None else top1, dtype=float),
            "loss": np.zeros(len(top1))}


def test_known_grid_gives_the_val_chosen_head_and_the_paper_rule():
    # val picks head 0; the best test top-1 is head 2, whose top-5 (97) is not the grid's best top-5 (99, head 1)
    val, test = _split([90.0, 80.0, 85.0]), _split([70.0, 75.0, 78.0], [95.0, 99.0, 97.0])
    result = _finished_run(True)._result(val, test)
    assert result.metrics == {"top1": 70.0, "top5": 95.0, "top1_paper_rule": 78.0, "top5_paper_rule": 97.0}
    assert result.main_metric == "top1"
    sel = result.selection
    assert sel["split"] == "val" and sel["chosen"]["index"] == 0
    assert (sel["paper_rule"]["index"], sel["paper_rule"]["lr"], sel["paper_rule"]["wd"]) == (2, 3e-3, 0.1)
    assert sel["oracle_test_top1"] == 78.0  # what older records hold instead of the metric


def test_paper_rule_ties_go_to_the_earlier_config_and_ignore_the_val_split():
    test = _split([60.0, 80.0, 80.0], [90.0, 91.0, 99.0])
    result = _finished_run(False)._result(None, test)  # no val split: the main head is the lowest train loss
    assert result.selection["chosen"]["index"] == 1 and result.selection["paper_rule"]["index"] == 1
    assert (result.metrics["top1_paper_rule"], result.metrics["top5_paper_rule"]) == (80.0, 91.0)


def test_tasks_may_select_the_paper_rule_metric(tmp_path):
    plugin, task = get_plugin("probe"), load_task("digits_probe")
    names = plugin.metric_names(task, {})
    assert {"top1", "top5", "top1_paper_rule", "top5_paper_rule"} <= names
    for main in ("top1_paper_rule", "top5_paper_rule"):
        plugin.check_metrics(task.__class__(**{**task.__dict__, "metric": {"main": main}}), {})
    with pytest.raises(UserError, match="top1_paper_rule"):  # the message lists what a task may choose
        plugin.check_metrics(task.__class__(**{**task.__dict__, "metric": {"main": "top1_oracle"}}), {})
