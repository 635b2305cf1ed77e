"""The `compute_metrics` of a run's eval set, whatever its sources: each task's text metrics (per source in a
mixture, as `eval_<source>_<metric>`), or COCO mAP for box tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasets import Dataset, Image

from florence_recipes.data import MIXTURE_METRICS, DataSource, column_values
from florence_recipes.detection import DetectionMetrics, image_size
from florence_recipes.errors import RecipeError
from florence_recipes.metrics import GenerationMetrics, build_compute_metrics

if TYPE_CHECKING:
    from transformers import ProcessorMixin


def dataset_image_sizes(dataset: Dataset) -> list[tuple[int, int]]:
    """(width, height) of every image of a standard dataset, in order, from the image headers."""
    undecoded = dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
    return [image_size(image) for batch in undecoded.iter(batch_size=256) for image in batch["image"]]


def build_eval_metrics(
    processor: ProcessorMixin, eval_dataset: Dataset, sources: list[DataSource]
) -> GenerationMetrics | DetectionMetrics:
    """Text sources: `GenerationMetrics` with each source's metrics (one source: its task's; a mixture:
    `MIXTURE_METRICS` overall plus each source's own). Box sources: `DetectionMetrics`."""
    references = column_values(eval_dataset, "answers")
    item_sources = column_values(eval_dataset, "source")
    per_source = item_sources if len(sources) > 1 else None
    box_tasks = {source.name: source.task.box_task for source in sources if source.task.box_task}
    if box_tasks:
        text = [source.name for source in sources if source.name not in box_tasks]
        if text:
            raise RecipeError(
                f"eval: box sources ({', '.join(box_tasks)}) and text sources ({', '.join(text)}) cannot be "
                "scored in one run; evaluate them in separate runs (or drop do_eval for the mixture)"
            )
        return DetectionMetrics(
            processor,
            references=[golds[0] for golds in references],
            image_sizes=dataset_image_sizes(eval_dataset),
            box_tasks=[box_tasks[name] for name in item_sources],
            sources=per_source,
        )
    return build_compute_metrics(
        processor.tokenizer,
        references=references,
        metrics=sources[0].metrics if per_source is None else MIXTURE_METRICS,
        sources=per_source,
        source_metrics=None if per_source is None else {source.name: source.metrics for source in sources},
    )
