"""Benchmark evaluation of an instruction-tuned model: batched greedy generation with the KV cache (left-padded
prompts, transformers' `generate`), prompts of Table C2, every image encoded once, and per-sample answers and scores
(like lm-eval's `--log_samples`). A sample that fails (an image that does not decode, a prompt longer than the
context) is recorded with its error and scored 0; it never loses the other samples' answers.
"""

from __future__ import annotations

import string
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from aimv2_eval.errors import UserError
from aimv2_eval.metrics import multimodal as mm
from aimv2_eval.plugins.llava.model import LlavaModel
from aimv2_eval.plugins.llava.prompts import encode_prompt, end_of_turn_ids, left_padded

# metric of the task -> the key it is recorded under (the paper tables' metric names, results/paper/table7.csv)
RECORD_KEY = {"vqa_accuracy": "accuracy", "vqa_accuracy_norm": "accuracy", "exact_match": "accuracy", "choice_accuracy": "accuracy", "anls": "anls",
              "relaxed_accuracy": "relaxed_accuracy", "mme": "mme_perception", "cider": "cider"}


YES_NO_SUFFIX = "Please answer yes or no."  # MME's own instruction, replaced by the task's prompt (as lmms-eval)


def question_text(sample: Any, prompt: str) -> str:
    """LLaVA's evaluation format: the question, the lettered options when there are some, then the prompt."""
    question = sample.question.replace(YES_NO_SUFFIX, "").strip() if prompt else sample.question
    lines = [question] if question else []
    if sample.choices:
        lines += [f"{string.ascii_uppercase[k]}. {c}" for k, c in enumerate(sample.choices)]
    if prompt:
        lines.append(prompt)
    return "\n".join(lines)


def score(metric: str, prediction: str, sample: Any) -> float:
    """One sample's score in [0, 1] (CIDEr and MME are corpus-level: scored in `summarise`)."""
    if metric == "cider":
        return float("nan")
    if metric == "mme":
        return float(mm.yes_no(prediction) == sample.answers[0].strip().lower())
    n = len(sample.choices) if sample.choices else None
    return mm.score_sample(metric, prediction, sample.answers, n_choices=n)


def summarise(metric: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The task's metrics (x100, as the paper prints them) from the per-sample rows."""
    key = RECORD_KEY[metric]
    if metric == "cider":
        value = mm.cider({r["sample_id"]: r["prediction"] for r in rows}, {r["sample_id"]: r["answers"] for r in rows})
        return {key: round(value, 3)}
    if metric == "mme":
        table = mm.mme_perception([{"subtask": r["question_type"], "image_id": r["image_id"],
                                    "correct": bool(r["score"])} for r in rows])
        return {key: round(table["mme_perception"], 3)}
    return {key: round(100.0 * sum(r["score"] for r in rows) / max(1, len(rows)), 3)}


class Evaluator:
    """Answers a benchmark's samples with `model`; `encode_images(images)` -> tower features per image."""

    def __init__(self, model: LlavaModel, tok: Any, encode_images: Callable[[list[Any]], list[torch.Tensor]],
                 n_image_tokens: int, p: dict[str, Any], device: torch.device, cache_size: int = 256) -> None:
        self.model, self.tok, self.encode_images = model, tok, encode_images
        self.n_image_tokens, self.p, self.device = n_image_tokens, p, device
        self.features: OrderedDict[str, torch.Tensor] = OrderedDict()  # image_id -> features, newest last
        self.cache_size = cache_size
        self.images_encoded = 0
        # stop at the eos and at whatever the chat template closes an assistant turn with (<|eot_id|>, <|im_end|>, ...)
        eos = [tok.eos_token_id, *end_of_turn_ids(tok)]
        self.eos = sorted({e for e in eos if isinstance(e, int) and e >= 0 and e != tok.unk_token_id})

    def _features(self, samples: list[Any]) -> list[torch.Tensor]:
        todo = [s for s in dict((s.image_id, s) for s in samples if s.image_id not in self.features).values()]
        if todo:
            for s, f in zip(todo, self.encode_images([s.image for s in todo])):
                self.features[s.image_id] = f
            self.images_encoded += len(todo)
        for s in samples:
            self.features.move_to_end(s.image_id)
        while len(self.features) > max(self.cache_size, len(samples)):
            self.features.popitem(last=False)
        return [self.features[s.image_id] for s in samples]

    def _generate(self, prompts: list[list[int]], feats: list[torch.Tensor]) -> list[str]:
        pad = self.tok.pad_token_id
        ids, mask = left_padded(prompts, pad)
        out = self.model.generate(ids.to(self.device), mask.to(self.device), feats, max_new_tokens=int(self.p["eval"]["max_new_tokens"]),
                                  eos_token_id=self.eos, pad_token_id=pad)
        return [self.tok.decode(o, skip_special_tokens=True).strip() for o in out]

    def run(self, dataset: Any, indices: list[int], batch_size: int, progress: Any) -> tuple[list[dict], dict]:
        e = self.p["eval"]
        limit = int(self.p["max_length"]) - int(e["max_new_tokens"])
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        for lo in range(0, len(indices), batch_size):
            batch, prompts = [], []
            for i in indices[lo: lo + batch_size]:
                row: dict[str, Any] = {"index": i, "sample_id": str(i), "image_id": str(i), "question_type": "",
                                       "question": None, "answers": []}
                try:
                    m = dataset.meta(i)  # the sample without its image: the row keeps its answers if decoding fails
                    row.update(sample_id=m.sample_id, image_id=m.image_id, question_type=m.question_type,
                               answers=list(m.answers), question=question_text(m, e["prompt"]))
                    if not m.answers:
                        raise UserError(f"sample {m.sample_id} has no reference answer; fix or drop it")
                    ids = encode_prompt(self.tok, row["question"], self.n_image_tokens)
                    if len(ids) > limit:
                        raise UserError(f"prompt of {len(ids)} tokens exceeds the context ({self.p['max_length']} - "
                                        f"{e['max_new_tokens']} new tokens)")
                    s = dataset[i]
                    s.image.load()
                except UserError as exc:  # one bad sample: recorded, scored 0, the others go on
                    row.update(prediction="", score=0.0, error=str(exc))
                    rows.append(row)
                    continue
                batch.append((s, row))
                prompts.append(ids)
            if batch:
                feats = self._features([s for s, _ in batch])
                for (s, row), answer in zip(batch, self._generate(prompts, feats)):
                    row.update(prediction=answer, score=score(e["metric"], answer, s))
                    rows.append(row)
            progress.update(len(indices[lo: lo + batch_size]))
        rows.sort(key=lambda r: r["index"])
        seconds = max(time.perf_counter() - start, 1e-9)
        return rows, {"eval_samples_per_s": round(len(rows) / seconds, 3), "images_encoded": self.images_encoded}
