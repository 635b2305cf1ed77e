"""The one generate-and-score path: generated ids -> text -> per-item scores -> the run's metrics.

A `Scorer` is the `compute_metrics` of `Seq2SeqTrainer(predict_with_generate=True)` in the training recipe, and
`recipes/evaluate.py` runs the same Trainer evaluation with the same `Scorer`, so a checkpoint scores the same
through both. Text tasks are scored item by item with `florence_recipes.metrics` (per source in a mixture, as
`<source>_<metric>`); box tasks (`<OD>`, phrase grounding) are parsed with the processor's
`post_process_generation` and scored with COCO mAP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import Dataset, Image
from transformers import EvalPrediction, ProcessorMixin

from florence_recipes.data.images import image_size
from florence_recipes.data.loading import column_values
from florence_recipes.data.sources import DataSource
from florence_recipes.data.validation import DroppedItem
from florence_recipes.errors import RecipeError
from florence_recipes.evaluation.detection import MAP_KEYS, Boxes, mean_average_precision, parse_boxes
from florence_recipes.evaluation.metrics import check_metric_names, mean, score_items
from florence_recipes.models.outputs import decode_texts

IGNORE_INDEX = -100  # the Trainer pads generated ids of different lengths with it
# Mixture-wide eval metrics, defined for any text; each source also gets its own (eval_<source>_<metric>).
MIXTURE_METRICS = ("exact_match", "levenshtein")


@dataclass
class Scores:
    """What scoring one eval set gives: the run's metrics and, for text tasks, each item's scores."""

    metrics: dict[str, float]
    items: list[dict[str, float] | None]  # None: not scored (no gold answer, or a corpus-level metric)


class Scorer(ABC):
    """Decodes generated ids and scores them against one eval set's gold answers, in that set's order.

    The Trainer gathers predictions in dataset order (accelerate's `gather_for_metrics`, see
    `FlorenceTrainer.evaluation_loop`), also across processes. With `sources` (one name per item), each
    source's metrics are reported too, as `<source>_<metric>`.
    """

    metric_names: tuple[str, ...]  # headline first

    def __init__(self, processor: ProcessorMixin, num_items: int, sources: Sequence[str] | None) -> None:
        if processor.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a pad token to replace the Trainer's -100 padding")
        if sources is not None and len(sources) != num_items:
            raise ValueError(f"Got {len(sources)} sources for {num_items} eval items")
        self.processor = processor
        self.num_items = num_items
        self.sources = None if sources is None else list(sources)
        self.last: tuple[list[str], list[dict[str, float] | None]] | None = (
            None  # the last call's texts, items
        )

    def decode(self, predictions: Any) -> list[str]:
        """Generated ids (as the Trainer returns them: maybe a tuple, padded with -100) -> one text per item."""
        ids = predictions[0] if isinstance(predictions, tuple) else predictions  # extra outputs come after
        ids = np.where(ids != IGNORE_INDEX, ids, self.processor.tokenizer.pad_token_id).tolist()
        if len(ids) != self.num_items:
            raise ValueError(
                f"Got {len(ids)} predictions but {self.num_items} eval items: the scorer must be built for the "
                "evaluated dataset, in its order"
            )
        return self._decode(ids)

    def score(self, texts: list[str]) -> Scores:
        """Metrics of decoded `texts` (one per item): overall, `count`, and per source."""
        items, metrics = self._score(list(range(len(texts))), texts)
        metrics["count"] = len(texts)
        if self.sources is not None:
            for source in dict.fromkeys(self.sources):
                rows = [i for i, s in enumerate(self.sources) if s == source]
                _, per_source = self._score(rows, texts, source)
                metrics |= {f"{source}_{key}": value for key, value in per_source.items()}
        return Scores(metrics, items)

    def __call__(self, eval_pred: EvalPrediction) -> dict[str, float]:
        texts = self.decode(eval_pred.predictions)
        scores = self.score(texts)
        self.last = (texts, scores.items)  # the files of the final evaluation are written from these
        return scores.metrics

    @abstractmethod
    def _decode(self, ids: list[list[int]]) -> list[str]: ...

    @abstractmethod
    def _score(
        self, rows: list[int], texts: list[str], source: str | None = None
    ) -> tuple[list[dict[str, float] | None], dict[str, float]]:
        """(per-item scores of `rows`, their means) for one source, or all items when `source` is None."""


class TextScorer(Scorer):
    """Item metrics (ANLS, exact match, ...) of plain-text answers against every gold answer of the item.

    Items without gold answers (a hidden test split) are generated but not scored: `scored` counts the rest.
    `unreadable_sources` has one source name per eval item that was dropped as a bad sample but has gold
    answers: each scores 0 in the metrics, as official DocVQA scoring counts every question, and the mean over
    the scored items alone is reported beside them as `<metric>_over_readable`.
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        references: list[list[str]],
        metrics: Sequence[str] = ("anls", "levenshtein", "exact_match"),
        sources: Sequence[str] | None = None,
        source_metrics: dict[str, Sequence[str]] | None = None,
        unreadable_sources: Sequence[str] = (),
    ) -> None:
        super().__init__(processor, len(references), sources)
        self.unreadable_sources = list(unreadable_sources)
        if not metrics:
            raise ValueError("metrics must name at least one metric")
        self.source_metrics = {name: tuple(names) for name, names in (source_metrics or {}).items()}
        check_metric_names(list(metrics) + [m for names in self.source_metrics.values() for m in names])
        bad = [i for i, golds in enumerate(references) if isinstance(golds, str)]
        if bad:  # a bare string would be scored character by character
            raise ValueError(f"references must be lists of gold answers; bad items: {bad[:10]}")
        self.references = references
        self.metric_names = tuple(metrics)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        return decode_texts(self.processor.tokenizer, ids)

    def _score(
        self, rows: list[int], texts: list[str], source: str | None = None
    ) -> tuple[list[dict[str, float] | None], dict[str, float]]:
        names = self.metric_names if source is None else self.source_metrics.get(source, self.metric_names)
        scored = [i for i in rows if self.references[i]]
        per_metric = {
            m: score_items(m, [texts[i] for i in scored], [self.references[i] for i in scored]) for m in names
        }
        items: list[dict[str, float] | None] = [None] * len(rows)
        position = {row: k for k, row in enumerate(rows)}
        for k, i in enumerate(scored):
            items[position[i]] = {m: values[k] for m, values in per_metric.items()}
        unreadable = sum(source is None or s == source for s in self.unreadable_sources)
        means = {}
        for metric, values in per_metric.items():
            if unreadable:  # skipped items score 0: the headline counts every item
                means[metric] = sum(values) / (len(values) + unreadable)
                if values:
                    means[f"{metric}_over_readable"] = mean(values)
            elif values:
                means[metric] = mean(values)
        if unreadable:
            means["unreadable"] = unreadable
        if source is None:
            means["scored"] = len(scored)
        return items, means


