"""Paper labels -> project names: the one place that maps the paper's rows, benchmarks and metrics.

The paper's tables live in ../shared/paper/tables/ (copied into results/paper/ by scripts/build_paper_refs.py).
A paper row becomes a backbone registry name only where the paper says which released checkpoint it is; every
other row keeps the paper's own label (model + architecture). Why each mapping holds is in results/paper/README.md.
"""

from __future__ import annotations

import re

_AIMV2_SIZES = {"ViT-L": "large", "ViT-H": "huge", "ViT-1B": "1B", "ViT-3B": "3B"}

# (model without its citation, architecture) -> registry name, for baseline rows whose architecture is printed.
# Where several resolutions exist, the paper's default (224px for OpenAI CLIP) unless the row says otherwise.
_BASELINES = {
    ("DINOv2", "ViT-g/14"): "dinov2-vit-g-14",
    ("OAI CLIP", "ViT-L/14"): "openai-clip-vit-l-14",
    ("OpenAI CLIP", "ViT-L/14"): "openai-clip-vit-l-14",
    ("DFN-CLIP", "ViT-L/14"): "dfn-clip-vit-l-14",
    ("DFN-CLIP", "ViT-H/14"): "dfn-clip-vit-h-14",
    ("SigLIP", "ViT-L/16"): "siglip-vit-l-16",
    ("SigLIP", "ViT-So400m/14"): "siglip-so400m-14",
    ("SigLIP", "ViT-So400M/14"): "siglip-so400m-14",
    ("MAE", "ViT-H/14"): "mae-vit-h-14",
}
# Detection and grounding tables (4, D1, D2, D3) use ViT-L for every family (Sec. 4.2, D.2); SigLIP's ViT-L is /16.
_DETECTION_VIT_L = {
    "OAI CLIP": "openai-clip-vit-l-14",
    "OpenAI CLIP": "openai-clip-vit-l-14",
    "DFN-CLIP": "dfn-clip-vit-l-14",
    "SigLIP": "siglip-vit-l-16",
    "DINOv2": "dinov2-vit-l-14",
}
_DETECTION_TABLES = {"4", "D1", "D2", "D3"}
# Table D2: AIMv2's pre-training resolution is chosen so that its feature map equals the window (App. D.1):
# window 16 = 224px, 24 = 336px, 32 = 448px. Tables 4, D1 and D3 use window 16.
_WINDOW_TO_RES = {"16": "224", "24": "336", "32": "448"}

# Table 3 / B2 benchmark -> task registry name (Table B1's 14 recognition benchmarks).
PROBE_TASKS = {
    "IN-1k": "imagenet_probe",
    "iNAT-18": "inat18_probe",
    "CIFAR-10": "cifar10_probe",
    "CIFAR-100": "cifar100_probe",
    "Food101": "food101_probe",
    "DTD": "dtd_probe",
    "Pets": "pets_probe",
    "Cars": "cars_probe",
    "Camelyon17": "camelyon17_probe",
    "PCAM": "pcam_probe",
    "RxRx1": "rxrx1_probe",
    "EuroSAT": "eurosat_probe",
    "fMoW": "fmow_probe",
    "Infograph": "infograph_probe",
}
# Table 7 / C3 / 9 benchmark -> suffix of the instruction-tuning task. "paper text" is the SEED column: the shared
# tables lost its header word (Table 7 header and Table C2 reference [64] = SEED).
_MULTIMODAL = {
    "VQAv2": "vqav2",
    "GQA": "gqa",
    "OKVQA": "okvqa",
    "TextVQA": "textvqa",
    "DocVQA": "docvqa",
    "InfoVQA": "infovqa",
    "ChartQA": "chartqa",
    "ScienceQA": "scienceqa",
    "COCO": "coco_captions",
    "TextCaps": "textcaps",
    "NoCaps": "nocaps",
    "paper text": "seed",
    "MMEp": "mme",
}
# Tables 4, D1, D2 benchmark -> grounding task.
_GROUNDING = {
    "COCO": "ovd_coco",
    "LVIS": "ovd_lvis",
    "LVIS val": "ovd_lvis",
    "RefCOCO": "rec_refcoco",
    "RefCOCO val": "rec_refcoco",
    "RefCOCO+": "rec_refcoco_plus",
    "RefCOCO+ val": "rec_refcoco_plus",
    "RefCOCOg": "rec_refcocog",
    "RefCOCOg val": "rec_refcocog",
}
# Paper metric label -> metric name in result records.
METRICS = {
    "top-1 accuracy (%)": "top1",
    "top-1 accuracy (%), attentive probe": "top1",
    "zero-shot top-1 accuracy (%)": "top1",
    "AP (open-vocabulary detection)": "ap",
    "AP_all": "ap",
    "AP_s": "ap_s",
    "AP_m": "ap_m",
    "AP_l": "ap_l",
    "AP_r": "ap_r",
    "AP_c": "ap_c",
    "AP_f": "ap_f",
    "P@1 (referring expression comprehension)": "p_at_1",
    "P@1": "p_at_1",
    "box mAP50:95 AP_all": "box_ap",
    "box mAP50:95 AP_s": "box_ap_s",
    "box mAP50:95 AP_m": "box_ap_m",
    "box mAP50:95 AP_l": "box_ap_l",
    "mask mAP50:95 AP_all": "mask_ap",
    "mask mAP50:95 AP_s": "mask_ap_s",
    "mask mAP50:95 AP_m": "mask_ap_m",
    "mask mAP50:95 AP_l": "mask_ap_l",
    "accuracy": "accuracy",
    "accuracy (val), after instruction tuning": "accuracy",
    "ANLS": "anls",
    "relaxed accuracy": "relaxed_accuracy",
    "CIDEr": "cider",
    "MME perception score": "mme_perception",
    "average score": "average_score",
}


