"""Leaderboard from synthetic records: several seeds, missing cells, two protocols, paper values and deltas."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from aimv2_eval.cli import main as cli
from aimv2_eval.report import leaderboard, references, store

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
L224 = "aimv2-large-patch14-224"


def _write(root: Path, backbone: str, task: str, seed: int, metrics: dict, phash: str = "p1", res: int = 224,
           created: str = "2026-01-01T00:00:00+00:00", main: str = "top1") -> None:
    rec = store.new_record(backbone, task, phash, seed, metrics=metrics, main_metric=main)
    rec["backbone"] = {"name": backbone, "family": "x", "weights_id": "w", "resolution": res, "params": 1}
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
    # a backbone the paper never saw, with an old and a new protocol: only the newest is shown
    _write(root, "aimv2-tiny", "digits_probe", 0, {"top1": 50.0}, phash="old", res=112)
    _write(root, "aimv2-tiny", "digits_probe", 0, {"top1": 90.0}, phash="new", res=112,
           created="2026-02-01T00:00:00+00:00")
    _write(root, "aimv2-tiny", "digits_probe", 1, {"top1": 92.0, "note": "text", "nan": float("nan")}, phash="new",
           res=112, created="2026-02-01T00:00:00+00:00")
    (root / "cache.json").write_text('{"not": "a record"}')  # other JSON beside records is ignored
    return root


def _index() -> references.Index:
    return references.Index(references.load([PAPER_DIR]))


def _csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["backbone"], r["resolution"]): r for r in csv.DictReader(f)}


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
    assert set(rows) == {(L224, "224"), ("dinov2-vit-g-14", "224"), ("aimv2-tiny", "112")}
    row = rows[(L224, "224")]
    assert float(row["imagenet_probe/top1 mean"]) == pytest.approx(86.4)
    assert float(row["imagenet_probe/top1 std"]) == pytest.approx(0.4)
    assert row["imagenet_probe/top1 n"] == "3"
    assert row["imagenet_probe/top1 paper"] == "86.6"  # Table 3
    assert float(row["imagenet_probe/top1 delta"]) == pytest.approx(-0.2)
    assert row["imagenet_probe/top5 paper"] == "" and row["imagenet_probe/top5 delta"] == ""  # no paper top-5
    assert row["cifar10_probe/top1 std"] == "" and row["cifar10_probe/top1 n"] == "1"


def test_cells_never_measured_stay_empty(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    rows = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv"))
    dino = rows[("dinov2-vit-g-14", "224")]
    # the paper has DINOv2 ImageNet (87.2) but nobody measured it: every field of the cell is empty
    assert all(dino[f"imagenet_probe/top1 {p}"] == "" for p in ("mean", "std", "n", "paper", "delta"))
    assert dino["cifar10_probe/top1 paper"] == "99.7"  # Table 3, DINOv2 CIFAR-10
    assert float(dino["cifar10_probe/top1 delta"]) == pytest.approx(-1.2)
    # columns exist only for measured task metrics: no Food101 column at all
    assert not any(k.startswith("food101_probe") for k in dino)


def test_latest_protocol_wins_and_is_noted(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    tiny = _csv(leaderboard.write_csv(board, tmp_path / "lb.csv"))[("aimv2-tiny", "112")]
    assert float(tiny["digits_probe/top1 mean"]) == pytest.approx(91.0)
    assert tiny["digits_probe/top1 n"] == "2" and tiny["digits_probe/top1 paper"] == ""
    assert any("old" in n and "digits_probe" in n for n in board.notes)


def test_markdown_and_paper_layouts(records, tmp_path):
    board = leaderboard.build(store.load_records(records), _index())
    md = leaderboard.to_markdown(board)
    assert "86.40 ± 0.40 [3] (paper 86.6, Δ -0.20)" in md
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


def test_command_writes_every_output(records, tmp_path, capsys):
    out = tmp_path / "board" / "lb.csv"
    assert cli(["leaderboard", "--records", str(records), "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert names == {"lb.csv", "lb.md", "lb.png", "lb_table3.csv", "lb_table4.csv", "lb_table7.csv", "lb_tableD3.csv"}
    assert (out.parent / "lb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Table 3 / B2" in (out.parent / "lb.md").read_text()
    assert "protocol" in capsys.readouterr().out  # the left-out protocol is reported


def test_missing_records_folder_is_a_user_error(tmp_path, capsys):
    assert cli(["leaderboard", "--records", str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no records folder" in capsys.readouterr().err
