"""The compute budget of a recipe, printed before training starts: optimizer steps, samples seen and the
estimated H100 GPU-hours, from FLOPs per sample counted on the model's architecture.

`report_budget` is the one call a recipe's `main()` makes (after its sources are known, before any dataset is
loaded): with `--budget_only true` the recipe then stops, so every YAML prints its budget offline, without the
Hub. Sample counts come from `KNOWN_SPLITS` (published split sizes of the Hub datasets the recipes use) or, for
a local folder or file, from reading it; a streamed run counts `max_steps` x global batch.

FLOPs per training sample (forward + backward) are counted with `torch.utils.flop_counter.FlopCounterMode` on
the released architectures (on CPU, uninitialised weights; about a minute for all sizes), for one sample of
`SAMPLE_SHAPE`.
`MODEL_FLOPS` stores the counts for the released sizes; regenerate it after any architecture or vocabulary
change (e.g. the builders' base/large stand-ins growing to the released 51,289-token vocabulary) with

    python -m florence_recipes.budget --regenerate

and paste the printed table here; `tests/test_budget.py` checks the stored tiny entry against a fresh count.
A local checkpoint folder (e.g. the tiny smoke model) is counted fresh from its own config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from transformers import AutoImageProcessor, Florence2Config, Florence2ForConditionalGeneration
from transformers.integrations import deepspeed as hf_deepspeed

from florence_recipes.builders.model import ARCHITECTURES, build_config, build_processor
from florence_recipes.models.florence2 import RELEASED_VOCAB_SIZE, image_seq_length, padded_vocab_size
from florence_recipes.training.flops import CUDA_PEAK_TFLOPS, count_flops

if TYPE_CHECKING:
    from florence_recipes.configs.data import DataArguments
    from florence_recipes.configs.model import ModelArguments
    from florence_recipes.configs.training import FlorenceTrainingArguments
    from florence_recipes.data.sources import DataSource

logger = logging.getLogger(__name__)

H100_PEAK_TFLOPS = CUDA_PEAK_TFLOPS["H100"]  # dense bf16, SXM datasheet
# The MFU the hours assume unless `budget_mfu` says otherwise. Not measured on a GPU yet: the benchmark's CPU
# run reached 22% (README "Speed"); 35% is a common figure for well-fed bf16 training of models this size.
DEFAULT_MFU = 0.35  # FlorenceTrainingArguments.budget_mfu defaults to it
# One training sample as the FLOPs are counted: DocVQA-like prompt and answer lengths (README "Speed").
SAMPLE_SHAPE = {"prompt_tokens": 20, "target_tokens": 12}


@dataclass(frozen=True)
class SplitSize:
    rows: int
    examples_per_row: float  # Q/A turns per row for multi-turn sources
    images: int | None  # distinct images (for the vision-once speed-up); None when rows are images
    source: str


DOCVQA = (
    "DocVQA paper (Mathew et al., WACV 2021, Table 1): 39,463 / 5,349 / 5,188 questions, 10,194 train images"
)
DOCMATIX = (
    "Docmatix release post (2.4M images, 9.5M Q/A pairs from 1.3M PDFs) and the dataset viewer "
    "(config images, split train: 1.27M rows, rounded)"
)
# (dataset, config, split) -> size. Docmatix rows are PDFs: 9.5M Q/A pairs / 1.27M rows = 7.48 turns per row.
KNOWN_SPLITS: dict[tuple[str, str | None, str], SplitSize] = {
    ("HuggingFaceM4/DocumentVQA", None, "train"): SplitSize(39_463, 1.0, 10_194, DOCVQA),
    ("HuggingFaceM4/DocumentVQA", None, "validation"): SplitSize(5_349, 1.0, None, DOCVQA),
    ("HuggingFaceM4/DocumentVQA", None, "test"): SplitSize(5_188, 1.0, None, DOCVQA),
    ("HuggingFaceM4/Docmatix", "images", "train"): SplitSize(
        1_270_000, 9_500_000 / 1_270_000, None, DOCMATIX
    ),
}

# Counted by `python -m florence_recipes.budget --regenerate` (torch FlopCounterMode), for one
# sample of SAMPLE_SHAPE: vision_forward = DaViT tower + projector; full_train / frozen_vision_train = forward +
# backward of the whole model with everything trainable / with the vision tower and projector frozen.
# The table: `python -m florence_recipes.budget --regenerate`, torch 2.14.1, transformers 5.24.0, 2026-12-02, with
# the stand-ins' exact vocabulary (51,328 embedding rows for base and large). Base: 1.35 TFLOP per sample.
# (Before 2026-12-02 the counts took torch's formula for a grouped convolution's backward, which counts
# DaViT's depthwise weight gradients 128-1024x over: base was 1.87, large 7.27.)
# fmt: off
MODEL_FLOPS: dict[str, dict[str, int]] = {
    "tiny": {"image_size": 128, "vocab_size": 2112, "vision_forward": 51093504, "full_train": 186704640, "frozen_vision_train": 88417024},
    "base": {"image_size": 768, "vocab_size": 51328, "vision_forward": 380683419648, "full_train": 1353269505024, "frozen_vision_train": 588023983104},
    "large": {"image_size": 768, "vocab_size": 51328, "vision_forward": 1490371477504, "full_train": 5188918517760, "frozen_vision_train": 2200418197504},
}
# fmt: on


@dataclass(frozen=True)
class SampleFlops:
    vision_forward: int
    full_train: int
    frozen_vision_train: int

    def per_sample(self, mode: str, questions_per_image: float = 1.0) -> int:
        """Training FLOPs of one sample; the vision share divided by the questions that share one image's
        features (`dedup_vision`). LoRA is counted as frozen_vision: an upper bound (its frozen language-model
        weights need no weight gradients)."""
        vision = self.full_train - self.frozen_vision_train + self.vision_forward
        if mode != "full":
            vision = self.vision_forward
        text = self.frozen_vision_train - self.vision_forward
        return round(text + vision / max(questions_per_image, 1.0))


@contextlib.contextmanager
def _plain_construction() -> Iterator[None]:
    """Build the counting model as plain torch modules, also inside a DeepSpeed ZeRO-3 run: there transformers
    initialises new weights through collective ZeRO-3 calls, and only the first process counts (a hang)."""
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers has a setter and an unsetter, no getter
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def count_sample_flops(config: Florence2Config, image_size: int) -> SampleFlops:
    """Count one sample of SAMPLE_SHAPE through the model's own forward (image tokens + prompt, labels) and
    backward, on CPU. The weights are allocated but never initialised (`to_empty`): FLOPs depend on shapes
    only, and the large model's random init would take longer than the count. (The meta device would need no
    memory, but the model reads tensor values in its image-token and attention-mask checks.)"""
    with _plain_construction(), torch.device("meta"):
        model = Florence2ForConditionalGeneration(config)
    model = model.to_empty(device="cpu").train()
    pixels = torch.zeros(1, 3, image_size, image_size)
    image_tokens = torch.full((1, image_seq_length(image_size)), config.image_token_id)
    prompt = torch.full((1, SAMPLE_SHAPE["prompt_tokens"]), 3)
    input_ids = torch.cat([image_tokens, prompt], dim=1)
    labels = torch.full((1, SAMPLE_SHAPE["target_tokens"]), 3)

    def train_step() -> int:
        model.zero_grad(set_to_none=True)
        with count_flops() as counter:
            model(input_ids=input_ids, pixel_values=pixels, labels=labels).loss.backward()
        return counter.get_total_flops()

    with torch.no_grad(), count_flops() as counter:
        model.model.get_image_features(pixels)
    vision_forward = counter.get_total_flops()
    full = train_step()
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    frozen = train_step()
    return SampleFlops(vision_forward=vision_forward, full_train=full, frozen_vision_train=frozen)


def regenerate_table(sizes: tuple[str, ...] = ("tiny", "base", "large")) -> dict[str, dict[str, int]]:
    """Fresh counts for the builders' architectures, with exactly the vocabulary `build_random_florence2` gives
    each size (base/large: the released 51,289 tokens + `<image>`, embedding padded to 51,328 rows)."""
    table = {}
    for size in sizes:
        image_size = ARCHITECTURES[size]["image_size"]
        if size == "tiny":
            tokenizer = build_processor(image_size, ARCHITECTURES[size]["text_vocab"]).tokenizer
            num_tokens, image_token = len(tokenizer), tokenizer.image_token_id
        else:  # the same layout, without training a 50k-token tokenizer to count FLOPs
            num_tokens, image_token = RELEASED_VOCAB_SIZE + 1, RELEASED_VOCAB_SIZE
        vocab = padded_vocab_size(num_tokens)
        flops = count_sample_flops(build_config(size, vocab, image_token), image_size)
        table[size] = {"image_size": image_size, "vocab_size": vocab, **asdict(flops)}
    return table


def _stored_flops(size: str) -> SampleFlops:
    entry = MODEL_FLOPS[size]
    return SampleFlops(entry["vision_forward"], entry["full_train"], entry["frozen_vision_train"])


def model_flops(model_name_or_path: str) -> tuple[SampleFlops | None, str]:
    """FLOPs per sample for a checkpoint: counted fresh from a local folder's config.json, else the stored
    count of the size its name says (a stage-2 recipe names a stage-1 output folder that does not exist yet)."""
    folder = Path(model_name_or_path).expanduser()
    if (folder / "config.json").is_file():
        config = Florence2Config.from_pretrained(folder)
        image_size = AutoImageProcessor.from_pretrained(folder).size["height"]  # the model's input size
        return count_sample_flops(config, image_size), f"counted from {folder}/config.json at {image_size} px"
    name = Path(model_name_or_path).name.lower()
    for size in ("large", "base", "tiny"):
        if size in name:
            entry = MODEL_FLOPS[size]
            return _stored_flops(size), (
                f"{size} architecture, {entry['image_size']} px, florence_recipes.budget.MODEL_FLOPS"
            )
    return None, f"unknown: {model_name_or_path!r} is no local folder and its name says no size (base/large)"


# --- samples per epoch -------------------------------------------------------------------------------------


def _known_examples(source: DataSource, max_rows: int | None) -> tuple[float, float, str] | None:
    """(examples, questions per image, where from) for a split of KNOWN_SPLITS, after slicing, max rows and
    fractions; None when unknown."""
    base = source.split.split("[", 1)[0].strip()
    size = KNOWN_SPLITS.get((source.dataset, source.config, base))
    if size is None:
        return None
    (span,) = datasets.ReadInstruction.from_spec(source.split).to_absolute({base: size.rows})
    rows = span.to - span.from_
    rows = min(rows, max_rows) if max_rows is not None else rows
    rows *= source.image_fraction * source.fraction
    examples = rows * size.examples_per_row * source.turn_fraction
    per_image = size.rows * size.examples_per_row / size.images if size.images else 1.0
    return examples, per_image, size.source


def _counted_examples(
    sources: list[DataSource], data_args: DataArguments, seed: int
) -> tuple[int, str] | None:
    """Read local sources and count their training examples (what the run will load); None for Hub ids."""
    from florence_recipes.data.sources import load_train_dataset

    if not all(Path(source.dataset).expanduser().exists() for source in sources):
        return None
    train = load_train_dataset(sources, data_args, seed)
    if not hasattr(train, "__len__"):
        return None
    return len(train), "counted from the local data"


@dataclass
class Budget:
    model: str
    flops_source: str
    mode: str
    world_size: int
    global_batch: int
    samples_per_epoch: float | None
    samples_source: str
    optimizer_steps: int | None
    samples_seen: float | None
    flops_per_sample: int | None
    total_flops: float | None
    mfu: float
    h100_hours: float | None

    def lines(self) -> list[str]:
        def number(value: float | None, unit: str = "") -> str:
            return "unknown" if value is None else f"{value:,.0f}{unit}"

        hours = "unknown" if self.h100_hours is None else f"{self.h100_hours:,.2f}"
        per_sample = "unknown" if self.flops_per_sample is None else f"{self.flops_per_sample / 1e12:.3f}"
        return [
            f"model: {self.model} ({self.mode}); FLOPs/sample {per_sample} TFLOP "
            f"(forward + backward; {self.flops_source})",
            f"GPUs: {self.world_size}; global batch {self.global_batch}",
            f"samples per epoch: {number(self.samples_per_epoch)} ({self.samples_source})",
            f"optimizer steps: {number(self.optimizer_steps)}",
            f"samples seen: {number(self.samples_seen)}",
            f"estimated H100 GPU-hours: {hours} at {self.mfu:.1%} MFU of {H100_PEAK_TFLOPS:.0f} TFLOP/s bf16 "
            f"(total {number(None if self.total_flops is None else self.total_flops / 1e15)} PFLOP)",
        ]


def _epoch_samples(
    sources: list[DataSource], data_args: DataArguments, seed: int
) -> tuple[float | None, float, str]:
    """(samples per epoch or None, questions per image, where the count comes from): the known splits' sizes,
    else a count of the map-style dataset's rows."""
    known = [_known_examples(source, data_args.max_train_samples) for source in sources]
    if all(k is not None for k in known):
        samples_per_epoch = sum(k[0] for k in known)
        per_image = sum(k[0] * k[1] for k in known) / samples_per_epoch if samples_per_epoch else 1.0
        samples_source = "; ".join(dict.fromkeys(k[2] for k in known))
        if data_args.streaming and any(s.image_fraction < 1 or s.turn_fraction < 1 for s in sources):
            samples_source += "; expected value of the seeded image/turn fractions"
        if data_args.multi_image_policy == "skip" and any(s.task.image_column == "images" for s in sources):
            samples_source += "; an upper bound: rows with several images are skipped (multi_image_policy)"
        return samples_per_epoch, per_image, samples_source
    counted = None if data_args.streaming else _counted_examples(sources, data_args, seed)
    if counted is not None:
        return counted[0], 1.0, counted[1]
    return None, 1.0, "unknown: not in florence_recipes.budget.KNOWN_SPLITS"


