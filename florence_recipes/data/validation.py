"""Find bad samples once, before training, and either stop at the first one or drop and count them.

DataLoader workers decode images lazily, so without this pass a corrupt image would crash a run hours in,
and counts kept by worker processes would be scattered. `check_samples` runs one `datasets.map` over the
standard rows in the main process: it decodes every image exactly as training will (`datasets.Image`
decoding, EXIF rotation included) and checks the text fields. The map is cached by the dataset's
fingerprint, so a second run over the same data reads the verdicts back instead of decoding again.

Images of any mode (grayscale, RGBA, CMYK, palette, 16-bit) and EXIF-rotated photos are converted, not
rejected; targets longer than `max_target_length` are truncated by the collator and counted here.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image
from transformers import PreTrainedTokenizerBase

from florence_recipes.configs.choices import BAD_SAMPLE_POLICIES
from florence_recipes.errors import RecipeError, first_line

logger = logging.getLogger(__name__)

# Placeholder images (1x1 pixels of failed downloads) carry nothing to read; sides of 1 or 3 px are also
# ambiguous for the image processor, which guesses the channel axis from the array shape.
MIN_IMAGE_SIDE = 4
BAD_SAMPLE_REASONS = {
    "image_missing": "no image, or its file does not exist",
    "image_unreadable": "empty, corrupt, truncated or undecodable image",
    "image_too_large": "more pixels than PIL's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)",
    "image_too_small": f"image side shorter than {MIN_IMAGE_SIDE} px",
    "empty_prompt": "empty or missing question",
    "missing_answer": "missing or empty answer",
    "bad_answers": "answers that are not a list of strings",
}
# datasets fingerprints a module-level function by its name, not its code: bump this when the checks change
# so that cached verdicts from older checks are not reused.
_CHECKS_VERSION = 2
_CHECK_COLUMNS = ("image", "prompt", "target", "answers")


@dataclass(frozen=True)
class DroppedItem:
    """A row `check_samples` dropped: enough to count it in an eval score and answer it in a submission."""

    id: str
    source: str
    reason: str
    prompt: str
    answers: list[str] | None  # None: answers that are not strings (`bad_answers`)
    position: int  # row of the checked dataset

    @property
    def scorable(self) -> bool:
        """Whether it has gold answers and so scores 0 in an eval, rather than not at all (hidden test)."""
        return self.answers is None or bool(self.answers)


class BadSamples(Counter):
    """Bad-row counts per reason (a `Counter`), and the dropped rows themselves (`dropped`, in row order)."""

    def __init__(self, counts: Any = None, dropped: list[DroppedItem] | None = None) -> None:
        super().__init__(counts or {})
        self.dropped = list(dropped or [])


def as_text_list(value: Any) -> list[str] | None:
    """Gold answers as a list of strings for a task's `convert_batch`: None -> [], a bare string -> [it].

    Returns None (reported as `bad_answers`) when any answer is not a string: writing such values into the
    string column would turn them into JSON text (`'"x"'`, `'1.5'`) and silently change what is scored.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def image_problem(image: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, detail) if `image` ({"bytes", "path"}, undecoded) cannot be used for training, else None."""
    if not image or (image.get("bytes") is None and not image.get("path")):
        return "image_missing", "no image bytes or path"
    if image.get("bytes") is not None and len(image["bytes"]) == 0:
        return "image_unreadable", "zero-byte image"
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that (it raises above): both are bombs here,
            # without lowering PIL's guard for the rest of the process.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            decoded = ImageFeature().decode_example(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return "image_too_large", first_line(err)
    except FileNotFoundError:
        return "image_missing", f"file not found: {image.get('path')}"
    except Exception as err:  # decoders of broken files raise OSError, SyntaxError, ValueError, ...
        return "image_unreadable", first_line(err)
    if min(decoded.size) < MIN_IMAGE_SIDE:
        return "image_too_small", f"{decoded.width}x{decoded.height} px"
    return None


def text_problem(prompt: Any, target: Any, answers: Any, require_answer: bool) -> tuple[str, str] | None:
    """(reason, detail) if a standard row's text fields cannot be trained on / scored, else None."""
    if not isinstance(prompt, str) or not prompt.strip():
        return "empty_prompt", "the question is empty or missing"
    if answers is None or any(not isinstance(a, str) for a in answers):
        # None: `as_text_list` found non-strings. datasets reads a JSON column that mixes strings and numbers
        # with number-like strings turned into numbers ("45.20" -> 45.2), so the file itself may look right.
        found = "values that are not strings" if answers is None else repr(answers)
        return "bad_answers", (
            f"answers must be a list of strings, got {found}; in JSON lines quote every answer, since one "
            "number in the column makes number-like strings read as numbers"
        )
    if require_answer and (not isinstance(target, str) or not target.strip()):
        return "missing_answer", "no answer to train on or score against"
    return None


