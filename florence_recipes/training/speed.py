"""Speed-ups that change how the work is scheduled, not what is computed.

* `ImageGroupedSampler`: questions about the same image land in the same batch (DocVQA has ~3 per image),
  so that the vision tower can run once per unique image (`Florence2Collator(dedup_images=True)` +
  `merge_image_features`). The loss is the plain path's loss: each question still sees its own image
  features, they are only computed once.
* `ImageFeatureCache`: with a frozen vision tower, the projected image features of every unique training
  image are computed once (in eval mode, so they are deterministic) and reused for every question and
  every epoch, in RAM or in a memory-mapped file, stored in the training dtype.
* `length_sorted_order` + `restore_dataset_order`: evaluation batches of similar prompt length (less
  padding in batched generation); predictions are put back in dataset order before scoring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from transformers import BaseImageProcessor, PreTrainedModel, TrainingArguments

from florence_recipes.data.images import image_groups, to_rgb
from florence_recipes.data.loading import column_values
from florence_recipes.errors import RecipeError
from florence_recipes.models.loading import vision_parameters

logger = logging.getLogger(__name__)

_CACHE_META = "meta.json"
_CACHE_DATA = "features.bin"
# numpy has no bfloat16: the memory-mapped file holds the raw bits as same-width integers.
_STORAGE_INTS = {2: np.int16, 4: np.int32}


class ImageGroupedSampler(Sampler[int]):
    """Random order of images, each image's questions consecutive: a batch holds few distinct images.

    Reshuffled every epoch (`set_epoch`, called by the Trainer through accelerate) from `seed + epoch`, so a
    resumed run sees the same order.
    """

    def __init__(self, image_ids: Sequence[str], seed: int = 0) -> None:
        self.groups = list(image_groups(image_ids).values())
        self.num_samples = len(image_ids)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            yield from self.groups[group]

    def __len__(self) -> int:
        return self.num_samples


def length_sorted_order(prompts: Sequence[str], image_ids: Sequence[str]) -> list[int]:
    """Evaluation order: longest prompts first (an out-of-memory error then shows in the first batch), the
    questions about one image kept together so that `dedup_vision` runs the tower once for all of them."""
    ranked = [sorted(group, key=lambda i: -len(prompts[i])) for group in image_groups(image_ids).values()]
    ranked.sort(key=lambda group: -len(prompts[group[0]]))
    return [index for group in ranked for index in group]


def restore_dataset_order(values: Sequence[Any], order: Sequence[int]) -> list[Any]:
    """Put per-sample values produced in `order` (value k belongs to example order[k]) back in dataset order."""
    if len(values) != len(order):
        raise ValueError(
            f"{len(values)} evaluation outputs for {len(order)} examples: cannot restore their order"
        )
    restored: list[Any] = [None] * len(order)
    for value, index in zip(values, order, strict=True):
        restored[index] = value
    return restored


def merge_image_features(
    model: PreTrainedModel, input_ids: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """Text embeddings with each question's image features at its image-token positions.

    The same operation as `Florence2Model.forward` performs on `pixel_values`, so calling the model with the
    returned `inputs_embeds` gives the same loss as the plain path.
    """
    embeddings = model.get_input_embeddings()(input_ids)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
    if int(mask.sum()) != image_features.shape[0] * image_features.shape[1]:
        raise RecipeError(
            f"{int(mask.sum())} image tokens in the batch but {image_features.shape[0]} x "
            f"{image_features.shape[1]} image features: processor and model disagree on image_seq_length"
        )
    return embeddings.masked_scatter(mask, image_features.to(embeddings.device, embeddings.dtype))


@dataclass
class _PixelCollator:
    image_processor: BaseImageProcessor

    def __call__(self, features: list[dict[str, Any]]) -> torch.Tensor:
        images = [to_rgb(f["image"]) for f in features]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]


@dataclass
class ImageFeatureCache:
    """Projected image features of a frozen vision tower: one row per unique `image_id`, kept on the CPU.

    The training collator looks rows up in its DataLoader workers, so the training loop receives
    `image_features` like any other input tensor. A disk cache travels to worker processes as its file path
    (each worker maps the file itself) instead of as a pickled copy of the features.
    """

    features: torch.Tensor  # (num_images, image_seq_length, hidden) in RAM or backed by a memory-mapped file
    rows: dict[str, int]  # image_id -> row of `features`
    path: Path | None = None  # the memory-mapped file, for a disk cache

    def lookup(self, image_ids: Sequence[str]) -> torch.Tensor:
        return self.features[torch.tensor([self.rows[image_id] for image_id in image_ids])]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["features"] = (tuple(self.features.shape), self.features.dtype)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["path"] is not None:
            shape, dtype = state["features"]
            state["features"] = _as_tensor(_open_memmap(state["path"], shape, dtype, "c"), dtype)
        self.__dict__.update(state)


def feature_fingerprint(
    model: PreTrainedModel, image_processor: BaseImageProcessor, dtype: torch.dtype, dataset: Dataset
) -> str:
    """Changes whenever cached features would: vision weights, image preprocessing, dtype or images."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.config.vision_config.to_json_string().encode())
    digest.update(image_processor.to_json_string().encode())
    digest.update(str(dtype).encode())
    # datasets' own fingerprint: a hash of the source files and every transform applied to them.
    digest.update(str(getattr(dataset, "_fingerprint", len(dataset))).encode())
    for name, param in sorted(vision_parameters(model).items()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def build_feature_cache(
    model: PreTrainedModel,
    image_processor: BaseImageProcessor,
    dataset: Dataset,
    *,
    storage: str,
    dtype: torch.dtype,
    device: torch.device | str,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
) -> ImageFeatureCache:
    """Compute (or, for `storage="disk"`, reuse) the image features of every unique image of `dataset`.

    The vision modules must be frozen: features computed once are only correct while the weights that
    produce them do not change. They run in eval mode (no stochastic depth), exactly as in training,
    where `apply_training_mode` switches stochastic depth off for a frozen tower.
    """
    _check_cacheable(model, storage)
    groups = image_groups(column_values(dataset, "image_id"))
    rows = {image_id: row for row, image_id in enumerate(groups)}
    shape = (len(rows), image_processor.image_seq_length, model.config.vision_config.projection_dim)
    fingerprint = feature_fingerprint(model, image_processor, dtype, dataset)

    if storage == "disk":
        if cache_dir is None:
            raise RecipeError("feature_cache=disk needs feature_cache_dir")
        cache_dir = Path(cache_dir)
        meta_path = cache_dir / _CACHE_META
        if meta_path.is_file() and json.loads(meta_path.read_text())["fingerprint"] == fingerprint:
            logger.info("Reusing %d cached image features from %s", len(rows), cache_dir)
            mapped = _open_memmap(cache_dir / _CACHE_DATA, shape, dtype, "c")
            return ImageFeatureCache(_as_tensor(mapped, dtype), rows, cache_dir / _CACHE_DATA)
        if meta_path.is_file():
            logger.warning("%s holds features of another model / image size / dtype: rebuilding", cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)  # the meta file is written last: no meta = incomplete cache
        # A new file, moved into place when complete: processes still mapping the old one keep reading it.
        partial_path = cache_dir / f"{_CACHE_DATA}.{os.getpid()}.partial"
        mapped = _open_memmap(partial_path, shape, dtype, "w+")
        features = _as_tensor(mapped, dtype)
    else:
        features = torch.empty(shape, dtype=dtype)

    logger.info("Computing image features of %d unique images (%s cache)", len(rows), storage)
    unique = dataset.select([positions[0] for positions in groups.values()]).select_columns(["image"])
    loader = DataLoader(
        unique, batch_size=batch_size, num_workers=num_workers, collate_fn=_PixelCollator(image_processor)
    )
    _fill_features(model, loader, features, device, autocast)
    if storage == "disk":
        mapped.flush()
        os.replace(partial_path, cache_dir / _CACHE_DATA)
        meta = {"fingerprint": fingerprint, "shape": list(shape), "dtype": str(dtype)}
        meta_path.write_text(json.dumps(meta))
        return ImageFeatureCache(features, rows, cache_dir / _CACHE_DATA)
    return ImageFeatureCache(features, rows)


def _check_cacheable(model: PreTrainedModel, storage: str) -> None:
    if storage not in ("memory", "disk"):
        raise RecipeError(f"feature_cache={storage!r} is not one of: memory, disk")
    trainable = [name for name, param in vision_parameters(model).items() if param.requires_grad]
    if trainable:
        raise RecipeError(
            f"feature_cache={storage} needs a frozen vision tower (training_mode frozen_vision or lora), "
            f"but {trainable[0]} is trainable"
        )


def _fill_features(
    model: PreTrainedModel,
    loader: DataLoader,
    features: torch.Tensor,
    device: torch.device | str,
    autocast: contextlib.AbstractContextManager | None,
) -> None:
    """`features[i]` = the projected image features of the loader's i-th image, in eval mode (no stochastic
    depth, as a frozen tower trains)."""
    was_training = model.training
    model.eval()
    start = 0
    with torch.no_grad(), autocast or contextlib.nullcontext():
        for pixel_values in loader:
            batch = model.get_image_features(pixel_values=pixel_values.to(device)).pooler_output
            features[start : start + len(batch)] = batch.to("cpu", dtype=features.dtype)
            start += len(batch)
    model.train(was_training)


def _open_memmap(path: Path, shape: tuple[int, ...], dtype: torch.dtype, mode: str) -> np.memmap:
    # mode "c" (copy-on-write) maps the file for reading: writable in memory, never written back.
    storage = _STORAGE_INTS[torch.empty((), dtype=dtype).element_size()]
    return np.memmap(path, dtype=storage, mode=mode, shape=shape)


def _as_tensor(mapped: np.memmap, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(mapped).view(dtype)


def feature_cache_dtype(args: TrainingArguments, model: PreTrainedModel) -> torch.dtype:
    """The dtype the text encoder consumes image features in: the mixed-precision dtype, else the weights'."""
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return next(iter(vision_parameters(model).values())).dtype