def compute_budget(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FlorenceTrainingArguments,
    sources: list[DataSource],
) -> Budget:
    world_size = training_args.budget_world_size or training_args.world_size
    global_batch = (
        training_args.per_device_train_batch_size * world_size * training_args.gradient_accumulation_steps
    )
    streamed = data_args.streaming
    samples_per_epoch, per_image, samples_source = _epoch_samples(sources, data_args, training_args.seed)
    if training_args.max_steps > 0:
        steps: int | None = training_args.max_steps
        samples_seen: float | None = steps * global_batch
    elif samples_per_epoch is not None:
        # The Trainer's count: batches per process per epoch, then updates (a partial accumulation counts).
        batches = math.ceil(samples_per_epoch / world_size / training_args.per_device_train_batch_size)
        updates = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
        steps = math.ceil(training_args.num_train_epochs * updates)
        samples_seen = samples_per_epoch * training_args.num_train_epochs
    else:
        steps = samples_seen = None
    flops, flops_source = model_flops(model_args.model_name_or_path)
    # The vision tower runs once per image of a batch only with image-grouped batches of a map-style dataset.
    shares_images = training_args.dedup_vision and training_args.group_by_image and not streamed
    flops_per_sample = (
        None
        if flops is None
        else flops.per_sample(model_args.training_mode, per_image if shares_images else 1.0)
    )
    total = None if samples_seen is None or flops_per_sample is None else samples_seen * flops_per_sample
    mfu = training_args.budget_mfu
    hours = None if total is None else total / (H100_PEAK_TFLOPS * 1e12 * mfu) / 3600
    return Budget(
        model=model_args.model_name_or_path,
        flops_source=flops_source,
        mode=model_args.training_mode,
        world_size=world_size,
        global_batch=global_batch,
        samples_per_epoch=samples_per_epoch,
        samples_source=samples_source,
        optimizer_steps=steps,
        samples_seen=samples_seen,
        flops_per_sample=flops_per_sample,
        total_flops=total,
        mfu=mfu,
        h100_hours=hours,
    )


def report_budget(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FlorenceTrainingArguments,
    sources: list[DataSource],
) -> bool:
    """Print the run's budget and return `budget_only` (True: stop here). Only the first process computes it:
    no collective call, so the others go on to their own dataset loading meanwhile."""
    if (training_args.do_train or training_args.budget_only) and training_args.process_index == 0:
        budget = compute_budget(model_args, data_args, training_args, sources)
        print("\n".join(["***** Budget *****", *(f"  {line}" for line in budget.lines())]), flush=True)
    return training_args.budget_only


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate florence_recipes.budget.MODEL_FLOPS")
    parser.add_argument(
        "--regenerate", action="store_true", help="count FLOPs per sample and print the table"
    )
    parser.add_argument(
        "--sizes", nargs="+", default=["tiny", "base", "large"], choices=sorted(ARCHITECTURES)
    )
    args = parser.parse_args(argv)
    if not args.regenerate:
        parser.error("nothing to do: pass --regenerate")
    for size, entry in regenerate_table(tuple(args.sizes)).items():
        print(f"    {json.dumps(size)}: {json.dumps(entry)},")
    print(f"# image tokens at 768 px: {image_seq_length(768)}")


if __name__ == "__main__":
    main()
