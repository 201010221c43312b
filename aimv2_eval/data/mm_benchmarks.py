"""The 13 multimodal benchmarks of the paper's Table C2, as `data:` blocks for `aimv2_eval.data.multimodal`.

Each entry: `data` (source hf: HF id / config / split / revision / fields, plus a `local:` alternative used instead
when present: `{root}/<name>/<hf split>.jsonl` in our field names, images under `{root}/<name>/images/`), `kind` (vqa | short | mc | yes_no | caption), `metric`, `prompt`
(Table C2's instruction), `lmms_eval` (the task file the ids and columns come from) and `note` (choices made).

Ids and columns follow lmms-eval (EvolvingLMMs-Lab/lmms-eval at 75571cf, Aug 2026). Its commit 4be7ee0 (#1416, Jul
2026) moved the image datasets from the `lmms-lab/` org to `lmms-lab-encoder/` with the same names and layouts; a
warm cache of the old id works by editing `hf.id` back (`lmms-lab/VQAv2`, ...).
"""

from __future__ import annotations

from typing import Any

from aimv2_eval.data.multimodal import CAPTION_PROMPT, MC_PROMPT, VQA_PROMPT

KINDS = ("vqa", "short", "mc", "yes_no", "caption")
METRICS = ("vqa_accuracy", "exact_match", "anls", "relaxed_accuracy", "choice_accuracy", "mme", "cider")
ORG = "lmms-lab-encoder"


def _entry(name: str, hf: dict[str, Any], fields: dict[str, Any], kind: str, metric: str, prompt: str,
           lmms_eval: str, note: str) -> dict[str, Any]:
    hf = {"id": f"{ORG}/{hf.pop('id')}", "config": hf.pop("config", None), "split": hf.pop("split"),
          "revision": None, **hf}
    local = {"annotations": f"{{root}}/{name}/{hf['split']}.jsonl", "images": f"{{root}}/{name}/images"}
    return {"data": {"source": "hf", "hf": hf, "fields": fields, "local": local}, "kind": kind, "metric": metric,
            "prompt": prompt, "lmms_eval": lmms_eval, "note": note}