class BoxScorer(Scorer):
    """COCO mAP of generated boxes (`<OD>`, phrase grounding) against the gold target's boxes.

    Ids are decoded *with* special tokens: a checkpoint's tokenizer may register `<loc_i>` as special tokens,
    and `skip_special_tokens=True` would then drop every box. Gold targets are parsed the same way as
    predictions, so a prediction equal to its target scores 1.0 whatever the image size.
    """

    metric_names = MAP_KEYS
    # Items dropped as bad samples: their gold boxes are all missed. The image size is unknown (the image may
    # not decode), and scale does not matter here: IoU is scale-free and MAP_KEYS have no area ranges.
    _DROPPED_SIZE = (1000, 1000)

    def __init__(
        self,
        processor: ProcessorMixin,
        references: list[str],
        image_sizes: list[tuple[int, int]],
        box_tasks: list[str],
        sources: Sequence[str] | None = None,
        unreadable: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """`unreadable`: (source, gold target, box task) of each eval item dropped as a bad sample."""
        super().__init__(processor, len(references), sources)
        if not len(references) == len(image_sizes) == len(box_tasks):
            raise ValueError("references, image_sizes and box_tasks must have one entry per eval item")
        self.image_sizes = image_sizes
        self.box_tasks = box_tasks
        self.gold = [self.parse(i, text) for i, text in enumerate(references)]
        self.unreadable = [
            (source, parse_boxes(processor, target, task, self._DROPPED_SIZE))
            for source, target, task in unreadable
        ]

    def parse(self, item: int, text: str) -> Boxes:
        """Boxes and labels in pixels of item `item`'s image, from Florence-2 output text."""
        return parse_boxes(self.processor, text, self.box_tasks[item], self.image_sizes[item])

    def _decode(self, ids: list[list[int]]) -> list[str]:
        tokenizer = self.processor.tokenizer
        texts = tokenizer.batch_decode(ids, skip_special_tokens=False)
        for token in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token):
            texts = [text.replace(token, "") for text in texts]
        return [text.strip() for text in texts]

    def _score(
        self, rows: list[int], texts: list[str], source: str | None = None
    ) -> tuple[list[dict[str, float] | None], dict[str, float]]:
        predicted = [self.parse(i, texts[i]) for i in rows]
        gold = [self.gold[i] for i in rows]
        missed = [boxes for s, boxes in self.unreadable if source is None or s == source]
        # mAP is a corpus metric: items carry no score of their own. Skipped items count as all boxes missed.
        metrics = mean_average_precision(
            predicted + [{"bboxes": [], "labels": []}] * len(missed), gold + missed
        )
        if missed:
            metrics |= {
                f"{key}_over_readable": value
                for key, value in mean_average_precision(predicted, gold).items()
            }
            metrics["unreadable"] = len(missed)
        return [None] * len(rows), metrics