def _check_batch(
    batch: dict[str, list[Any]], require_answer: bool, cache_key: tuple[Any, ...]
) -> dict[str, list[str]]:
    del cache_key  # only there to enter the map's cache fingerprint (see _CHECKS_VERSION)
    verdicts: dict[tuple[Any, Any], tuple[str, str] | None] = {}  # rows often share one image (DocVQA: ~3)
    reasons, details = [], []
    for image, prompt, target, answers in zip(*(batch[c] for c in _CHECK_COLUMNS), strict=True):
        problem = text_problem(prompt, target, answers, require_answer)
        # A box target needs its image's size, so an unreadable image leaves it empty: name the image's problem.
        if problem is None or problem[0] == "missing_answer":
            key = (image.get("path"), image.get("bytes")) if image else (None, None)
            if key not in verdicts:
                verdicts[key] = image_problem(image)
            problem = verdicts[key] or problem
        reason, detail = problem or ("", "")
        reasons.append(reason)
        details.append(detail)
    return {"bad_reason": reasons, "bad_detail": details}


def check_samples(
    dataset: Dataset | IterableDataset,
    policy: str,
    where: str,
    require_answer: bool = True,
    num_proc: int | None = None,
) -> tuple[Dataset | IterableDataset, BadSamples | None]:
    """Check every standard row of `dataset`; returns the usable rows and the bad rows (`BadSamples`: the count
    per reason, and with "skip" the dropped rows, which an evaluation still counts).

    policy="raise" stops at the first bad row with a `RecipeError` naming its id and source; "skip" drops bad
    rows and logs how many per reason. `where` (e.g. "train split of HuggingFaceM4/DocumentVQA") goes into
    messages. `require_answer=False` is for splits that are only predicted (hidden test answers). A streamed
    dataset cannot be read ahead: it is returned unchecked, with None for the counts.
    """
    if policy not in BAD_SAMPLE_POLICIES:
        raise RecipeError(f"on_bad_sample={policy!r} is not one of: {', '.join(BAD_SAMPLE_POLICIES)}")
    if isinstance(dataset, IterableDataset):
        logger.warning("%s is streamed: its samples are not checked before training", where)
        return dataset, None
    columns = dataset.select_columns(list(_CHECK_COLUMNS)).cast_column("image", ImageFeature(decode=False))
    verdicts = columns.map(
        _check_batch,
        batched=True,
        batch_size=256,
        remove_columns=list(_CHECK_COLUMNS),
        fn_kwargs={
            "require_answer": require_answer,
            "cache_key": (_CHECKS_VERSION, MIN_IMAGE_SIDE, Image.MAX_IMAGE_PIXELS),
        },
        num_proc=num_proc,
        desc=f"Checking samples of {where}",
    )
    reasons = list(verdicts["bad_reason"])
    bad = [i for i, reason in enumerate(reasons) if reason]
    if not bad:
        return dataset, BadSamples()
    if policy == "raise":
        first = bad[0]
        row = dataset.select_columns(["id", "source"])[first]
        raise RecipeError(
            f"{where}: bad sample id={row['id']!r} (source {row['source']}, row {first}): {reasons[first]} "
            f"({verdicts[first]['bad_detail']}); fix the data, or set on_bad_sample: skip to drop and count "
            f"such samples ({len(bad)} bad of {len(reasons)})"
        )
    dropped = _dropped_items(dataset, bad, reasons, where)
    bad_set = set(bad)
    kept = dataset.select([i for i in range(len(reasons)) if i not in bad_set])
    return kept, BadSamples(Counter(reasons[i] for i in bad), dropped)


def _dropped_items(dataset: Dataset, bad: list[int], reasons: list[str], where: str) -> list[DroppedItem]:
    """The skipped rows (an evaluation still counts them), with one warning per reason naming the first ids."""
    rows = dataset.select_columns(["id", "source", "prompt", "answers"]).select(bad).to_list()
    dropped = [
        DroppedItem(row["id"], row["source"], reasons[index], row["prompt"] or "", row["answers"], index)
        for index, row in zip(bad, rows, strict=True)
    ]
    examples: dict[str, list[str]] = defaultdict(list)
    for item in dropped:
        examples[item.reason].append(item.id)
    for reason, ids in sorted(examples.items()):
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        logger.warning(
            "%s: skipped %d sample(s) with %s (%s): ids %s",
            where,
            len(ids),
            reason,
            BAD_SAMPLE_REASONS[reason],
            shown,
        )
    return dropped


def bad_sample_metrics(counts: Counter[str], prefix: str) -> dict[str, int]:
    """`{prefix}bad_samples` (total) and `{prefix}bad_samples_<reason>` per reason found (all_results.json)."""
    metrics = {f"{prefix}bad_samples": sum(counts.values())}
    metrics |= {f"{prefix}bad_samples_{reason}": count for reason, count in sorted(counts.items())}
    return metrics


def count_truncated_targets(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_target_length: int, where: str
) -> int:
    """How many targets the collator will truncate to `max_target_length` tokens; warns once if any."""
    targets = dataset.select_columns(["target"])["target"]
    lengths = [len(ids) for ids in tokenizer(list(targets))["input_ids"]]
    truncated = sum(length > max_target_length for length in lengths)
    if truncated:
        logger.warning(
            "%s: %d of %d targets are longer than max_target_length=%d tokens (longest: %d) and are "
            "truncated; raise max_target_length to train on them whole",
            where,
            truncated,
            len(lengths),
            max_target_length,
            max(lengths),
        )
    return truncated
