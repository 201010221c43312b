"""Metrics of the LLaVA-style instruction-tuning evaluation (paper Table C2), each equal to its reference code.

Per-sample scores are in [0, 1] (the plugin averages them and reports percent); the MME score and CIDEr are
corpus-level, in the units the paper prints (MME-p out of 2000, CIDEr x 100). References: the VQA evaluation
(`vqaEval.py`, as lmms-eval's `EvalAIAnswerProcessor` and its vqav2/textvqa/ok_vqa tasks run it), the DocVQA /
InfographicVQA RRC evaluation script (ANLS), pix2struct's `relaxed_correctness` (ChartQA), MME's `calculation.py`
as lmms-eval runs it, and pycocoevalcap's CIDEr-D.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from aimv2_eval.errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# VQA answer normalisation (EvalAIAnswerProcessor). It differs from the original vqaEval.py in three details that
# lmms-eval inherited from EvalAI/pythia: a first "word_tokenize" step (lowercase, drop "," and "?", "'s" -> " 's"),
# a punctuation list with "-", "!", "{", "}" but without ":" and "'", and ASCII apostrophes in the contractions.
# ---------------------------------------------------------------------------------------------------------------

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = dict(
    zip("none zero one two three four five six seven eight nine ten".split(), "0 0 1 2 3 4 5 6 7 8 9 10".split())
)
ARTICLES = frozenset({"a", "an", "the"})
VQA_PUNCTUATION = list(';/[]"{}()=+\\_-><@`,?!')  # one character each, in the reference's order
# "(?!<=\d)" is the reference's typo for a lookbehind: it never fires, so every period not followed by a digit goes.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _process_punctuation(text: str) -> str:
    """processPunctuation: a mark touching a space (or any text with a digit comma) is deleted, else spaced."""
    out = text
    for p in VQA_PUNCTUATION:
        if p + " " in text or " " + p in text or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The reference passes re.UNICODE (32) where sub() takes its count: at most 32 periods are stripped.
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def _process_digit_article(text: str) -> str:
    """processDigitArticle: lowercase, number words -> digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation, as lmms-eval's EvalAIAnswerProcessor.__call__ applies it."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def _check_answers(answers: list[str]) -> None:
    if not answers:
        raise UserError("a sample has no reference answers: every question needs at least one")


def vqa_accuracy(prediction: str, answers: list[str], normalize_answers: bool = False) -> float:
    """VQAv2 accuracy (vqaEval.py): mean over each answer left out of min(1, #others equal to the prediction / 3).

    With 10 answers of which k equal the prediction: k=0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0. The best
    score with n answers is min(1, (n - 1) / 3): a single answer always scores 0 (nothing is left to agree with), so
    single-answer datasets take `exact_match`. Answers are normalised as the official code does, only when they
    disagree (lmms-eval's vqav2 task); `normalize_answers=True` normalises every answer as lmms-eval's textvqa and
    ok_vqa tasks do (the two agree whenever the answers are already normalised).
    """
    _check_answers(answers)
    pred = normalize_vqa_answer(prediction)
    if normalize_answers:
        gts = [normalize_vqa_answer(a) for a in answers]
    else:
        gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
        if len(set(gts)) > 1:
            gts = [_process_digit_article(_process_punctuation(a)) for a in gts]
            pred = _process_digit_article(_process_punctuation(pred))
    hits = sum(g == pred for g in gts)
    # Leaving out answer i leaves hits - (gts[i] == pred) matches among the others (by position, not by value).
    return sum(min(1.0, (hits - (g == pred)) / 3) for g in gts) / len(gts)


def exact_match(prediction: str, answers: list[str]) -> float:
    """GQA accuracy: 1 if the normalised prediction equals any normalised answer."""
    _check_answers(answers)
    return float(normalize_vqa_answer(prediction) in {normalize_vqa_answer(a) for a in answers})


