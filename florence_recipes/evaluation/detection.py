"""COCO mAP of generated detections.

Predictions (and the gold targets, built by `florence_recipes.data.boxes`, for a like-for-like comparison) are
read back with the processor's own `post_process_generation`, and scored with torchmetrics'
`MeanAveragePrecision` (pycocotools backend).
"""

from __future__ import annotations

from typing import Any

from transformers import ProcessorMixin

# Keys of `MeanAveragePrecision.compute()` that are reported, as `eval_<key>`.
MAP_KEYS = ("map", "map_50", "map_75", "mar_100")

Boxes = dict[str, list[Any]]  # {"bboxes": [[x0, y0, x1, y1], ...], "labels": [str, ...]}, as post-processed


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
