"""Conversations -> token ids through the LM's chat template, with the image placeholder expanded to the number of
image tokens and labels only on the assistant's answers (LLaVA's loss masking).

The template is rendered at every turn boundary and the text is tokenized piece by piece (prompt piece, answer
piece, ...), so that the answer spans are exact whatever the tokenizer; a template whose renderings are not
prefixes of each other cannot be split this way and is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from aimv2_eval.plugins.llava.model import IGNORE_INDEX, IMAGE_TOKEN_ID

IMAGE_MARK = "<image>"


def _messages(turns: list[tuple[str, str]], has_image: bool) -> list[dict[str, str]]:
    msgs = []
    for k, (user, assistant) in enumerate(turns):
        msgs.append({"role": "user", "content": (f"{IMAGE_MARK}\n{user}" if k == 0 and has_image else user)})
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


def _render(tok: Any, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tok: Any, text: str, n_image_tokens: int) -> list[int]:
    parts = text.split(IMAGE_MARK)
    ids: list[int] = []
    for k, part in enumerate(parts):
        if k:
            ids += [IMAGE_TOKEN_ID] * n_image_tokens
        if part:
            ids += tok(part, add_special_tokens=False)["input_ids"]
    return ids


def encode_conversation(tok: Any, turns: list[tuple[str, str]], n_image_tokens: int, has_image: bool
                        ) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a training conversation; labels are IGNORE_INDEX except on answer tokens (which
    include the template's end-of-turn token, so the model learns to stop)."""
    msgs = _messages(turns, has_image)
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k in range(len(turns)):
        prompt = _render(tok, msgs[: 2 * k + 1], True)
        full = _render(tok, msgs[: 2 * k + 2], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the chat template's renderings are not prefixes of each other; use another template")
        p = _ids(tok, prompt[len(done):], n_image_tokens)
        a = _ids(tok, full[len(prompt):], 0)
        ids += p + a
        labels += [IGNORE_INDEX] * len(p) + a
        done = full
    return ids, labels


def encode_prompt(tok: Any, question: str, n_image_tokens: int) -> list[int]:
    """The ids of a one-turn prompt (with the image) ending where the assistant's answer starts."""
    msgs = _messages([(question, "")], True)[:1]
    return _ids(tok, _render(tok, msgs, True), n_image_tokens)


def end_of_turn_ids(tok: Any) -> list[int]:
    """The ids the template closes an empty assistant turn with (special tokens only): generation stops there."""
    msgs = _messages([("?", "")], False)
    prompt, full = _render(tok, msgs[:1], True), _render(tok, msgs, False)
    ids = _ids(tok, full[len(prompt):], 0) if full.startswith(prompt) else []
    return [i for i in ids if i in set(tok.all_special_ids)]


def pad(seqs: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """(B, longest) ids, padded on the right (training) or on the left (generation continues every row's end)."""
    n = max(len(q) for q in seqs)
    return torch.tensor([[value] * (n - len(q)) + q if left else q + [value] * (n - len(q)) for q in seqs])


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for batched generation: (ids, attention mask), both left-padded."""
    return pad(prompts, pad_id, left=True), pad([[1] * len(q) for q in prompts], 0, left=True)