BENCHMARKS: dict[str, dict[str, Any]] = {
    # lmms_eval/tasks/vqav2/vqav2_val.yaml (+ _default_template_vqav2_yaml): test_split validation; answers are the 10
    # human answers as a list of {answer, answer_confidence, answer_id}; scored with the VQA accuracy (utils.py).
    "llava_vqav2": _entry(
        "vqav2", {"id": "VQAv2", "split": "validation"},
        {"sample_id": "question_id", "image": "image", "question": "question", "answers": "answers[].answer",
         "question_type": "question_type", "image_id": "image_id"},
        "vqa", "vqa_accuracy", VQA_PROMPT, "lmms_eval/tasks/vqav2/vqav2_val.yaml",
        "VQAv2 val (214,354 questions), as the paper."),
    # lmms_eval/tasks/gqa/gqa.yaml: config testdev_balanced_instructions, split testdev; images are a second config
    # (testdev_balanced_images, keyed by `id`) joined on `imageId` (gqa_process_docs in utils.py).
    "llava_gqa": _entry(
        "gqa", {"id": "GQA", "config": "testdev_balanced_instructions", "split": "testdev",
                "images": {"config": "testdev_balanced_images", "split": "testdev", "key": "id", "column": "image"}},
        {"sample_id": "id", "image": "imageId", "question": "question", "answers": "answer",
         "question_type": "types.detailed?", "image_id": "imageId"},
        "short", "exact_match", VQA_PROMPT, "lmms_eval/tasks/gqa/gqa.yaml",
        "test-dev balanced (12,578 questions), not the val split Table C2 names: it is the split lmms-eval and "
        "LLaVA-1.5 report GQA on, so numbers compare; val_balanced (132k questions) is 10x the cost. "
        "question_type is optional: the `types` struct is in GQA's release but unverified in the HF copy."),
    # lmms_eval/tasks/ok_vqa/ok_vqa_val2014.yaml (+ _default_template_vqa_yaml): split val2014; answers a list of 10
    # strings, VQA accuracy (utils.py). lmms-eval adds an "Unanswerable" hint to its prompt; Table C2's is used here.
    "llava_okvqa": _entry(
        "okvqa", {"id": "OK-VQA", "split": "val2014"},
        {"sample_id": "question_id", "image": "image", "question": "question", "answers": "answers",
         "question_type": "question_type"},
        "vqa", "vqa_accuracy", VQA_PROMPT, "lmms_eval/tasks/ok_vqa/ok_vqa_val2014.yaml",
        "OK-VQA val2014 (5,046 questions)."),
    # lmms_eval/tasks/textvqa/textvqa_val.yaml (+ _default_template_textvqa_yaml): split validation, answers a list of
    # 10 strings, VQA accuracy; without OCR tokens in the prompt (lmms-eval's default `ocr: false`).
    "llava_textvqa": _entry(
        "textvqa", {"id": "textvqa", "split": "validation"},
        {"sample_id": "question_id", "image": "image", "question": "question", "answers": "answers",
         "image_id": "image_id"},
        "vqa", "vqa_accuracy", VQA_PROMPT, "lmms_eval/tasks/textvqa/textvqa_val.yaml",
        "TextVQA val (5,000 questions), no OCR tokens in the prompt."),
    # lmms_eval/tasks/docvqa/docvqa_val.yaml (+ _default_template_docvqa_yaml): dataset DocVQA config DocVQA, split
    # validation, target `answers` (list), metric anls.
    "llava_docvqa": _entry(
        "docvqa", {"id": "DocVQA", "config": "DocVQA", "split": "validation"},
        {"sample_id": "questionId", "image": "image", "question": "question", "answers": "answers",
         "question_type": "question_types", "image_id": "docId"},
        "short", "anls", VQA_PROMPT, "lmms_eval/tasks/docvqa/docvqa_val.yaml",
        "validation (5,349 questions): Table C2 reports test, whose answers are hidden (scored only by the RRC "
        "server), so local scores are on validation and are not the paper's split."),
    # lmms_eval/tasks/infovqa/infovqa_val.yaml (+ _default_template_infovqa_yaml): dataset DocVQA config
    # InfographicVQA, split validation, target `answers`, metric anls.
    "llava_infovqa": _entry(
        "infovqa", {"id": "DocVQA", "config": "InfographicVQA", "split": "validation"},
        {"sample_id": "questionId", "image": "image", "question": "question", "answers": "answers",
         "question_type": "answer_type"},
        "short", "anls", VQA_PROMPT, "lmms_eval/tasks/infovqa/infovqa_val.yaml",
        "validation (2,801 questions): Table C2 reports test, whose answers are hidden (RRC server), so local scores "
        "are on validation."),
    # lmms_eval/tasks/chartqa/chartqa.yaml: split test, target `answer`, relaxed accuracy (5% on numbers) over the
    # human and augmented parts (`type`). lmms-eval's prompt says "single word"; Table C2's is used here.
    "llava_chartqa": _entry(
        "chartqa", {"id": "ChartQA", "split": "test"},
        {"image": "image", "question": "question", "answers": "answer", "question_type": "type"},
        "short", "relaxed_accuracy", VQA_PROMPT, "lmms_eval/tasks/chartqa/chartqa.yaml",
        "ChartQA test (2,500: human + augmented), as the paper."),
    # lmms_eval/tasks/scienceqa/scienceqa_img.yaml: config ScienceQA-IMG, split test; `choices` a list, `answer` an
    # int index (sqa_doc_to_target: the option letter), `hint` shown as "Context: ..." (sqa_doc_to_text).
    "llava_scienceqa": _entry(
        "scienceqa", {"id": "ScienceQA", "config": "ScienceQA-IMG", "split": "test"},
        {"image": "image", "question": "question", "context": "hint", "choices": "choices", "answer_index": "answer",
         "question_type": "category"},
        "mc", "choice_accuracy", MC_PROMPT, "lmms_eval/tasks/scienceqa/scienceqa_img.yaml",
        "ScienceQA test, image split (2,017 questions), as the paper."),
    # lmms_eval/tasks/seedbench/seedbench.yaml: split test; choices are columns choice_a..choice_d, `answer` the
    # letter, `image` a list of frames; the image part is the rows with data_type "image" (seed_image metric).
    "llava_seed": _entry(
        "seed", {"id": "SEED-Bench", "split": "test", "filter": {"column": "data_type", "equals": "image"}},
        {"sample_id": "question_id", "image": "image[0]", "question": "question",
         "choices": ["choice_a", "choice_b", "choice_c", "choice_d"], "answers": "answer",
         "question_type": "question_type_id"},
        "mc", "choice_accuracy", MC_PROMPT, "lmms_eval/tasks/seedbench/seedbench.yaml",
        "SEED-Bench image split (data_type == image, 14,233 of 17,990 questions), as the paper; the prompt is P2, "
        "as lmms-eval's seed_doc_to_text (Table C2's cell for this row is unreadable)."),
    # lmms_eval/tasks/mme/mme.yaml: split test; `answer` "Yes"/"No", `category` the subtask, `question_id` the image
    # file: its two questions share it (acc+ in mme_aggregate_results).
    "llava_mme": _entry(
        "mme", {"id": "MME", "split": "test"},
        {"image": "image", "question": "question", "answers": "answer", "question_type": "category",
         "image_id": "question_id"},
        "yes_no", "mme", VQA_PROMPT, "lmms_eval/tasks/mme/mme.yaml",
        "MME (2,374 questions; the perception score over its 10 perception subtasks). Prompt: Table C2's layout "
        "puts the letter prompt on this row, which does not fit yes/no questions; lmms-eval's default (and "
        "LLaVA-1.5's) short-answer prompt is used. The questions end with 'Please answer yes or no.'; lmms-eval "
        "removes that phrase when it adds its prompt."),
    # lmms_eval/tasks/coco_cap/coco2017_cap_val.yaml: split val; `answer` the list of reference captions,
    # `question_id` the image file (coco_process_result derives the image id from it).
    "llava_coco_captions": _entry(
        "coco_captions", {"id": "COCO-Caption2017", "split": "val"},
        {"sample_id": "question_id", "image": "image", "answers": "answer", "image_id": "question_id"},
        "caption", "cider", CAPTION_PROMPT, "lmms_eval/tasks/coco_cap/coco2017_cap_val.yaml",
        "COCO 2017 val (5,000 images, 5 references each), not Karpathy: Table C2 names val, and lmms-eval's Karpathy "
        "tasks (yerevann/coco-karpathy) fetch every image from a URL at evaluation time."),
    # lmms_eval/tasks/textcaps/textcaps_val.yaml: split val, one row per image, `caption_str` the references
    # (textcaps_process_result).
    "llava_textcaps": _entry(
        "textcaps", {"id": "TextCaps", "split": "val"},
        {"sample_id": "image_id", "image": "image", "answers": "caption_str", "image_id": "image_id"},
        "caption", "cider", CAPTION_PROMPT, "lmms_eval/tasks/textcaps/textcaps_val.yaml",
        "TextCaps val (3,166 images), as the paper."),
    # lmms_eval/tasks/nocaps/nocaps_val.yaml: split validation, target `annotations_captions` (10 references).
    "llava_nocaps": _entry(
        "nocaps", {"id": "NoCaps", "split": "validation"},
        {"sample_id": "image_id", "image": "image", "answers": "annotations_captions", "image_id": "image_id"},
        "caption", "cider", CAPTION_PROMPT, "lmms_eval/tasks/nocaps/nocaps_val.yaml",
        "NoCaps val (4,500 images, all three domains), as the paper."),
}