# ---------------------------------------------------------------------------------------------------------------
# ANLS (DocVQA, InfographicVQA) and relaxed accuracy (ChartQA)
# ---------------------------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """ANLS of one question (DocVQA RRC script): max over answers of 1 - NL, 0 where NL exceeds the threshold.

    As the official script: the distance is taken on lowercased, stripped, whitespace-collapsed strings but divided by
    the longer of the raw strings, and a similarity of exactly 1 - threshold is kept (NL == 0.5 scores 0.5; the
    paper's formula would give 0 there).
    """
    _check_answers(answers)
    pred = " ".join(prediction.strip().lower().split())
    nls = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        nls.append(0.0 if length == 0 else levenshtein(" ".join(answer.strip().lower().split()), pred) / length)
    score = 1.0 - min(nls)
    return score if score >= 1.0 - threshold else 0.0


_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?%*")


def _to_float(text: str) -> float | None:
    """pix2struct's _to_float: "12%" -> 0.12; plus thousands separators ("1,234"), which pix2struct leaves as text."""
    if _THOUSANDS.fullmatch(text.strip()):
        text = text.replace(",", "")
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers: list[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy (pix2struct): within 5% relative error of a numeric answer, else equal ignoring case.

    As the reference: a percent sign divides by 100 on either side ("12%" matches "0.12" and "12%", not "12"), and a
    zero answer is compared as text.
    """
    _check_answers(answers)
    pred = _to_float(prediction)
    for answer in answers:
        target = _to_float(answer)
        if pred is not None and target:
            if abs(pred - target) / abs(target) <= tolerance:
                return 1.0
        elif prediction.lower() == answer.lower():
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice (ScienceQA, SEED) and yes/no (MME)
# ---------------------------------------------------------------------------------------------------------------

_LEADING_LETTER = re.compile(r"\(?([A-Z])[.):]")
_ANSWER_IS = re.compile(r"(?i:answer)(?: (?i:is))?\s*:?\s*\(?([A-Z])\b")


def extract_choice_letter(prediction: str, n_choices: int) -> str | None:
    """The option letter a model answered: "B", "b", "B.", "(B)", "B) cat", "The answer is B." -> "B"; else None.

    A superset of the parsing of LLaVA's eval_science_qa.py and lmms-eval's scienceqa task. A letter must open the
    answer with a delimiter (so "A cat" is not option A) or follow "answer is"; letters past n_choices are None.
    """
    if not 1 <= n_choices <= 26:
        raise UserError(f"n_choices must be between 1 and 26, got {n_choices}")
    valid = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_choices]
    text = prediction.strip()
    if len(text.rstrip(".")) == 1:
        letter: str | None = text[0].upper()
    elif m := _LEADING_LETTER.match(text) or _ANSWER_IS.search(text):
        letter = m[1]
    else:
        letter = None
    return letter if letter is not None and letter in valid else None


def choice_accuracy(prediction: str, answers: list[str], n_choices: int) -> float:
    """ScienceQA / SEED accuracy: 1 if the extracted letter is the answer letter answers[0]."""
    _check_answers(answers)
    return float(extract_choice_letter(prediction, n_choices) == answers[0].strip().upper())


def yes_no(prediction: str) -> str | None:
    """MME's reading of an answer (lmms-eval's parse_pred_ans): "yes", "no", or None when neither."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text)
    # "yes" before "no" in the first 4 characters, as the reference ("Not" and "None" read as "no").
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else None


MME_PERCEPTION = tuple("existence count position color posters celebrity scene landmark artwork OCR".split())
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_MME_NAMES = {name.lower(): name for name in MME_PERCEPTION + MME_COGNITION}


def mme_perception(rows: list[dict]) -> dict:
    """MME scores (calculation.py): per subtask acc + acc+ (% questions, % images with both right), each of 100.

    rows: {"subtask", "image_id", "correct"}, two questions per image as MME has. "mme_perception" sums the
    perception subtasks present (2000 with all ten); "subtasks" scores every subtask present, cognition included.
    """
    images: dict[str, dict[object, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        name = _MME_NAMES.get(str(row["subtask"]).lower())
        if name is None:
            raise UserError(f"unknown MME subtask {row['subtask']!r}; known: {', '.join(_MME_NAMES.values())}")
        images[name][row["image_id"]].append(bool(row["correct"]))
    subtasks = {}
    for name, per_image in images.items():
        if any(len(marks) != 2 for marks in per_image.values()):
            raise UserError(f"MME subtask {name} has an image without exactly 2 questions: MME scores them in pairs")
        acc = 100.0 * sum(sum(m) for m in per_image.values()) / (2 * len(per_image))
        acc_plus = 100.0 * sum(all(m) for m in per_image.values()) / len(per_image)
        subtasks[name] = acc + acc_plus
    total = sum(score for name, score in subtasks.items() if name in MME_PERCEPTION)
    return {"mme_perception": total, "subtasks": subtasks}


# ---------------------------------------------------------------------------------------------------------------
# CIDEr (COCO, TextCaps, NoCaps)
# ---------------------------------------------------------------------------------------------------------------

# pycocoevalcap's PTBTokenizer.PUNCTUATIONS: the tokens it drops. It compares them after lowercasing, so the
# uppercase bracket escapes never match and "(" survives as "-lrb-" (we reproduce that).
PTB_PUNCTUATIONS = "'' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ;".split()
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
_BRACKET_TOKENS = frozenset(token.strip() for token in _BRACKETS.values())
_UNICODE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a3": "#", "\u20ac": "$"})
_DROPPED = re.compile(r'"|\.\.\.+|\u2026|--+|;|(?<!\d),|,(?!\d)|(?<!\d):(?!//)|:(?![\d/])')
# The common ones of PTBLexer's abbreviation classes (titles, street and company suffixes), whose period stays.
_ABBREVIATIONS = frozenset("mr mrs ms dr drs prof gen col lt sgt capt rev hon st ste ave blvd rd mt jr sr co cos corp inc "
                           "ltd dept univ vs etc fig".split())  # fmt: skip
_CLITIC = re.compile(r"(.+?)(n't|'s|'m|'re|'ve|'ll|'d)")
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"]}


def _ptb_word(word: str) -> list[str]:
    """Split one whitespace-separated chunk as PTBTokenizer does: quotes, $ #, trailing marks, clitics."""
    head: list[str] = []
    tail: list[str] = []
    if word in _BRACKET_TOKENS:
        return [word]
    if word in ("'tis", "'twas"):
        return ["'t", word[2:]]
    while len(word) > 1 and word[0] in "`'$#" and word not in ("'s", "'m", "'d", "'n'"):
        if word[0] == "'" and word[1].isdigit():  # "'90s" is one token
            break
        head += [word[0]] if word[0] in "$#" else []
        word = word[1:]
    while word and word != "'n'":
        if word[-1] in "'`-%$":
            tail.insert(0, word[-1])
            word = word[:-1]
        elif word[-1] in "!?":
            run = len(word) - len(word.rstrip("!?"))
            tail.insert(0, word[-run:])  # PTB keeps a run ("?!") as one token; a single mark is dropped
            word = word[:-run]
        elif word[-1] == "." and not (re.fullmatch(r"([a-z]\.)+", word) or word[:-1] in _ABBREVIATIONS):
            tail.insert(0, ".")
            word = word[:-1]
        else:
            break
    clitics: list[str] = []
    while m := _CLITIC.fullmatch(word):
        word, clitics = m[1], [m[2], *clitics]
    return head + _SPLIT_WORDS.get(word, [word] if word else []) + clitics + tail


def ptb_tokenize(caption: str) -> list[str]:
    """The tokens pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer -lowerCase, punctuation dropped) outputs.

    pycocoevalcap runs Stanford's Java tokenizer, which the harness does not require; this reimplements it for
    caption text: lowercase, clitics split ("do n't", "man 's"), brackets as -lrb- etc., "$ 5", "50 %", hyphenated
    words, numbers ("1,000", "3.5", "5:30") and abbreviations ("u.s.", "mr.") kept, PTB_PUNCTUATIONS dropped.
    Known differences, rare in captions: PTB's full abbreviation rules ("no. 5" keeps its period), "12:00pm" ->
    "12:00 pm", "y'all" -> "y' all", "rock'n'roll" -> "rock 'n' roll".
    """
    text = _DROPPED.sub(" ", caption.replace("\n", " ").lower().translate(_UNICODE))
    text = re.sub(r"[()\[\]{}°]", lambda m: _BRACKETS.get(m[0], " ° "), text)
    tokens = [t for word in text.split() for t in _ptb_word(word)]
    return [t for t in tokens if t not in PTB_PUNCTUATIONS]


def cider(predictions: dict[str, str], references: dict[str, list[str]]) -> float:
    """CIDEr-D x 100 as pycocoevalcap's Cider computes it, on PTB-tokenised captions (ptb_tokenize).

    The idf comes from the references of the whole set, so the score is corpus-level: a single image scores 0.
    """
    if set(predictions) != set(references):
        missing = sorted(set(predictions) ^ set(references), key=str)[:5]
        raise UserError(f"captions and references must cover the same images; unmatched ids: {missing}")
    if not predictions:
        raise UserError("CIDEr of an empty set of captions")
    if any(not refs for refs in references.values()):
        raise UserError("an image has no reference captions: CIDEr needs at least one per image")
    from pycocoevalcap.cider.cider import Cider  # loaded on first use, as metrics/coco.py loads pycocotools

    gts = {k: [" ".join(ptb_tokenize(r)) for r in references[k]] for k in predictions}
    res = {k: [" ".join(ptb_tokenize(predictions[k]))] for k in predictions}
    score, _ = Cider().compute_score(gts, res)
    return 100.0 * float(score)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch and the answer-prior baseline
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_METRICS = ("vqa_accuracy", "vqa_accuracy_norm", "exact_match", "anls", "relaxed_accuracy", "choice_accuracy")


def score_sample(metric: str, prediction: str, answers: list[str], n_choices: int | None = None) -> float:
    """One sample's score by metric name; "vqa_accuracy_norm" is vqa_accuracy(normalize_answers=True) (TextVQA)."""
    if metric == "vqa_accuracy":
        return vqa_accuracy(prediction, answers)
    if metric == "vqa_accuracy_norm":
        return vqa_accuracy(prediction, answers, normalize_answers=True)
    if metric == "exact_match":
        return exact_match(prediction, answers)
    if metric == "anls":
        return anls(prediction, answers)
    if metric == "relaxed_accuracy":
        return relaxed_accuracy(prediction, answers)
    if metric == "choice_accuracy":
        if n_choices is None:
            raise UserError("choice_accuracy needs n_choices (the number of options of the question)")
        return choice_accuracy(prediction, answers, n_choices)
    raise UserError(f"unknown sample metric {metric!r}; known: {', '.join(SAMPLE_METRICS)}")


def answer_prior(train: list[tuple[str, str]]) -> dict[str, str]:
    """The prior baseline: most frequent answer per question type (ties alphabetical), "*" the overall one."""
    if not train:
        raise UserError("the answer prior needs at least one (question_type, answer) pair")
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    for question_type, answer in train:
        if question_type == "*":
            raise UserError('question type "*" is reserved for the overall most frequent answer')
        per_type[question_type][answer] += 1

    def top(counts: Counter[str]) -> str:
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    prior = {question_type: top(counts) for question_type, counts in per_type.items()}
    prior["*"] = top(sum(per_type.values(), Counter()))
    return prior
