"""Image helpers every module uses: RGB conversion as the model sees it, sizes from headers, image grouping."""

from __future__ import annotations

import io
from collections.abc import Hashable, Sequence
from typing import Any

from PIL import ExifTags, ImageOps
from PIL import Image as PILImage

# Rotations by 90 or 270 degrees (EXIF orientations 5-8) swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Upright RGB whatever the source mode: EXIF rotation applied, transparency flattened onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: rescale to 8 bits instead of clipping everything above 255 to white.
        extrema = image.getextrema()
        high = max(int(extrema[1]), 1)
        image = image.point(lambda v: v * 255.0 / high, mode="F").convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = PILImage.new("RGBA", image.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def image_size(image: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of an undecoded image (`{"bytes", "path"}`) as the collator feeds it to the model.

    Only the header is read. The collator applies the EXIF orientation (`to_rgb`), so sizes are given in that
    upright frame, whose width and height are swapped for 90/270-degree orientations.
    """
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with PILImage.open(source) as picture:
        width, height = picture.size
        orientation = picture.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def image_groups(image_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Positions of the rows that show each image, images in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        groups.setdefault(image_id, []).append(index)
    return groups