# Measured cells that the paper reports under another backbone name. The released LiT checkpoint is Table 5's
# AIMv2-L after LiT tuning (its image tower is locked), so evaluating it directly measures Table 5's cell.
REFERENCE_ALIASES = {
    ("aimv2-large-patch14-224-lit", "imagenet_zeroshot"): "aimv2-large-patch14-224",
}


def strip_citation(model: str) -> str:
    """'DINOv2 [87]' -> 'DINOv2'."""
    return re.sub(r"\s*\[\d+\]", "", model).strip()


def clean_architecture(arch: str) -> str:
    """'ViT-L (Sec. 4.2)' -> 'ViT-L'; '(not stated in table)' -> ''."""
    return re.sub(r"\s*\(.*\)", "", arch).strip()


def paper_label(model: str, architecture: str, resolution: str = "") -> str:
    """The paper's row label: model, architecture and (if printed) resolution."""
    parts = [strip_citation(model), clean_architecture(architecture), resolution]
    return " ".join(p for p in parts if p)


def _aimv2_name(arch: str, resolution: str) -> str | None:
    size = _AIMV2_SIZES.get(arch.split("/")[0])
    res = resolution.removesuffix("px")
    if size is None or res not in {"224", "336", "448", "native"}:
        return None
    if res == "native" and size != "large":  # only AIMv2-L has a native-resolution release
        return None
    return f"aimv2-{size}-patch14-{res}"


def registry_backbone(
    table: str, model: str, architecture: str, resolution: str, pretrain_samples: str, setting: str
) -> str | None:
    """Registry name of a paper row, or None when the paper does not identify a released checkpoint."""
    name, arch = strip_citation(model), clean_architecture(architecture)
    if table.startswith("9") or table == "C3":
        return None  # ablation models (2B samples) and an AIMv2 whose size is not stated: no released checkpoint
    if table in _DETECTION_TABLES:
        if name == "AIMv2":
            window = re.search(r"window size=(\d+)", setting)
            return _aimv2_name("ViT-L", _WINDOW_TO_RES.get(window.group(1) if window else "16", ""))
        return _DETECTION_VIT_L.get(name)
    if table == "5":
        # Sec. 4.1: the 12B-sample AIMv2 row is AIMv2-L (ml-aim's LiT release, 77.0). The other rows print no
        # architecture, so they keep their paper labels.
        return _aimv2_name("ViT-L", "224") if name == "AIMv2" and pretrain_samples == "12B" else None
    if name in {"AIMv2", "AIMv2-L"}:
        # Table 7 states 336px for all AIMv2 rows; Table 8 states no resolution: the 224px release.
        return _aimv2_name(arch or "ViT-L", resolution or "224")
    if table == "7":
        # Table 7 states the token count, which fixes the checkpoint where a family releases several resolutions.
        if name == "OpenAI CLIP" and "#patches=576" in setting:
            return "openai-clip-vit-l-14-336"  # 576 = 24x24 patches of 14px = 336px
        if name == "SigLIP" and arch == "ViT-L/14" and "#patches=576" in setting:
            return "siglip-vit-l-16-384"  # SigLIP's only ViT-L is /16 (printed '/14'); 576 = 24x24 of 16px = 384px
        if name == "SigLIP":
            return None  # So400M with 752 patches: no square grid of any released resolution; keep the label
    return _BASELINES.get((name, arch))


def task_name(table: str, benchmark: str, setting: str) -> str:
    """Task registry name (or a descriptive snake_case name where the project has no such task yet)."""
    if table in {"3", "B2"}:
        return PROBE_TASKS[benchmark]
    if table == "5":
        return "imagenet_zeroshot"
    if table == "6":
        test = setting.removeprefix("test resolution=")
        return "imagenet_probe_test_native" if test == "native" else f"imagenet_probe_test{test.split('x')[0]}"
    if table == "7":
        return f"llava_{_MULTIMODAL[benchmark]}"
    if table == "C3":  # one task per tiling, so the 336 / 672 / 1008 px rows are distinct cells
        grid = re.search(r"tiling (\d)x\d grid", setting)
        tiles = f"_tiles{grid.group(1)}x{grid.group(1)}" if grid else ""
        return f"cambrian_{_MULTIMODAL[benchmark]}{tiles}"
    if table == "8":
        shots = re.match(r"(\d+)-shot", setting)
        return f"icl_average_{shots.group(1) if shots else 'unknown'}shot"
    if table.startswith("9"):
        return "imagenet_probe" if benchmark == "IN-1k" else f"llava_{_MULTIMODAL[benchmark]}"
    if table in {"4", "D1", "D2"}:
        base = _GROUNDING[benchmark]
        window = re.search(r"window size=(\d+)", setting)
        return base if not window or window.group(1) == "16" else f"{base}_window{window.group(1)}"
    if table == "D3":
        return "coco_vitdet"
    raise KeyError(f"no task mapping for table {table!r}")


def metric_name(paper_metric: str) -> str:
    return METRICS[paper_metric]