def dataset_image_sizes(dataset: Dataset) -> list[tuple[int, int]]:
    """(width, height) of every image of a standard dataset, in order, from the image headers."""
    undecoded = dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
    return [image_size(image) for batch in undecoded.iter(batch_size=256) for image in batch["image"]]


def build_scorer(
    processor: ProcessorMixin,
    dataset: Dataset,
    sources: list[DataSource],
    dropped: Sequence[DroppedItem] = (),
) -> Scorer:
    """The scorer of an eval set drawn from `sources`: one source's text metrics (a mixture: `MIXTURE_METRICS`
    overall plus each source's own), or mAP when the sources are box tasks. `dropped` are the eval items
    `check_samples` skipped: those with gold answers score 0 (text metrics) or have every box missed (mAP)."""
    references = column_values(dataset, "answers")
    item_sources = column_values(dataset, "source")
    per_source = item_sources if len(sources) > 1 else None
    box_tasks = {source.name: source.task.box_task for source in sources if source.task.box_task}
    if box_tasks:
        text = [source.name for source in sources if source.name not in box_tasks]
        if text:
            raise RecipeError(
                f"eval: box sources ({', '.join(box_tasks)}) and text sources ({', '.join(text)}) cannot be "
                "scored in one run; evaluate them in separate runs (or drop do_eval for the mixture)"
            )
        return BoxScorer(
            processor,
            references=[golds[0] if golds else "" for golds in references],
            image_sizes=dataset_image_sizes(dataset),
            box_tasks=[box_tasks[name] for name in item_sources],
            sources=per_source,
            unreadable=[
                (item.source, item.answers[0], box_tasks[item.source])
                for item in dropped
                if item.answers and item.source in box_tasks
            ],
        )
    return TextScorer(
        processor,
        references=references,
        metrics=sources[0].metrics if per_source is None else MIXTURE_METRICS,
        sources=per_source,
        source_metrics=None if per_source is None else {source.name: source.metrics for source in sources},
        unreadable_sources=[item.source for item in dropped if item.scorable],
    )
