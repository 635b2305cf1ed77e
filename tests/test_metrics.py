"""Metric tests. Expected values are worked out by hand (arithmetic in the comments), never by calling
the implementation, so a wrong formula fails here."""

from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import EvalPrediction, PreTrainedTokenizerFast

from florence_recipes.evaluation.metrics import (
    ITEM_METRICS,
    anls,
    anls_score,
    exact_match_score,
    levenshtein_similarity_score,
    mean,
    normalize_text,
    relaxed_accuracy_score,
    score_items,
    vqa_accuracy_score,
)
from florence_recipes.evaluation.scoring import TextScorer

# --- ANLS ---------------------------------------------------------------------------------------


def test_normalize_text() -> None:
    assert normalize_text("  The\tTotal \n  DUE  ") == "the total due"


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        # Case and outer/inner whitespace vanish with normalisation: NL = 0 -> 1.
        ("  The  Total\tDue ", ["the total due"], 1.0),
        # Empty prediction vs "abc": 3 insertions / max(0, 3) -> NL = 1 -> 0.
        ("", ["abc"], 0.0),
        # Both empty (also after normalising whitespace): NL defined as 0 -> 1.
        ("", [""], 1.0),
        ("   ", [""], 1.0),
        # "abcde" vs "abcxy": 2 substitutions / 5 -> NL = 0.4 < 0.5 -> 1 - 0.4 = 0.6.
        ("abcde", ["abcxy"], 0.6),
        # "ab" vs "ac": 1 / 2 -> NL = 0.5 exactly -> not < 0.5 -> 0.
        ("ab", ["ac"], 0.0),
        # "abcd" vs "abxy": 2 / 4 -> NL = 0.5 exactly -> 0.
        ("abcd", ["abxy"], 0.0),
        # "abcde" vs "abxyz": 3 / 5 -> NL = 0.6 -> 0.
        ("abcde", ["abxyz"], 0.0),
        # Several golds, the max is taken: "1999" vs "1998": 1/4 -> 0.75; vs "in 1999": 3 insertions / 7
        # -> 1 - 3/7 = 4/7 ~ 0.571; vs "xyz": 4/4 -> 0. Max = 0.75.
        ("1999", ["1998", "in 1999", "xyz"], 0.75),
        ("1999", ["1998", "1999"], 1.0),
        # Accents count as one character: "café" vs "cafe": 1 / 4 -> 0.75 (UTF-8 bytes would give
        # 2 edits / 5 bytes -> 0.6).
        ("café", ["cafe"], 0.75),
        ("CAFÉ", ["café"], 1.0),
        # CJK: "ab東" vs "ab京": 1 / 3 characters -> 1 - 1/3 = 2/3 (bytes: 3 / 5 -> NL 0.6 -> 0).
        ("ab東", ["ab京"], 2 / 3),
    ],
)
def test_anls_score(prediction: str, golds: list[str], expected: float) -> None:
    assert anls_score(prediction, golds) == pytest.approx(expected)


def test_anls_threshold() -> None:
    # "abcde" vs "abxyz": NL = 3/5 = 0.6 < 0.7 -> 1 - 0.6 = 0.4.
    assert anls_score("abcde", ["abxyz"], threshold=0.7) == pytest.approx(0.4)
    # "abcde" vs "abcxy": NL = 0.4, not < 0.4 -> 0.
    assert anls_score("abcde", ["abcxy"], threshold=0.4) == 0.0


def test_anls_corpus() -> None:
    # Per question: 1.0 (exact), 0.6 (NL 0.4), 0.0 (NL 0.6) -> mean 1.6 / 3.
    predictions = ["Yes", "abcde", "abcde"]
    references = [["yes", "no"], ["abcxy"], ["abxyz"]]
    assert anls(predictions, references) == pytest.approx(1.6 / 3)
    # With threshold 0.7 the third question scores 0.4: (1.0 + 0.6 + 0.4) / 3.
    assert anls(predictions, references, threshold=0.7) == pytest.approx(2.0 / 3)
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        anls(predictions, references[:2])


# --- Other per-item scorers ---------------------------------------------------------------------


def test_levenshtein_similarity_has_no_threshold() -> None:
    # "ab" vs "ac": 1 - 1/2 = 0.5 (ANLS would give 0).
    assert levenshtein_similarity_score("ab", ["ac"]) == pytest.approx(0.5)
    # "abcde" vs "abxyz": 1 - 3/5 = 0.4; vs "abcxy": 1 - 2/5 = 0.6; max 0.6.
    assert levenshtein_similarity_score("abcde", ["abxyz", "abcxy"]) == pytest.approx(0.6)
    # "" vs "abc": 1 - 3/3 = 0.
    assert levenshtein_similarity_score("", ["abc"]) == 0.0
    assert levenshtein_similarity_score(" A  B ", ["a b"]) == 1.0


