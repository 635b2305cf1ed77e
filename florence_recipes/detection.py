"""Boxes in pixels <-> Florence-2 location tokens, and COCO mAP of generated detections.

Florence-2 writes a detection as `label<loc_x0><loc_y0><loc_x1><loc_y1>` per object, each coordinate
quantised to one of 1000 bins along its axis. Targets are built here with the quantisation of
`Florence2PostProcessor.quantize`; predictions (and the gold targets, for a like-for-like comparison)
are read back with the processor's own `post_process_generation`, and scored with torchmetrics'
`MeanAveragePrecision` (pycocotools backend).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import ExifTags
from PIL import Image as PILImage

from florence_recipes.errors import RecipeError

if TYPE_CHECKING:
    from transformers import EvalPrediction, ProcessorMixin

NUM_BINS = 1000  # Florence2PostProcessor.quantize_bins, along x and along y
# Rotations by 90 or 270 degrees (EXIF orientations 5-8) swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Keys of `MeanAveragePrecision.compute()` that are reported, as `eval_<key>`.
MAP_KEYS = ("map", "map_50", "map_75", "mar_100")

Boxes = dict[str, list[Any]]  # {"bboxes": [[x0, y0, x1, y1], ...], "labels": [str, ...]}, as post-processed


def image_size(image: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of an undecoded image (`{"bytes", "path"}`) as the collator feeds it to the model.

    Only the header is read. The collator applies the EXIF orientation (`to_rgb`), so boxes are taken to be
    in that upright frame, whose width and height are swapped for 90/270-degree orientations.
    """
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with PILImage.open(source) as picture:
        width, height = picture.size
        orientation = picture.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def quantize_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel boxes `[x0, y0, x1, y1]` -> bin indices in [0, 999], exactly as `Florence2PostProcessor.quantize`:
    `floor(coordinate / (side / 1000))`, clamped to the last bin."""
    width, height = size
    per_bin = np.array([width, height, width, height], dtype=np.float64) / NUM_BINS
    bins = np.floor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / per_bin)
    return np.clip(bins, 0, NUM_BINS - 1).astype(np.int64)


def format_detection_target(
    boxes: Sequence[Sequence[float]], labels: Sequence[str], size: tuple[int, int], where: str
) -> str:
    """Florence-2's detection / grounding text for pixel boxes: `label<loc_x0><loc_y0><loc_x1><loc_y1>...`.

    Objects are written in reading order (top to bottom, then left to right) so that the target is a
    function of the image, not of the annotation file's order. `where` names the sample in errors.
    """
    if len(boxes) != len(labels):
        raise RecipeError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    objects = []
    for box, label in zip(boxes, labels, strict=True):
        numbers = isinstance(box, Sequence) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
        if not numbers or not (box[0] < box[2] and box[1] < box[3]):
            raise RecipeError(
                f"{where}: bbox must be [x0, y0, x1, y1] in pixels with x0 < x1, y0 < y1; got {box}"
            )
        label = str(label).strip()
        # The post-processor reads a label as the text before the first `<`, so it cannot contain one.
        if not label or "<" in label:
            raise RecipeError(f"{where}: object labels must be non-empty and free of '<'; got {label!r}")
        objects.append((label, box))
    if not objects:
        return ""
    bins = quantize_boxes([box for _, box in objects], size)
    order = sorted(range(len(objects)), key=lambda i: (bins[i][1], bins[i][0], bins[i][3], bins[i][2]))
    return "".join(objects[i][0] + "".join(f"<loc_{b}>" for b in bins[i]) for i in order)


def parse_boxes(processor: ProcessorMixin, text: str, task: str, size: tuple[int, int]) -> Boxes:
    """Boxes and labels in pixels from Florence-2 output text, through `processor.post_process_generation`."""
    parsed = processor.post_process_generation(text, task=task, image_size=size)[task]
    return {"bboxes": parsed["bboxes"], "labels": parsed["labels"]}


def mean_average_precision(predictions: list[Boxes], references: list[Boxes]) -> dict[str, float]:
    """COCO-style mAP@[.5:.95] (and mAP@.5, mAP@.75, mAR@100) of predicted boxes against gold boxes.

    Florence-2 gives no confidence per box, so every prediction scores 1.0 and ties keep generation order.
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references")
    vocabulary = {
        label: index
        for index, label in enumerate(
            sorted({name for item in predictions + references for name in item["labels"]})
        )
    }

    def as_tensors(item: Boxes) -> dict[str, torch.Tensor]:
        return {
            "boxes": torch.tensor(item["bboxes"], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor([vocabulary[label] for label in item["labels"]], dtype=torch.long),
        }

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update(
        [as_tensors(p) | {"scores": torch.ones(len(p["labels"]), dtype=torch.float64)} for p in predictions],
        [as_tensors(r) for r in references],
    )
    scores = metric.compute()
    return {key: float(scores[key]) for key in MAP_KEYS}


class DetectionMetrics:
    """`compute_metrics` hook for box tasks (`<OD>`, phrase grounding) with `predict_with_generate=True`.

    Generated ids are decoded *with* special tokens: a checkpoint's tokenizer may register `<loc_i>` as
    special tokens (the tiny test model does not), and `skip_special_tokens=True` would then drop every box.
    `post_process_generation` removes `<s>`, `</s>` and `<pad>` itself. Gold targets are parsed the same way,
    so a prediction equal to the target scores 1.0 whatever the image size. With `sources` (one name per
    item), `{source}_{key}` is reported for each source too.
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        references: list[str],
        image_sizes: list[tuple[int, int]],
        box_tasks: list[str],
        sources: list[str] | None = None,
    ) -> None:
        lengths = {len(references), len(image_sizes), len(box_tasks), len(sources or references)}
        if len(lengths) != 1:
            raise ValueError(
                "references, image_sizes, box_tasks and sources must have one entry per eval item"
            )
        self.processor = processor
        self.image_sizes = image_sizes
        self.box_tasks = box_tasks
        self.sources = sources
        self.gold = [
            parse_boxes(processor, text, task, size)
            for text, task, size in zip(references, box_tasks, image_sizes, strict=True)
        ]
        self.last_predictions: list[str] = []
        self.last_boxes: list[Boxes] = []

    def __call__(self, eval_pred: EvalPrediction) -> dict[str, float]:
        ids = eval_pred.predictions
        if isinstance(ids, tuple):
            ids = ids[0]
        tokenizer = self.processor.tokenizer
        ids = np.where(ids != -100, ids, tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=False)
        if len(decoded) != len(self.gold):
            raise ValueError(f"Got {len(decoded)} predictions but {len(self.gold)} references")
        predicted = [
            parse_boxes(self.processor, text, task, size)
            for text, task, size in zip(decoded, self.box_tasks, self.image_sizes, strict=True)
        ]
        for token in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token):
            decoded = [text.replace(token, "") for text in decoded]
        self.last_predictions = [text.strip() for text in decoded]
        self.last_boxes = predicted

        results = mean_average_precision(predicted, self.gold)
        results["count"] = len(predicted)
        if self.sources is not None:
            for source in dict.fromkeys(self.sources):
                rows = [i for i, s in enumerate(self.sources) if s == source]
                per_source = mean_average_precision(
                    [predicted[i] for i in rows], [self.gold[i] for i in rows]
                )
                results |= {f"{source}_{key}": value for key, value in per_source.items()}
        return results
