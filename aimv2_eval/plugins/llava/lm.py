"""The language model of a LLaVA cell: any `transformers` causal LM from a hub id or a local folder (Llama-3-8B for
the paper cells), or, for the embedded task, a small Llama built from a config with a word-level tokenizer over the
training texts (no LM ships offline).

Chat templates: `chat_template: tokenizer` uses the tokenizer's own (an error when it has none); `llama3` is
Llama-3-Instruct's format (the base Llama-3-8B tokenizer has no template; LLaVA-style Llama-3 training uses this
one); any other string is a Jinja template.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from aimv2_eval.errors import UserError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
WORD_TEMPLATE = (  # the embedded word-level tokenizer's format: role tags and an end-of-turn token it stops at
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)
WORD_SPECIALS = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def word_tokenizer(texts: list[str], min_count: int = 1) -> Any:
    """A word-level `PreTrainedTokenizerFast` over `texts` (words and punctuation; unseen words -> <unk>) with the
    embedded chat template; its end-of-turn token is the eos generation stops at."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts: dict[str, int] = {}
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]+", t.lower()):
            counts[w] = counts.get(w, 0) + 1
    words = sorted(w for w, c in counts.items() if c >= min_count)
    vocab = {w: i for i, w in enumerate([*WORD_SPECIALS, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers import normalizers

    core.normalizer = normalizers.Lowercase()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|end|>",
                                  additional_special_tokens=WORD_SPECIALS[3:])
    tok.chat_template = WORD_TEMPLATE
    return tok


def _check_local_folder(path: Path) -> None:
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise UserError(f"LM folder {path} lacks {', '.join(missing)}; save it with save_pretrained(model and tokenizer)")


def set_chat_template(tok: Any, template: str, name: str) -> None:
    if template == "tokenizer":
        if not getattr(tok, "chat_template", None):
            raise UserError(f"the tokenizer of {name} has no chat template; set protocol.lm.chat_template to "
                            "llama3 or a Jinja template")
        return
    tok.chat_template = LLAMA3_TEMPLATE if template == "llama3" else template


def load_pretrained_lm(source: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder or a hub id; missing files and offline hubs are one-line errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(source).expanduser()
    if path.exists():
        _check_local_folder(path)
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else source)
        # fp32 master weights; bf16 comes from autocast (--precision bf16), as mixed-precision LLaVA training does
        lm = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else source, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"cannot load the LM {source!r} ({str(e).splitlines()[0]}); give a local folder saved with "
                        "save_pretrained, or run where the hub is reachable") from None
    if tok.pad_token is None:  # Llama-3 has none: pad with eos (padding positions are masked out anyway)
        tok.pad_token = tok.eos_token
    return lm, tok


def build_config_lm(config: dict[str, Any], tok: Any, seed: int) -> Any:
    """A randomly initialised Llama of the given size (the embedded LM), its vocabulary from `tok`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=None, **config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)
