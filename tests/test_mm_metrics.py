"""Multimodal metrics (aimv2_eval.metrics.multimodal) against their reference definitions, on hand-computed cases."""

from __future__ import annotations

import itertools
import random
import shutil

import pytest

from aimv2_eval.errors import UserError
from aimv2_eval.metrics.multimodal import (
    CONTRACTIONS,
    PTB_PUNCTUATIONS,
    anls,
    answer_prior,
    choice_accuracy,
    cider,
    exact_match,
    extract_choice_letter,
    levenshtein,
    mme_perception,
    normalize_vqa_answer,
    ptb_tokenize,
    relaxed_accuracy,
    score_sample,
    vqa_accuracy,
    yes_no,
)

# ------------------------------------------------------------------------------------------------ VQA normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # number words -> digits
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("the cat", "cat"),  # articles dropped
        ("A Dog.", "dog"),  # lowercase, article, final period
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions restored
        ("isnt", "isn't"),
        ("wont", "won't"),
        ("1,000", "1000"),  # the comma goes, the number stays one number
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("3.", "3"),
        ("u.s.", "us"),
        ("yes!", "yes"),
        ("what?", "what"),
        ("red/blue", "red blue"),  # a mark between words becomes a space
        ("red / blue", "red blue"),  # a mark touching a space is deleted
        ("hello-world", "hello world"),
        ("(left)", "left"),
        ("man's", "man 's"),  # EvalAI's word_tokenize step
        ("  Yes\n", "yes"),
        ("two\tdogs", "2 dogs"),
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_contractions_table_is_the_reference_table() -> None:
    # 120 entries as in vqaEval.py / EvalAIAnswerProcessor, quirks included.
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["couldnt've"] == "couldn't've" and CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the reference's entry goes the other way
    assert CONTRACTIONS["Im"] == "I'm"  # capitalised keys never match after lowercasing, as in the reference
    assert normalize_vqa_answer("Im") == "im"
    assert normalize_vqa_answer("youre") == "you're" and normalize_vqa_answer("Whats") == "what's"


# ---------------------------------------------------------------------------------------------------- VQA accuracy


def _official_vqa(pred: str, answers: list[str]) -> float:
    """The official loop, over answer records that differ by id (vqaEval.py), on already normalised strings."""
    records = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    accs = []
    for gt in records:
        others = [r for r in records if r != gt]
        accs.append(min(1, len([r for r in others if r["answer"] == pred]) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_accuracy_ten_answers(k: int, expected: float) -> None:
    # k of 10 answers match: each left-out matching answer leaves k-1 others, each other one leaves k.
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)
    assert vqa_accuracy("cat", answers) == pytest.approx(_official_vqa("cat", answers))


def test_vqa_accuracy_matches_official_loop_on_random_sets() -> None:
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(["2", "3", "yes", "no"]) for _ in range(rng.randint(1, 10))]
        pred = rng.choice(["2", "3", "yes", "no", "red"])
        assert vqa_accuracy(pred, answers) == pytest.approx(_official_vqa(pred, answers))


