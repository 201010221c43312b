"""results/paper/ holds every number of the paper's result tables, equal cell for cell to ../shared/paper/tables/."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from aimv2_eval.report import names, references

REPO = Path(__file__).resolve().parents[1]
SHARED_TABLES = REPO.parent / "shared" / "paper" / "tables"
PAPER_DIR = REPO / "results" / "paper"
need_shared = pytest.mark.skipif(
    not SHARED_TABLES.is_dir(), reason=f"{SHARED_TABLES} absent (the paper's tables live beside the clone)"
)


def _builder():
    spec = importlib.util.spec_from_file_location("build_paper_refs", REPO / "scripts" / "build_paper_refs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _registered(refs: list[references.Reference]) -> set[str]:
    """Backbones that are registry names rather than the paper's own row labels."""
    return {
        r.backbone for r in refs
        if r.backbone != names.paper_label(r.extra.get("paper_model", ""), r.extra.get("paper_architecture", ""))
    }


PROVENANCE = ("table", "resolution", "pretrain_samples", "setting")


@need_shared
def test_every_paper_value_is_present_and_equal():
    sources = _builder().SOURCES
    total = 0
    for out_name, source in sources.items():
        paper = _rows(SHARED_TABLES / source)
        ours = _rows(PAPER_DIR / out_name)
        assert len(ours) == len(paper), out_name
        key = lambda r, m, a, b, mt: tuple(r[c] for c in PROVENANCE) + (r[m], r[a], r[b], r[mt])  # noqa: E731
        by_key = {key(r, "paper_model", "paper_architecture", "paper_benchmark", "paper_metric"): r for r in ours}
        assert len(by_key) == len(ours), f"{out_name}: duplicate paper cells"
        for row in paper:
            mine = by_key[key(row, "model", "architecture", "benchmark", "metric")]
            assert mine["value"] == row["value"], (out_name, row)
            if row["value"]:
                assert float(mine["value"]) == float(row["value"])
            total += 1
    # and the stacked file agrees: nothing in all_results_long.csv is missing from the per-table files
    assert total == len(_rows(SHARED_TABLES / "all_results_long.csv"))


@need_shared
def test_committed_tables_are_what_the_script_builds(tmp_path):
    written = _builder().build(SHARED_TABLES, tmp_path)
    assert {p.name for p in written} == {p.name for p in PAPER_DIR.glob("*.csv")}
    for path in written:
        assert path.read_bytes() == (PAPER_DIR / path.name).read_bytes(), f"rerun scripts/build_paper_refs.py ({path.name})"


def test_references_load_without_shared():
    refs = references.load([PAPER_DIR])
    assert {r.table for r in refs} == {"3", "4", "5", "6", "7", "8", "9a", "9b", "9c", "9d", "9e", "9f", "B2", "C3",
                                       "D1", "D2", "D3"}
    assert len(refs) == 725
    assert sum(r.value is None for r in refs) == 2  # Table 6: fixed-resolution models not reported at native
    assert all(r.tolerance > 0 for r in refs)
    index = references.Index(refs)
    # spot checks against the paper (Table 3, Table 5, Table 6 native row; ml-aim's README agrees on all three)
    assert index.get("aimv2-large-patch14-224", "imagenet_probe", "top1").value == 86.6
    assert index.get("aimv2-large-patch14-224", "imagenet_zeroshot", "top1").value == 77.0
    assert index.get("aimv2-large-patch14-native", "imagenet_probe_test_native", "top1").value == 87.3
    # Table 3 and B2 repeat AIMv2's 224px rows; the index holds them once and no registered cell is ambiguous
    assert not {k for k in index.ambiguous if k[0] in _registered(refs)}
    assert len(_registered(refs)) == 22  # 13 AIMv2 releases + 9 baselines


def test_probe_tasks_are_the_registry_names():
    refs = [r for r in references.load([PAPER_DIR]) if r.table in {"3", "B2"}]
    assert {r.task for r in refs} == set(names.PROBE_TASKS.values())
    assert len(names.PROBE_TASKS) == 14


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (("3", "AIMv2", "ViT-L/14", "224px", "12B", ""), "aimv2-large-patch14-224"),
        (("B2", "AIMv2", "ViT-1B/14", "336px", "12B", ""), "aimv2-1B-patch14-336"),
        (("3", "OAI CLIP [94]", "ViT-L/14", "", "", ""), "openai-clip-vit-l-14"),
        (("3", "DFN-CLIP [35]", "ViT-H/14", "", "", ""), "dfn-clip-vit-h-14"),
        (("3", "SigLIP [133]", "ViT-So400m/14", "", "", ""), "siglip-so400m-14"),
        (("3", "DINOv2 [87]", "ViT-g/14", "", "", ""), "dinov2-vit-g-14"),
        (("3", "MAE [48]", "ViT-2B/14", "", "", ""), None),
        (("6", "AIMv2-L", "ViT-L/14", "native", "", "test resolution=native"), "aimv2-large-patch14-native"),
        (("7", "OpenAI CLIP", "ViT-L/14", "", "", "#patches=576; Llava"), "openai-clip-vit-l-14-336"),
        (("D2", "AIMv2", "ViT-L (Sec. 4.2)", "", "", "window size=32"), "aimv2-large-patch14-448"),
        (("D3", "DINOv2", "ViT-L (ViTDet Mask R-CNN, Sec. D.2)", "", "", "window 16"), "dinov2-vit-l-14"),
        (("5", "AIMv2", "", "", "2B", "LiT pairs=3B"), None),
        (("9a", "AIMv2", "ViT-L", "224px", "2B", "(a) Objective"), None),
    ],
)
def test_registry_names(row, expected):
    assert names.registry_backbone(*row) == expected


def test_registry_names_exist_in_the_backbone_registry():
    """Every registry name in results/paper/ is one the backbone registry knows, under its canonical name."""
    from aimv2_eval import backbones
    for name in sorted(_registered(references.load([PAPER_DIR]))):
        assert backbones.get_spec(name).name == name