def test_exact_match() -> None:
    assert exact_match_score(" The  Answer ", ["other", "the answer"]) == 1.0
    # Punctuation is not normalised away.
    assert exact_match_score("answer.", ["answer"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("10.4", ["10"], 1.0),  # |10.4 - 10| / 10 = 4% <= 5%
        ("10.5", ["10"], 1.0),  # exactly 5%: the bound is inclusive
        ("11", ["10"], 0.0),  # 10% > 5%
        ("9", ["10"], 0.0),  # 10% below
        ("12%", ["12"], 1.0),  # the unit is dropped, 12 == 12
        ("12", ["12%"], 1.0),
        ("1,234", ["1234"], 1.0),  # thousands separator
        ("12.", ["12"], 1.0),  # trailing period
        ("-5", ["-5.2"], 1.0),  # 0.2 / 5.2 ~ 3.8%
        ("0", ["0"], 1.0),
        ("0.01", ["0"], 0.0),  # a gold of 0 needs an exact 0
        ("20", ["abc", "19.5"], 1.0),  # any gold: 0.5 / 19.5 ~ 2.6%
        (" Yes ", ["yes"], 1.0),  # text: exact after normalisation
        ("yes", ["no"], 0.0),
        ("ten", ["10"], 0.0),  # words are not numbers
        ("nan", ["nan"], 1.0),  # "nan" stays text, compared exactly
    ],
)
def test_relaxed_accuracy(prediction: str, golds: list[str], expected: float) -> None:
    assert relaxed_accuracy_score(prediction, golds) == expected


