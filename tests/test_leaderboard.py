"""Leaderboard from synthetic records: several seeds, missing cells, two protocols, paper values and deltas; and
the README's main command beside a run of another protocol: two rows, never one number."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import pytest

from aimv2_eval.cli import main as cli
from aimv2_eval.report import leaderboard, references, store

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
L224 = "aimv2-large-patch14-224"


def _write(root: Path, backbone: str, task: str, seed: int, metrics: dict, phash: str = "p1", res: int = 224,
           created: str = "2026-01-01T00:00:00+00:00", main: str = "top1", overrides: dict | None = None) -> None:
    rec = store.new_record(backbone, task, phash, seed, metrics=metrics, main_metric=main, overrides=overrides or {})
    rec["backbone"] = {"name": backbone, "family": "x", "weights_id": "w", "resolution": res, "params": 1}
    rec["task_config"] = {"protocol": {}, "resolved_protocol": {"epochs": 3 if overrides else 30, "precision": "fp32"}}
    rec["created"] = created
    store.write_record(root, rec)


@pytest.fixture
def records(tmp_path: Path) -> Path:
    root = tmp_path / "records"
    for seed, v in enumerate([86.0, 86.4, 86.8]):  # three seeds: mean 86.4, std 0.4
        _write(root, L224, "imagenet_probe", seed, {"top1": v, "top5": 97.0 + seed})
    _write(root, L224, "cifar10_probe", 0, {"top1": 99.5})  # one seed: no spread
    # DINOv2 measured on CIFAR-10 only: its ImageNet cell is missing although the paper has one (87.2)
    for seed, v in enumerate([98.0, 99.0]):
        _write(root, "dinov2-vit-g-14", "cifar10_probe", seed, {"top1": v})
    # a backbone the paper never saw, under two protocols: one row each
    _write(root, "aimv2-tiny", "digits_probe", 0, {"top1": 50.0}, phash="old", res=112, overrides={"epochs": 3})
    _write(root, "aimv2-tiny", "digits_probe", 0, {"top1": 90.0}, phash="new", res=112,
           created="2026-02-01T00:00:00+00:00")
    _write(root, "aimv2-tiny", "digits_probe", 1, {"top1": 92.0, "note": "text", "nan": float("nan")}, phash="new",
           res=112, created="2026-02-01T00:00:00+00:00")
    (root / "cache.json").write_text('{"not": "a record"}')  # other JSON beside records is ignored
    return root


def _index() -> references.Index:
    return references.Index(references.load([PAPER_DIR]))


def _csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """Rows by (backbone, task, protocol)."""
    with path.open(newline="") as f:
        return {(r["backbone"], r["task"], r["protocol"]): r for r in csv.DictReader(f)}


def test_measure_groups_seeds_and_skips_non_numbers(records):
    cells = {(c.backbone, c.task, c.protocol_hash, c.metric): c for c in leaderboard.measure(store.load_records(records))}
    im = cells[(L224, "imagenet_probe", "p1", "top1")]
    assert im.n == 3 and im.seeds == [0, 1, 2]
    assert im.mean == pytest.approx(86.4) and im.std == pytest.approx(0.4)
    assert cells[(L224, "cifar10_probe", "p1", "top1")].std is None
    assert ("aimv2-tiny", "digits_probe", "new", "note") not in cells
    assert ("aimv2-tiny", "digits_probe", "new", "nan") not in cells


def test_csv_mean_spread_paper_and_delta(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    rows = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv"))
    assert set(rows) == {(L224, "imagenet_probe", "p1"), (L224, "cifar10_probe", "p1"),
                         ("dinov2-vit-g-14", "cifar10_probe", "p1"), ("aimv2-tiny", "digits_probe", "old"),
                         ("aimv2-tiny", "digits_probe", "new")}
    row = rows[(L224, "imagenet_probe", "p1")]
    assert row["resolution"] == "224" and row["main metric"] == "top1" and row["seeds"] == "3"
    assert float(row["top1 mean"]) == pytest.approx(86.4)
    assert float(row["top1 std"]) == pytest.approx(0.4)
    assert row["top1 reference"] == "86.6"  # Table 3
    assert float(row["top1 delta"]) == pytest.approx(-0.2)
    assert row["top5 reference"] == "" and row["top5 delta"] == ""  # no paper top-5
    cifar = rows[(L224, "cifar10_probe", "p1")]
    assert cifar["top1 std"] == "" and cifar["seeds"] == "1" and cifar["top5 mean"] == ""


def test_cells_never_measured_stay_empty(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    rows = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv"))
    # the paper has DINOv2 ImageNet (87.2) but nobody measured it: no row, never filled from the paper
    assert [k for k in rows if k[0] == "dinov2-vit-g-14"] == [("dinov2-vit-g-14", "cifar10_probe", "p1")]
    dino = rows[("dinov2-vit-g-14", "cifar10_probe", "p1")]
    assert dino["top1 reference"] == "99.7"  # Table 3, DINOv2 CIFAR-10
    assert float(dino["top1 delta"]) == pytest.approx(-1.2)
    assert dino["top5 mean"] == "" and dino["top5 reference"] == ""  # measured elsewhere, not in this row


def test_two_protocols_are_two_rows_with_their_settings(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    rows = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv"))
    new, old = rows[("aimv2-tiny", "digits_probe", "new")], rows[("aimv2-tiny", "digits_probe", "old")]
    assert float(new["top1 mean"]) == pytest.approx(91.0) and new["seeds"] == "2" and new["top1 reference"] == ""
    assert float(old["top1 mean"]) == pytest.approx(50.0) and old["seeds"] == "1"
    assert (new["epochs"], new["precision"], new["overrides"]) == ("30", "fp32", "")
    assert (old["epochs"], old["overrides"]) == ("3", "--epochs 3")
    tiny = [r.protocol_hash for r in board.rows if r.backbone == "aimv2-tiny"]
    assert tiny == ["new", "old"]  # the task's default protocol first
    im = rows[(L224, "imagenet_probe", "p1")]
    assert im["check"].startswith("paper Table 3 86.6 ± ") and im["check"].endswith(": pass")
    assert new["check"] == "" and new["baselines"] == ""  # no reference; these records name no class count


def test_rows_name_their_random_init_twin(records, tmp_path):
    _write(records, "aimv2-tiny-random", "digits_probe", 0, {"top1": 70.0}, phash="rnd", res=112)
    rows = _csv(leaderboard.write_csv(leaderboard.build(store.load_records(records), _index()), tmp_path / "lb.csv"))
    assert rows[("aimv2-tiny", "digits_probe", "new")]["baselines"] == "random-init 70.00"  # same resolved protocol
    assert rows[("aimv2-tiny", "digits_probe", "old")]["baselines"] == ""  # 3 epochs: not its twin


def test_markdown_and_paper_layouts(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    md = leaderboard.to_markdown(board)
    assert "86.40 ± 0.40 [3] (paper 86.6, Δ -0.20)" in md
    assert "| aimv2-tiny | 112 | digits_probe | old | 3 | fp32 | --epochs 3 | 1 | top1 |" in md
    lay = leaderboard.layout(board, "table3")
    assert [c[2] for c in lay.columns][:3] == ["IN-1k", "iNAT-18", "CIFAR-10"]  # the paper's column order
    assert len(lay.columns) == 14
    assert [r[0] for r in lay.rows] == ["dinov2-vit-g-14", L224]  # paper row order; aimv2-tiny has no column here
    with (leaderboard.write_layout_csv(board, lay, tmp_path / "t3.csv")).open() as f:
        t3 = {r["backbone"]: r for r in csv.DictReader(f)}
    assert t3[L224]["paper row"] == "AIMv2 ViT-L/14 224px"
    assert float(t3[L224]["IN-1k"]) == pytest.approx(86.4) and t3[L224]["IN-1k paper"] == "86.6"
    assert t3["dinov2-vit-g-14"]["IN-1k"] == "" and t3["dinov2-vit-g-14"]["IN-1k paper"] == ""
    assert "(no measured cell" in leaderboard.layout_markdown(board, leaderboard.layout(board, "tableD3"))


def test_command_writes_every_output(records, tmp_path):
    out = tmp_path / "board" / "lb.csv"
    assert cli(["leaderboard", "--records", str(records), "--out", str(out)]) == 0
    (out.parent / "lb_table7.csv").write_text("left by an earlier leaderboard\n")
    assert cli(["leaderboard", "--records", str(records), "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert names == {"lb.csv", "lb.md", "lb.png", "lb_table3.csv"}  # no empty table for families without records
    assert (out.parent / "lb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Table 3 / B2" in (out.parent / "lb.md").read_text()
    rows = _csv(out)
    assert ("aimv2-tiny", "digits_probe", "old") in rows and ("aimv2-tiny", "digits_probe", "new") in rows


def test_missing_records_folder_is_a_user_error(tmp_path, capsys):
    assert cli(["leaderboard", "--records", str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no records folder" in capsys.readouterr().err


REPO = PAPER_DIR.parents[1]
EMBEDDED = REPO / "results" / "embedded" / "references.csv"


def _readme_main_command() -> list[str]:
    """The quick start's main command (its first code block's `aimv2-eval run ...`), as arguments of the CLI."""
    quick_start = (REPO / "README.md").read_text().split("## Quick start", 1)[1]
    block = quick_start.split("```bash\n", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if "aimv2-eval run" in ln]
    return shlex.split(line.split("&&")[-1])[1:]


def test_readme_command_is_the_default_protocol_and_the_pinned_one():
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    readme = plan_cell(parse_run_args(_readme_main_command()[1:]))
    default = plan_cell(parse_run_args(["--backbone", readme.spec.name, "--task", readme.task.name]))
    (pinned,) = [r for r in references.load([EMBEDDED]) if r.task == readme.task.name]
    assert readme.protocol_hash == default.protocol_hash == pinned.extra["protocol_hash"]
    assert readme.overrides == {}


def test_readme_run_and_a_short_run_are_two_rows_and_regress_checks_only_its_protocol(tmp_path, capsys):
    records = tmp_path / "records"
    readme = [*_readme_main_command(), "--out", str(records), "--no-progress"]
    assert cli(readme) == 0
    assert cli([*readme, "--epochs", "1", "--limit", "100"]) == 0  # the same task, cut short: another protocol
    out = tmp_path / "lb" / "lb.csv"
    assert cli(["leaderboard", "--records", str(records), "--out", str(out), "--references", str(EMBEDDED)]) == 0
    with out.open(newline="") as f:
        rows = {r["overrides"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"", "--epochs 1 --limit 100"}
    default, short = rows[""], rows["--epochs 1 --limit 100"]
    assert (default["epochs"], default["limit"], default["feature_cache"]) == ("30", "300", "on")
    assert (short["epochs"], short["limit"]) == ("1", "100") and short["protocol"] != default["protocol"]
    assert default["top1 reference"] == "74.56" and short["top1 reference"] == ""  # the pin is the default's
    capsys.readouterr()
    assert cli(["regress", "--records", str(records), "--references", str(EMBEDDED)]) == 0
    text = capsys.readouterr().out
    assert "1 checked, 1 passed, 0 failed" in text
    assert f"skipped 1 record(s): protocol differs from the pinned reference's ({default['protocol']})" in text


def test_records_without_overrides_are_read_from_their_resolved_protocol():
    from aimv2_eval.report import protocols

    rec = {"task_config": {"protocol": {"epochs": 3, "limit": 300},
                           "resolved_protocol": {"epochs": 30, "limit": 300, "feature_cache": True, "precision": "bf16"}}}
    assert protocols.overrides(rec) == {"epochs": 30, "feature_cache": True}  # precision is never an override
    assert protocols.describe_overrides(protocols.overrides(rec)) == "--epochs 30 --feature-cache"
    assert protocols.settings(rec) == {"epochs": 30, "precision": "bf16", "feature_cache": True, "limit": 300}


def test_probe_cells_show_the_main_and_the_paper_rule_number(tmp_path):
    """Head chosen on val (`top1`) beside the pinned reference, the paper's rule (`top1_paper_rule`) beside the
    paper's: both columns, each labelled, each with its own reference."""
    root = tmp_path / "records"
    for seed, (val_chosen, best_on_test) in enumerate([(85.0, 86.4), (85.4, 86.8)]):
        rec = store.new_record(L224, "imagenet_probe", "p1", seed, main_metric="top1",
                               metrics={"top1": val_chosen, "top5": 97.0, "top1_paper_rule": best_on_test,
                                        "top5_paper_rule": 96.0}, selection={"split": "val"}, overrides={})
        rec["backbone"] = {"name": L224, "resolution": 224}
        store.write_record(root, rec)
    board = leaderboard.build(store.load_records(root), _index())
    assert board.metrics == ["top1", "top1_paper_rule", "top5", "top5_paper_rule"]
    (row,) = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv")).values()
    assert float(row["top1 mean"]) == pytest.approx(85.2) and row["top1 reference"] == ""
    assert float(row["top1_paper_rule mean"]) == pytest.approx(86.6) and row["top1_paper_rule reference"] == "86.6"
    assert float(row["top1_paper_rule delta"]) == pytest.approx(0.0)
    assert row["check"] == "paper Table 3 86.6 ± 0.5 on top1_paper_rule 86.60: pass"
    md = leaderboard.to_markdown(board)
    assert "| check | top1 | top1_paper_rule | top5 | top5_paper_rule | note |" in md
    assert "| 85.20 ± 0.28 [2] | 86.60 ± 0.28 [2] (paper 86.6, Δ +0.00) |" in md
    assert "`top1_paper_rule` / `top5_paper_rule` are the head with the best test top-1, the paper's rule" in md
    table3 = leaderboard.layout_markdown(board, leaderboard.layout(board, "table3"))
    assert "86.6 (+0.0)" in table3 and "as the paper chose" in table3  # the paper's layout: its own rule