def test_vqa_accuracy_normalises_prediction_and_disagreeing_answers() -> None:
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_accuracy("1000", ["1,000"] * 3 + ["1000"] * 7) == 1.0  # processPunctuation on disagreeing answers
    assert vqa_accuracy("A Dog", ["dog"] * 2 + ["the dog"] + ["cat"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_agreeing_answers_are_left_raw_unless_asked() -> None:
    # vqaEval.py normalises the answers only when they disagree; TextVQA / OK-VQA (lmms-eval) always do.
    assert vqa_accuracy("two", ["Two"] * 10) == 0.0
    assert vqa_accuracy("two", ["Two"] * 10, normalize_answers=True) == 1.0
    assert score_sample("vqa_accuracy_norm", "two", ["Two"] * 10) == 1.0


def test_vqa_accuracy_few_answers() -> None:
    # The formula caps n answers at min(1, (n-1)/3): one answer has no other to agree with.
    assert vqa_accuracy("cat", ["cat"]) == 0.0
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("cat", ["cat"] * 4) == 1.0
    with pytest.raises(UserError):
        vqa_accuracy("cat", [])


def test_exact_match() -> None:
    assert exact_match("The Cat.", ["cat"]) == 1.0
    assert exact_match("Yes", ["no", "yes"]) == 1.0
    assert exact_match("dog", ["cat", "kitten"]) == 0.0
    assert exact_match("two", ["2"]) == 1.0


# ------------------------------------------------------------------------------------------------------------ ANLS


def _levenshtein_brute(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(
        _levenshtein_brute(a[1:], b) + 1,
        _levenshtein_brute(a, b[1:]) + 1,
        _levenshtein_brute(a[1:], b[1:]) + (a[0] != b[0]),
    )


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    for a, b in itertools.product(["", "a", "ab", "ba", "abc", "acb", "bca", "aabb"], repeat=2):
        assert levenshtein(a, b) == levenshtein(b, a) == _levenshtein_brute(a, b)


def test_anls() -> None:
    assert anls("Hello World", ["hello world"]) == 1.0  # case-insensitive
    assert anls(" hello   world ", ["hello world"]) == pytest.approx(1.0)  # distance on collapsed strings
    assert anls("abcd", ["abcx"]) == pytest.approx(0.75)
    assert anls("abcd", ["zzzz", "abcx"]) == pytest.approx(0.75)  # best answer
    assert anls("$ 1,000", ["$1,000"]) == pytest.approx(1 - 1 / 7)
    assert anls("Dec 31, 2020", ["December 31, 2020"]) == pytest.approx(1 - 5 / 17)
    assert anls("", [""]) == 1.0


def test_anls_threshold_edge() -> None:
    assert anls("ab", ["ac"]) == 0.5  # NL == 0.5: the official script keeps it
    assert anls("abc", ["axy"]) == 0.0  # NL = 2/3
    assert anls("abcde", ["abxyz"]) == 0.0  # NL = 0.6
    assert anls("abcd", ["abcx"], threshold=0.3) == pytest.approx(0.75)
    assert anls("abcd", ["abxy"], threshold=0.3) == 0.0


def test_anls_divides_by_raw_length() -> None:
    # The script's distance is on stripped strings, its length on the raw ones: trailing spaces lower NL.
    assert anls("ab  ", ["ac"]) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ relaxed accuracy


@pytest.mark.parametrize(
    "pred, answer, expected",
    [
        ("104.9", "100", 1.0),  # 4.9% in
        ("105.1", "100", 0.0),  # 5.1% out
        ("95.1", "100", 1.0),
        ("94.9", "100", 0.0),
        ("105", "100", 1.0),  # exactly 5%
        ("12%", "12%", 1.0),
        ("12%", "0.12", 1.0),  # "%" divides by 100
        ("12%", "12", 0.0),  # ... so it does not match a plain 12 (pix2struct)
        ("1,234", "1234", 1.0),  # thousands separators
        ("1,234", "1300", 0.0),  # 5.08% off
        ("0.0", "0", 0.0),  # a zero answer is compared as text
        ("0", "0", 1.0),
        ("Apple", "apple", 1.0),
        ("Apples", "apple", 0.0),
    ],
)
def test_relaxed_accuracy(pred: str, answer: str, expected: float) -> None:
    assert relaxed_accuracy(pred, [answer]) == expected


def test_relaxed_accuracy_any_answer() -> None:
    assert relaxed_accuracy("10", ["20", "10.4"]) == 1.0
    assert relaxed_accuracy("10", ["20", "11"]) == 0.0


# ---------------------------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    "pred", ["B", "b", "B.", "(B)", "B) cat", "B. cat", "B: cat", "The answer is B.", "The answer is (B)", "Answer: B"]
)
def test_extract_choice_letter(pred: str) -> None:
    assert extract_choice_letter(pred, 4) == "B"


@pytest.mark.parametrize("pred", ["A cat", "E", "(E)", "I don't know", "", "Bob.", "The answer is Apple"])
def test_extract_choice_letter_none(pred: str) -> None:
    assert extract_choice_letter(pred, 4) is None


def test_choice_accuracy() -> None:
    assert choice_accuracy("(C)", ["C"], 4) == 1.0
    assert choice_accuracy("C", ["B"], 4) == 0.0
    assert choice_accuracy("D", ["D"], 3) == 0.0  # not an option
    with pytest.raises(UserError):
        choice_accuracy("A", ["A"], 0)


# ------------------------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    "pred, expected",
    [("Yes", "yes"), ("No.", "no"), ("yes, there is", "yes"), ("  YES.  ", "yes"), ("y", "yes"), ("N", "no")]
    + [("Not really", "no"), ("There is a dog", None), ("maybe", None), ("", None)],
)
def test_yes_no(pred: str, expected: str | None) -> None:
    assert yes_no(pred) == expected


def _rows(subtask: str, image: str, *marks: bool) -> list[dict]:
    return [{"subtask": subtask, "image_id": image, "correct": m} for m in marks]


def test_mme_perception_hand_computed() -> None:
    rows = (
        _rows("existence", "e1", True, True)
        + _rows("existence", "e2", True, False)  # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125
        + _rows("count", "c1", False, False)
        + _rows("count", "c2", True, True)
        + _rows("count", "c3", False, True)  # count: acc 3/6 = 50, acc+ 1/3 -> 83.33
        + _rows("ocr", "o1", True, True)  # OCR (any case): 200
        + _rows("commonsense_reasoning", "r1", True, True)  # cognition: scored, not in the perception total
    )
    out = mme_perception(rows)
    assert out["subtasks"]["existence"] == pytest.approx(125.0)
    assert out["subtasks"]["count"] == pytest.approx(50 + 100 / 3)
    assert out["subtasks"]["OCR"] == 200.0
    assert out["subtasks"]["commonsense_reasoning"] == 200.0
    assert out["mme_perception"] == pytest.approx(125 + 50 + 100 / 3 + 200)


def test_mme_perception_perfect_is_2000() -> None:
    names = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"]
    rows = [r for name in names for i in range(3) for r in _rows(name, f"{name}{i}", True, True)]
    assert mme_perception(rows)["mme_perception"] == 2000.0


def test_mme_perception_bad_rows() -> None:
    with pytest.raises(UserError, match="unknown MME subtask"):
        mme_perception(_rows("colour", "x", True, True))
    with pytest.raises(UserError, match="exactly 2"):
        mme_perception(_rows("color", "x", True))


# ----------------------------------------------------------------------------------------------------------- CIDEr

# Written by hand from PTB rules (and checked against Stanford's PTBTokenizer 3.4.1 as pycocoevalcap runs it).
PTB_CASES = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "A man's dog, running (fast) on the beach.": "a man 's dog running -lrb- fast -rrb- on the beach",
    'Two dogs don\'t play with a "frisbee"!': "two dogs do n't play with a frisbee",
    "A black-and-white cat; sitting... near 1,000 3.5 U.S. flags?": "a black-and-white cat sitting near 1,000 3.5 u.s. flags",
    "The clock reads 3:30, and the price is $4.99 (50% off).": "the clock reads 3:30 and the price is $ 4.99 -lrb- 50 % off -rrb-",
    "I can't believe it's Mr. Smith's car -- wow!": "i ca n't believe it 's mr. smith 's car wow",
    "Kids' toys & games": "kids toys & games",
    "A sign: 'No Parking' here": "a sign no parking here",
}

