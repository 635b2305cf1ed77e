"""Answer-quality metrics for generated text.

Every per-item scorer takes one prediction and the *full* list of gold answers of its question and
returns a score in [0, 1]; corpus scores are means over questions. Scorers are registered in
`ITEM_METRICS` so that tasks and configs can name their metrics by string. `anls(predictions, references)`
is the official DocVQA corpus score, for use outside the recipes; the recipes score through
`florence_recipes.scoring`, which applies the same per-item functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein


def normalize_text(s: str) -> str:
    """Lower-case and collapse all whitespace runs to single spaces (the DocVQA ANLS normalisation)."""
    # Equivalent to the official `" ".join(s.strip().lower().split())`: split() already drops the ends.
    return " ".join(s.lower().split())


def _require_golds(golds: Sequence[str]) -> None:
    # A bare string would be iterated character by character and silently give wrong scores.
    if isinstance(golds, str):
        raise TypeError(f"golds must be a list of gold answers, got the string {golds!r}")
    # A question without answers is a data bug (e.g. a hidden test split), not a score of 0.
    if len(golds) == 0:
        raise ValueError("golds is empty: every question needs at least one gold answer")


def _normalized_edit_distance(prediction: str, gold: str) -> float:
    # rapidfuzz divides by max(len) in characters (code points) and returns 0.0 when both are empty.
    return Levenshtein.normalized_distance(normalize_text(prediction), normalize_text(gold))


def anls_score(prediction: str, golds: list[str], threshold: float = 0.5) -> float:
    """ANLS of one question: max over golds of `1 - NL` when `NL < threshold`, else 0 (DocVQA/ST-VQA)."""
    _require_golds(golds)
    distances = [_normalized_edit_distance(prediction, g) for g in golds]
    return max(1.0 - nl if nl < threshold else 0.0 for nl in distances)


def anls(predictions: list[str], references: list[list[str]], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity over questions, in [0, 1] (papers print it x100)."""
    _check_lengths(predictions, references)
    return mean([anls_score(p, g, threshold) for p, g in zip(predictions, references, strict=True)])


def levenshtein_similarity_score(prediction: str, golds: list[str]) -> float:
    """Max over golds of `1 - NL` without ANLS's threshold: the "Levenshtein similarity" of the Florence-2
    fine-tuning blog post, kept to compare with its numbers."""
    _require_golds(golds)
    return max(1.0 - _normalized_edit_distance(prediction, g) for g in golds)


def exact_match_score(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    _require_golds(golds)
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(g) for g in golds))


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def _parse_number(s: str) -> float | None:
    # Models and annotators write "1,234", "12%" or "12." for the same value; a strict pattern keeps
    # words that float() would accept ("nan", "inf", "1_0") on the text path.
    cleaned = s.strip().rstrip(".").strip().removesuffix("%").replace(",", "").strip()
    return float(cleaned) if _NUMBER.fullmatch(cleaned) else None


def relaxed_accuracy_score(prediction: str, golds: list[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy: numbers count as correct within `tolerance` relative error, other
    answers need an exact match after `normalize_text`.

    Unlike the Pix2Struct reference code, "12%" is read as 12 (not 0.12), because ChartQA gold
    answers usually drop the unit that models tend to print.
    """
    _require_golds(golds)
    pred_text = normalize_text(prediction)
    pred_num = _parse_number(prediction)
    for gold in golds:
        gold_num = _parse_number(gold)
        if pred_num is not None and gold_num is not None:
            # With a gold of 0 this demands an exact 0, where a relative error is undefined.
            if abs(pred_num - gold_num) <= tolerance * abs(gold_num):
                return 1.0
        elif pred_text == normalize_text(gold):
            return 1.0
    return 0.0


# The official VQA script maps apostrophe-less spellings to these forms; forms whose bare spelling is
# a real word (he'll/hell, we're/were, it's/its, ...) are not in its table either.
_CONTRACTED_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've "
    "she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll that's "
    "there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd "
    "who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
)
_VQA_CONTRACTIONS = {c.replace("'", ""): c for c in _CONTRACTED_FORMS.split()}
_VQA_NUMBERS = {"none": "0"} | {
    w: str(i)
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern "(?!<=\d)(\.)(?!\d)" has a typo'd look-behind, so in effect it drops every
# period not followed by a digit; this reproduces that behaviour.
_PERIOD = re.compile(r"\.(?!\d)")


def _vqa_normalize(answer: str) -> str:
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    # As in the official script, the checks look at the unmodified text, and a "1,000"-style number
    # anywhere makes every punctuation mark vanish instead of turning into a space.
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _VQA_PUNCTUATION:
        out = out.replace(p, "" if drop_all or f"{p} " in text or f" {p}" in text else " ")
    out = _PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def vqa_accuracy_score(prediction: str, golds: list[str]) -> float:
    """Official VQA accuracy: `min(#matching humans / 3, 1)` averaged over the leave-one-out subsets of
    the gold answers (the 10-choose-9 subsets for VQAv2's 10 answers).

    Answers are normalised as in the official VQA evaluation script (lower case, punctuation, periods
    not followed by a digit, number words to digits, articles a/an/the dropped, contractions restored).
    Two deliberate differences: the normalisation is always applied to the prediction and the golds
    (the script skips it when all golds agree), and a single gold answer is scored as an exact match,
    since its only leave-one-out subset is empty.
    """
    _require_golds(golds)
    pred = _vqa_normalize(prediction)
    matches = [_vqa_normalize(g) == pred for g in golds]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    # Leaving out a matching gold leaves total - 1 matches in that subset, leaving out another leaves total.
    return mean([min((total - m) / 3, 1.0) for m in matches])


ITEM_METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "anls": anls_score,
    "levenshtein": levenshtein_similarity_score,
    "exact_match": exact_match_score,
    "relaxed_accuracy": relaxed_accuracy_score,
    "vqa_accuracy": vqa_accuracy_score,
}


def check_metric_names(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in ITEM_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; valid names: {sorted(ITEM_METRICS)}")


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("Cannot average an empty list of scores")
    return float(np.mean(values))


def _check_lengths(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")


def score_items(metric: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-question scores of `metric`; `references[i]` holds all gold answers of question `i`."""
    check_metric_names([metric])
    _check_lengths(predictions, references)
    scorer = ITEM_METRICS[metric]
    return [scorer(pred, golds) for pred, golds in zip(predictions, references, strict=True)]
