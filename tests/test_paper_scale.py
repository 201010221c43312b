"""Paper-scale regression: the real backbone on the real benchmark, checked against results/paper/.

Runs only where the weights and the data are present (a GPU cluster); everywhere else each cell is skipped with
the reason. Select it with `pytest -m paper tests/test_paper_scale.py`. The data root is $AIMV2_EVAL_DATA (see
aimv2_eval/data/sources.py); other cells than the default ones: AIMV2_EVAL_PAPER_CELLS="backbone:task,...".
Extra `aimv2-eval run` arguments (device, precision, batch size): AIMV2_EVAL_PAPER_RUN_ARGS.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from aimv2_eval.report import names

pytestmark = pytest.mark.paper

REPO = Path(__file__).resolve().parents[1]
PAPER_DIR = REPO / "results" / "paper"
# AIMv2-L 224px on the 14 benchmarks of Table 3 (its headline row), and the released LiT checkpoint (Table 5).
DEFAULT_CELLS = [("aimv2-large-patch14-224", task) for task in names.PROBE_TASKS.values()]
DEFAULT_CELLS.append(("aimv2-large-patch14-224-lit", "imagenet_zeroshot"))


def _cells() -> list[tuple[str, str]]:
    chosen = os.environ.get("AIMV2_EVAL_PAPER_CELLS", "")
    if not chosen:
        return DEFAULT_CELLS
    return [tuple(c.split(":", 1)) for c in chosen.split(",") if c]  # type: ignore[misc]


@pytest.mark.parametrize(("backbone", "task"), _cells(), ids=lambda x: x)
def test_paper_cell(backbone, task, tmp_path):
    if not os.environ.get("AIMV2_EVAL_DATA"):
        pytest.skip("AIMV2_EVAL_DATA is not set: no local benchmark data to run the paper's protocol on")
    from aimv2_eval import backbones, tasks
    from aimv2_eval.errors import UserError

    spec = backbones.get_spec(backbone)
    if not spec.weights_present():
        pytest.skip(f"weights of {backbone} are not present locally (source: {spec.source})")
    spec_task = tasks.load_task(task)
    if "source" not in spec_task.data:  # a benchmark: open its test split first, so missing data skips cleanly
        from aimv2_eval.data.sources import open_split

        try:
            open_split(spec_task.data, "test")
        except UserError as exc:
            pytest.skip(f"data of {task} absent: {exc}")

    from aimv2_eval.cli import main as cli  # the real `aimv2-eval run` path

    records = tmp_path / "records"
    extra = shlex.split(os.environ.get("AIMV2_EVAL_PAPER_RUN_ARGS", ""))
    argv = ["run", "--backbone", backbone, "--task", task, "--out", str(records), *extra]
    assert cli(argv) == 0
    assert cli(["regress", "--records", str(records), "--references", str(PAPER_DIR)]) == 0