# Typical COCO / TextCaps / NoCaps captions, for the comparison with the Java tokenizer where Java is installed.
REALISTIC = [
    "Two dogs playing with a frisbee in the grass.",
    "A kitchen with stainless steel appliances and granite counter tops.",
    "a group of people standing around a table with food on it",
    "A close-up of a pizza with pepperoni, mushrooms, and olives.",
    "The image shows a red double-decker bus parked on a city street.",
    'A bottle of "Coca-Cola" sits next to a glass of ice.',
    'A sign that says "STOP" at the corner of Main St. and 5th Ave.',
    "A book titled 'The Great Gatsby' by F. Scott Fitzgerald.",
    "A man's hand holding an iPhone that displays the time 10:45.",
    "A can of Pepsi (12 fl oz) on a wooden table.",
    "A woman\u2019s shirt says \u201cI \u2665 NY\u201d in bold letters.",
    'Children\'s books on a shelf; one is titled "Goodnight Moon".',
    "An airplane flying over a mountain range -- snow on the peaks.",
    "A bag of chips that's 50% off!",
    'The cover of a magazine with the headline "What\'s Next?"',
    "A box of 1,000 staples next to a stapler.",
    'A bus with the destination "Downtown / Airport" displayed.',
    "Someone's holding a phone with a cracked screen...",
    "A vintage car (a 1965 Ford Mustang) parked outside.",
    'A poster that reads: "Don\'t forget to vote!"',
    'The menu lists "Burger - $8.50" and "Fries - $3.00".',
    "A toddler can't reach the cookie jar on the counter.",
    "They're here, aren't they? I'd've gone.",
]


