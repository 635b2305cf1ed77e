"""Writing a dataset folder the way the Hub stores it (parquet shards, a dataset card with its configs and
split sizes), idempotently: each build runs in a hidden sibling folder that is moved into place, with a
marker file written last; a folder whose marker records the same arguments is returned untouched."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import yaml
from datasets import Dataset, Features
from PIL import Image as PILImage

from florence_recipes.builders.model import BUILD_MARKER

# Bump when the generated content changes, so that folders built by an older version get rebuilt.
_BUILD_VERSION = 1


def seeded_rng(seed: int, *parts: str) -> random.Random:
    """An independent stream per (seed, purpose); str seeds go through sha512, so they do not depend on
    PYTHONHASHSEED."""
    return random.Random(":".join([str(seed), *parts]))


def png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(rows: dict[str, list[Any]], features: Features, path: Path) -> dict[str, int]:
    """Write one shard the way ``push_to_hub`` does (features kept in the parquet's ``huggingface``
    metadata) and return its split info for the dataset card."""
    dataset = Dataset.from_dict(rows, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One progress bar per tiny shard is noise in smoke runs; restore the caller's setting afterwards.
    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset.to_parquet(str(path))
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    return {"num_bytes": dataset.data.nbytes, "num_examples": dataset.num_rows}


def dataset_card(title: str, body: str, infos: list[dict[str, Any]], configs: list[dict[str, Any]]) -> str:
    """README.md with the YAML header the Hub writes; ``load_dataset`` reads ``configs`` to find the
    shards and checks each split's ``num_examples``."""
    header = {"dataset_info": infos[0] if len(infos) == 1 else infos, "configs": configs}
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n# {title}\n\n{body}\n"


def split_info(
    features: Features, splits: dict[str, dict[str, int]], sizes: dict[str, int]
) -> dict[str, Any]:
    return {
        "features": features._to_yaml_list(),
        "splits": [{"name": name, **info} for name, info in splits.items()],
        "download_size": sum(sizes.values()),
        "dataset_size": sum(info["num_bytes"] for info in splits.values()),
    }


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def build_once(
    out_dir: str | os.PathLike[str],
    builder: str,
    args: dict[str, Any],
    outputs: Sequence[str],
    write: Callable[[Path], None],
) -> Path:
    """Run ``write(folder)`` unless ``out_dir`` already holds this exact build.

    ``outputs`` are the top-level names ``write`` creates; only those (and the ones recorded by a previous
    build's marker) are replaced, so a folder that also holds other files keeps them.
    """
    out_dir = Path(out_dir)
    # Round-trip through JSON so tuples compare equal to the lists read back from the marker.
    record = json.loads(
        json.dumps({"builder": builder, "version": _BUILD_VERSION, "args": args, "outputs": sorted(outputs)})
    )
    if _read_marker(out_dir) == record:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling folder keeps renames on one filesystem; a crash leaves only this hidden folder behind.
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write(staging)
        (staging / BUILD_MARKER).write_text(json.dumps(record, indent=2) + "\n")
        try:
            staging.rename(out_dir)  # atomic when out_dir is missing or empty
        except OSError:
            _install(staging, out_dir, record)
    finally:
        _remove(staging)
    return out_dir


def _install(staging: Path, out_dir: Path, record: dict[str, Any]) -> None:
    """Replace a non-empty ``out_dir``'s build outputs with the staged ones, marker last."""
    previous = _read_marker(out_dir)
    if previous == record:  # another process finished the same build meanwhile
        return
    (out_dir / BUILD_MARKER).unlink(missing_ok=True)  # from here on the folder reads as partial
    stale = set(record["outputs"])
    if previous and isinstance(previous.get("outputs"), list):
        # Only plain names, so a hand-edited marker cannot point outside the folder.
        stale.update(
            name for name in previous["outputs"] if isinstance(name, str) and Path(name).name == name
        )
    for name in sorted(stale - {"", ".", ".."}):
        _remove(out_dir / name)
    for name in record["outputs"]:
        (staging / name).rename(out_dir / name)
    (staging / BUILD_MARKER).rename(out_dir / BUILD_MARKER)