def test_relaxed_accuracy_tolerance() -> None:
    # |11 - 10| / 10 = 10% <= 10%.
    assert relaxed_accuracy_score("11", ["10"], tolerance=0.1) == 1.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # 10 golds, k match. Leaving out a matching gold leaves k - 1 matches, another leaves k;
        # acc = mean over the 10 subsets of min(matches / 3, 1).
        (0, 0.0),
        (1, 0.3),  # 1 subset with 0, 9 with 1/3: 9 * (1/3) / 10 = 0.3
        (2, 0.6),  # 2 * (1/3) + 8 * (2/3) = 6, / 10
        (3, 0.9),  # 3 * (2/3) + 7 * 1 = 9, / 10
        (4, 1.0),  # 4 * 1 + 6 * 1 = 10, / 10
        (10, 1.0),
    ],
)
def test_vqa_accuracy_subsets(matches: int, expected: float) -> None:
    golds = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy_score("cat", golds) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("Two dogs.", "2 dogs"),  # case, number words, final period
        ("the cat", "cat"),  # articles
        ("an apple", "apple"),
        ("dont know", "don't know"),  # contractions
        ("1,000", "1000"),  # digit,digit drops punctuation instead of spacing it
        ("red-white", "red white"),  # punctuation between words becomes a space
        ("yes!", "yes"),
        ("3.5", "3.5"),  # a period before a digit is kept
    ],
)
def test_vqa_normalisation_matches(prediction: str, gold: str) -> None:
    # Three matching golds out of 10 -> 0.9, which only happens if normalisation made them equal.
    assert vqa_accuracy_score(prediction, [gold] * 3 + ["zzz"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_edge_cases() -> None:
    # The period before a digit stays, so "3.5" and "35" differ.
    assert vqa_accuracy_score("3.5", ["35"] * 10) == 0.0
    # A single gold has an empty leave-one-out subset, so it is an exact match.
    assert vqa_accuracy_score("Yes", ["yes"]) == 1.0
    assert vqa_accuracy_score("no", ["yes"]) == 0.0
    # Two golds that both match: each subset keeps one match -> 1/3.
    assert vqa_accuracy_score("yes", ["yes", "yes"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("metric", sorted(ITEM_METRICS))
def test_golds_must_be_a_non_empty_list(metric: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        ITEM_METRICS[metric]("a", [])
    with pytest.raises(TypeError, match="list of gold answers"):
        ITEM_METRICS[metric]("a", "a")  # type: ignore[arg-type]


# --- Registry and corpus helpers ----------------------------------------------------------------


def test_registry_names() -> None:
    assert set(ITEM_METRICS) == {"anls", "levenshtein", "exact_match", "relaxed_accuracy", "vqa_accuracy"}


def test_score_items_and_their_mean() -> None:
    predictions = ["ab", "10.4"]
    references = [["ac"], ["10"]]
    # "ab"/"ac": NL 0.5 -> ANLS 0, similarity 0.5. "10.4"/"10": 2 deletions / 4 -> NL 0.5 -> ANLS 0,
    # similarity 0.5; relaxed: 4% -> 1.
    assert score_items("levenshtein", predictions, references) == pytest.approx([0.5, 0.5])
    assert mean(score_items("anls", predictions, references)) == 0.0
    assert mean(score_items("relaxed_accuracy", predictions, references)) == 0.5
    with pytest.raises(ValueError, match=r"valid names: \['anls'"):
        score_items("bleu", predictions, references)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_items("anls", predictions, references[:1])
    with pytest.raises(ValueError, match="Cannot average an empty list"):
        mean([])


# --- the scorer: compute_metrics hook and evaluate.py ------------------------------------------

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "42": 4, "blue.": 5, "10.4": 6, "forty": 7, "two": 8}


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    # A word-level tokenizer built in memory: decoding is exact and nothing comes from the Hub.
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


REFERENCES = [["forty two", "42"], ["blue"], ["10"]]
# Generated ids as the Trainer hands them over: decoder start (</s>), <s>, answer, </s>, the batch's
# own padding (0), then -100 where the Trainer concatenated batches of different lengths.
GENERATED = np.array(
    [
        [2, 1, 4, 2, 0, -100],  # "42"
        [2, 1, 5, 2, -100, -100],  # "blue."
        [2, 1, 6, 2, 0, 0],  # "10.4"
    ]
)
LABELS = np.array([[7, 8, 2], [5, 2, -100], [6, 2, -100]])


def scorer(tokenizer: PreTrainedTokenizerFast, references: list[list[str]], **kwargs) -> TextScorer:
    return TextScorer(SimpleNamespace(tokenizer=tokenizer), references, **kwargs)


def test_compute_metrics_decodes_and_scores(tokenizer: PreTrainedTokenizerFast) -> None:
    compute = scorer(
        tokenizer,
        REFERENCES,
        sources=["docvqa", "chartqa", "chartqa"],
        source_metrics={"chartqa": ["relaxed_accuracy"]},
    )
    results = compute(EvalPrediction(predictions=GENERATED, label_ids=LABELS))

    texts = compute.decode(GENERATED)
    assert texts == ["42", "blue.", "10.4"]
    items = compute.score(texts).items
    # Item scores: "42" matches its second gold exactly -> 1 everywhere.
    # "blue." vs "blue": 1 / 5 -> NL 0.2 -> ANLS 0.8, similarity 0.8, exact 0.
    # "10.4" vs "10": 2 / 4 -> NL 0.5 -> ANLS 0, similarity 0.5, exact 0.
    assert [item["anls"] for item in items] == pytest.approx([1.0, 0.8, 0.0])
    assert [item["exact_match"] for item in items] == [1.0, 0.0, 0.0]
    # Per source, each its own metrics: chartqa's relaxed accuracy is "blue." -> 0 (text), "10.4" -> 1 (4%).
    assert results == pytest.approx(
        {
            "anls": 1.8 / 3,
            "levenshtein": 2.3 / 3,
            "exact_match": 1 / 3,
            "count": 3,
            "scored": 3,
            "docvqa_anls": 1.0,
            "docvqa_levenshtein": 1.0,
            "docvqa_exact_match": 1.0,
            "chartqa_relaxed_accuracy": 0.5,  # (0 + 1) / 2
        }
    )


def test_compute_metrics_accepts_tuple_predictions(tokenizer: PreTrainedTokenizerFast) -> None:
    compute = scorer(tokenizer, REFERENCES, metrics=["exact_match"])
    results = compute(EvalPrediction(predictions=(GENERATED,), label_ids=LABELS))
    assert results == {"exact_match": pytest.approx(1 / 3), "count": 3, "scored": 3}


def test_items_without_gold_answers_are_predicted_but_not_scored(tokenizer: PreTrainedTokenizerFast) -> None:
    # A hidden test split: the second question has no answers, so only items 1 and 3 are scored.
    compute = scorer(tokenizer, [REFERENCES[0], [], REFERENCES[2]], metrics=["anls"])
    scores = compute.score(compute.decode(GENERATED))
    assert scores.items == [{"anls": 1.0}, None, {"anls": 0.0}]
    assert scores.metrics == {"anls": 0.5, "count": 3, "scored": 2}  # (1 + 0) / 2


def test_compute_metrics_errors(tokenizer: PreTrainedTokenizerFast) -> None:
    compute = scorer(tokenizer, REFERENCES[:2])
    with pytest.raises(ValueError, match="3 predictions but 2 eval items"):
        compute(EvalPrediction(predictions=GENERATED, label_ids=LABELS))
    with pytest.raises(ValueError, match="Unknown metric"):
        scorer(tokenizer, REFERENCES, sources=["a"] * 3, source_metrics={"a": ["bleu"]})
    with pytest.raises(ValueError, match="2 sources for 3 eval items"):
        scorer(tokenizer, REFERENCES, sources=["a", "b"])
    with pytest.raises(ValueError, match=r"bad items: \[1\]"):
        scorer(tokenizer, [["a"], "b"])