def test_ptb_punctuation_list_is_pycocoevalcaps() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    assert PTB_PUNCTUATIONS == PUNCTUATIONS


@pytest.mark.parametrize("caption", list(PTB_CASES))
def test_ptb_tokenize_hand_written(caption: str) -> None:
    assert ptb_tokenize(caption) == PTB_CASES[caption].split()


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTBTokenizer needs Java")
def test_ptb_tokenize_matches_stanford_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = list(PTB_CASES) + REALISTIC
    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert [" ".join(ptb_tokenize(c)) for c in captions] == [out[i][0] for i in range(len(captions))]


REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean."],
    "2": ["Two dogs playing with a frisbee in the grass.", "A pair of dogs chase a frisbee on a lawn."],
    "3": ["A kitchen with stainless steel appliances.", "A clean kitchen with a steel fridge and an oven."],
}


def test_cider_equals_pycocoevalcap_on_ptb_tokens() -> None:
    from pycocoevalcap.cider.cider import Cider

    preds = {
        "1": "A man's riding a wave (on a surfboard).",
        "2": "Dogs don't play, they chase a frisbee!",
        "3": "A kitchen.",
    }
    # The same inputs, tokenised by hand as PTBTokenizer outputs them.
    res = {"1": ["a man 's riding a wave -lrb- on a surfboard -rrb-"], "2": ["dogs do n't play they chase a frisbee"]}
    res["3"] = ["a kitchen"]
    gts = {
        "1": ["a man riding a wave on top of a surfboard", "a surfer rides a large wave in the ocean"],
        "2": ["two dogs playing with a frisbee in the grass", "a pair of dogs chase a frisbee on a lawn"],
        "3": ["a kitchen with stainless steel appliances", "a clean kitchen with a steel fridge and an oven"],
    }
    expected, _ = Cider().compute_score(gts, res)
    assert expected > 0
    assert cider(preds, REFS) == pytest.approx(100 * expected)


def test_cider_sanity() -> None:
    good = {k: v[0] for k, v in REFS.items()}
    bad = {k: "a purple elephant juggling violins" for k in REFS}
    assert cider(good, REFS) > cider(bad, REFS)
    assert cider(bad, REFS) == 0.0
    # idf comes from the corpus: with one image every n-gram has document frequency 1 and weight log(1/1) = 0.
    assert cider({"1": REFS["1"][0]}, {"1": REFS["1"]}) == 0.0


def test_cider_bad_input() -> None:
    with pytest.raises(UserError, match="same images"):
        cider({"1": "a"}, {"2": ["a"]})
    with pytest.raises(UserError, match="no reference"):
        cider({"1": "a"}, {"1": []})


# ----------------------------------------------------------------------------------------- dispatch and the prior


def test_score_sample_dispatch() -> None:
    answers = ["cat"] * 3 + ["dog"] * 7
    assert score_sample("vqa_accuracy", "cat", answers) == vqa_accuracy("cat", answers) == pytest.approx(0.9)
    assert score_sample("exact_match", "Cat.", ["cat"]) == 1.0
    assert score_sample("anls", "abcd", ["abcx"]) == pytest.approx(0.75)
    assert score_sample("relaxed_accuracy", "104.9", ["100"]) == 1.0
    assert score_sample("choice_accuracy", "(B)", ["B"], n_choices=4) == 1.0
    with pytest.raises(UserError, match="n_choices"):
        score_sample("choice_accuracy", "B", ["B"])
    with pytest.raises(UserError, match="known: vqa_accuracy, vqa_accuracy_norm, exact_match, anls"):
        score_sample("bleu", "a", ["a"])


def test_answer_prior() -> None:
    train = [("what color", "red"), ("what color", "blue"), ("what color", "red")]
    train += [("how many", "3"), ("how many", "2")]  # a tie: alphabetical
    train += [("is this", "yes"), ("is this", "no"), ("is this", "yes"), ("is this", "yes")]
    assert answer_prior(train) == {"what color": "red", "how many": "2", "is this": "yes", "*": "yes"}
    with pytest.raises(UserError):
        answer_prior([])
