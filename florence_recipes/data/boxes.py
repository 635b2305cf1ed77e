"""Boxes in pixels -> Florence-2 location tokens: the detection and grounding targets.

Florence-2 writes a detection as `label<loc_x0><loc_y0><loc_x1><loc_y1>` per object, each coordinate
quantised to one of 1000 bins along its axis. Targets are built here with the quantisation of
`Florence2PostProcessor.quantize`; `florence_recipes.evaluation.detection` reads them back and scores them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from florence_recipes.errors import RecipeError

NUM_BINS = 1000  # Florence2PostProcessor.quantize_bins, along x and along y


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
