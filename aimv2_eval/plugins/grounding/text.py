"""Prompts and token-level targets for grounding, as MM-Grounding-DINO builds them.

- A detection prompt joins class names with " . " ("red circle . blue square ."); each class's phrase is its char
  span. REC: the expression itself, one phrase covering it.
- Captions are tokenised by the text encoder's fast tokenizer (BERT-like, with char offsets), at most `max_tokens`
  (256) tokens; longer captions are truncated and a phrase that loses all its tokens is an error, not a silent miss.
- Sub-sentence representation (MM-Grounding-DINO's `use_sub_sentence_represent`): the text self-attention mask lets
  a token see only its own phrase (the tokens up to and including the next '.', '?', [SEP]), and positions restart
  at 0 in every phrase, so class names in one prompt do not colour each other and their order does not matter.
- A phrase's positive map marks its tokens; a box's target is the union of its phrases' maps.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aimv2_eval.errors import UserError

SEPARATOR = " . "
NOT_BERT = "grounding needs a BERT-like text encoder with a fast tokenizer"
SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")  # MM-Grounding-DINO's special_tokens_list
Span = tuple[int, int]


def detection_prompt(names: Sequence[str]) -> tuple[str, list[list[Span]]]:
    """"a . b . c ." and each name's char span."""
    caption, spans = "", []
    for name in names:
        name = name.strip()
        if not name:
            raise UserError("a category name is empty; every class needs a name for its prompt")
        spans.append([(len(caption), len(caption) + len(name))])
        caption += name + SEPARATOR
    if not spans:
        raise UserError("the category list is empty; a detection prompt needs at least one class name")
    return caption.rstrip(), spans


def chunks(n: int, size: int) -> list[list[int]]:
    """Class indices in chunks of `size` (MM-Grounding-DINO prompts LVIS's 1,203 names 40 at a time and merges)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def require_fast_tokenizer(encoder: object, special_tokens: Sequence[str] = ()) -> object:
    """The encoder's tokenizer, or one UserError line unless it is a transformers BERT-like encoder: a fast tokenizer
    (character spans map to tokens), a forward taking position and token-type ids (the sub-sentence
    representation), and a vocabulary holding `special_tokens`."""
    model, tok = getattr(encoder, "model", None), getattr(encoder, "hf_tokenizer", None)
    params = inspect.signature(model.forward).parameters if model is not None else {}
    if tok is None or not getattr(tok, "is_fast", False) or not {"position_ids", "token_type_ids"} <= set(params):
        raise UserError(f"{NOT_BERT} (char offsets), e.g. minilm, bert-base-uncased or hf:<folder>")
    missing = [t for t in special_tokens if t not in tok.get_vocab()]
    if missing:
        raise UserError(f"{NOT_BERT} (its vocabulary lacks {', '.join(missing)})")
    return tok


@dataclass
class Tokens:
    input_ids: torch.Tensor  # (B, L)
    token_type_ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) bool: real tokens
    offsets: torch.Tensor  # (B, L, 2) char span of each token ((0, 0) for special and padding tokens)
    self_attention: torch.Tensor  # (B, L, L) bool: sub-sentence mask
    position_ids: torch.Tensor  # (B, L) restarting at every phrase

    def to(self, device: torch.device) -> Tokens:
        return Tokens(*(t.to(device) for t in (self.input_ids, self.token_type_ids, self.mask, self.offsets,
                                                self.self_attention, self.position_ids)))


def sub_sentence_mask(input_ids: torch.Tensor, special_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, L) attention mask and (B, L) position ids of the sub-sentence representation: a phrase is the run of
    tokens after one special token up to and including the next; a special token in the first or last column stands
    alone (GroundingDINO's `generate_masks_with_special_tokens_and_transfer_map`)."""
    b, length = input_ids.shape
    attention = torch.eye(length, dtype=torch.bool).repeat(b, 1, 1)
    positions = torch.zeros(b, length, dtype=torch.long)
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    for row in range(b):
        previous = 0
        for col in special[row].nonzero().flatten().tolist():
            if 0 < col < length - 1:
                attention[row, previous + 1 : col + 1, previous + 1 : col + 1] = True
                positions[row, previous + 1 : col + 1] = torch.arange(col - previous)
            previous = col
    return attention, positions


def tokenize(encoder: object, captions: Sequence[str], max_tokens: int = 256) -> Tokens:
    tok = encoder.hf_tokenizer  # checked once by the engine (require_fast_tokenizer), not on every step
    out = tok(list(captions), padding="longest", truncation=True, max_length=max_tokens,
              return_offsets_mapping=True, return_tensors="pt")
    special_ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    attention, positions = sub_sentence_mask(out["input_ids"], special_ids)
    return Tokens(out["input_ids"], out.get("token_type_ids", torch.zeros_like(out["input_ids"])),
                  out["attention_mask"].bool(), out["offset_mapping"], attention, positions)


def encode(encoder: torch.nn.Module, tokens: Tokens) -> torch.Tensor:
    """Per-token features (B, L, D) of a BERT-like encoder under the sub-sentence mask. The mask goes in as a 4-D
    additive float mask with explicit position ids: transformers 5 takes that form as given (a 3-D boolean mask is
    what trips its masking utilities in mmdet's BERT wrapper)."""
    return bert_features(encoder.model, tokens.input_ids, tokens.token_type_ids,
                         tokens.self_attention & tokens.mask[:, None, :], tokens.position_ids)


def bert_features(model: torch.nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                  allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """A transformers BERT's last hidden state with a (B, L, L) boolean attention mask (True = may attend)."""
    dtype = next(model.parameters()).dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    additive = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    out = model(input_ids=input_ids, attention_mask=additive, token_type_ids=token_type_ids,
                position_ids=position_ids)
    return out.last_hidden_state


def phrase_maps(tokens: Tokens, row: int, phrases: Sequence[Sequence[Span]], what: str = "phrase") -> torch.Tensor:
    """(K, L) float 0/1: for each phrase (a list of char spans), the tokens that overlap one of its spans."""
    offsets = tokens.offsets[row]
    real = tokens.mask[row] & (offsets[:, 1] > offsets[:, 0])
    out = torch.zeros(len(phrases), offsets.shape[0])
    for k, spans in enumerate(phrases):
        for start, end in spans:
            hit = real & (offsets[:, 0] < end) & (offsets[:, 1] > start)
            out[k] = torch.maximum(out[k], hit.float())
        if not out[k].any():
            raise UserError(f"{what} {k} ({spans}) has no token within the text encoder's first "
                            f"{offsets.shape[0]} tokens; shorten the prompt or raise protocol.max_text_len")
    return out
