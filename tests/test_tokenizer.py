"""Caption tokenizers: CLIP BPE offline, compact vocabularies, sentencepiece; padding as `text_mask` expects."""

import pytest
import torch

from aimv2_eval.core.objective import text_mask
from aimv2_eval.data.scenes import SceneDataset
from aimv2_eval.data.tokenizer import (
    ClipTokenizer,
    CompactVocab,
    SentencePieceTokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from aimv2_eval.errors import UserError

CAPTIONS = ["the small red circle left of the square", "a photo of a dog"]


@pytest.fixture(scope="module")
def clip():
    return ClipTokenizer()


def test_clip_layout_and_text_mask(clip):
    ids = clip(CAPTIONS)
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert clip.vocab_size == 49408 and clip.eot_id == 49407 and (ids[:, 0] == 49406).all()
    mask = text_mask(ids, clip.eot_id)
    for row, m in zip(ids, mask):
        end = int((row == clip.eot_id).nonzero()[0])
        assert m[: end + 1].all() and not m[end + 1 :].any()  # caption + EOT kept, padding dropped
        assert (row[end + 1 :] == clip.pad_id).all()
    assert clip.decode(ids[0].tolist()) == CAPTIONS[0]


def test_clip_truncates_to_context_and_ends_in_eot():
    tok = ClipTokenizer(context_length=16)
    ids = tok(" ".join(["word"] * 40))
    assert ids.shape == (1, 16) and ids[0, -1] == tok.eot_id
    assert text_mask(ids, tok.eot_id).all()


def test_compact_vocab_round_trip(tmp_path, clip):
    ds = SceneDataset(200, seed=0, image_size=32)
    caps = [ds[i].caption for i in range(200)]
    tok = CompactVocab.from_texts(clip, caps)
    assert 30 < tok.vocab_size < 300
    ids = tok(caps[:5])
    assert ids.max() < tok.vocab_size and ids.shape == (5, 77)
    assert [tok.decode(r.tolist()) for r in ids] == [clip.decode(r.tolist()) for r in clip(caps[:5])]
    # EOT and padding line up with the base tokenizer's
    assert torch.equal(text_mask(ids, tok.eot_id), text_mask(clip(caps[:5]), clip.eot_id))
    unk = tok("zebra xylophone")[0]
    assert (unk == tok.unk_id).any()
    again = load_tokenizer(save_tokenizer(tok, tmp_path / "tok.json"))
    assert torch.equal(again(caps[:5]), ids) and again.vocab_size == tok.vocab_size


def test_sentencepiece_tokenizer_siglip_convention(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    ds = SceneDataset(300, seed=0, image_size=32)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(ds[i].caption for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=80,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = build_tokenizer({"kind": "sentencepiece", "source": str(tmp_path / "sp.model"), "context_length": 32})
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 80 and tok.eot_id == 1
    ids = tok(["The small, red circle!", "a dog"])
    assert ids.shape == (2, 32)
    first_eot = (ids == tok.eot_id).int().argmax(1)
    assert (first_eot > 0).all()
    assert text_mask(ids, tok.eot_id).sum(1).tolist() == (first_eot + 1).tolist()
    assert tok.decode(ids[0].tolist()) == "the small red circle"  # canonicalised: lower case, no punctuation
    with pytest.raises(UserError, match="no sentencepiece model"):
        SentencePieceTokenizer(str(tmp_path))  # a directory without spiece.model / tokenizer.model


def test_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        build_tokenizer("wordpiece")
    with pytest.raises(UserError, match="needs source"):
        build_tokenizer({"kind": "sentencepiece"})
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
