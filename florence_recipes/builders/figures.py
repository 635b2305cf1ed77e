"""Synthetic figures rendered with PIL for the offline Cauldron subsets: bar charts, cycle diagrams,
infographics and coloured shapes. Like the documents (`florence_recipes.builders.documents`), each renderer
takes a ``random.Random`` and returns the image with what it drew, so every question is answerable from it."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image, ImageDraw

from florence_recipes.builders.documents import ImageSize, fitted_font, font, wrap_words

_SHAPE_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_SHAPE_BACKGROUNDS = ("#ffffff", "#f2f2f2", "#fdf6e3", "#eef3f8")
_CHART_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")

# Chart themes: title and the category labels it may show.
_CHART_THEMES = (
    ("Sales by Region (millions)", ("North", "South", "East", "West", "Central")),
    ("Visitors per Year (thousands)", ("2015", "2016", "2017", "2018", "2019", "2020")),
    ("Drinks Sold per Day", ("Tea", "Coffee", "Juice", "Milk", "Water")),
    ("Exports by Country (tons)", ("France", "Italy", "Spain", "Poland", "Greece", "Norway")),
)
# Diagram themes: title, stages in order, and whether the last stage leads back to the first.
_DIAGRAM_THEMES = (
    ("Life cycle of a butterfly", ("egg", "caterpillar", "pupa", "butterfly"), True),
    ("Life cycle of a frog", ("egg", "tadpole", "froglet", "frog"), True),
    ("The water cycle", ("evaporation", "condensation", "precipitation", "collection"), True),
    ("Life cycle of a plant", ("seed", "sprout", "seedling", "plant", "flower"), True),
    ("A food chain", ("grass", "grasshopper", "frog", "snake", "hawk"), False),
)
_INFOGRAPHIC_THEMES = ("Digital Habits", "Life in the City", "Work and Leisure", "Consumer Trends")
_INFOGRAPHIC_SUBJECTS = ("adults", "teenagers", "students", "employees", "households", "seniors")
_INFOGRAPHIC_ACTIVITIES = (
    "shop online",
    "use a smartphone daily",
    "work from home",
    "read the news online",
    "use social media",
    "stream music",
    "cycle to work",
    "recycle plastic",
)
_INFOGRAPHIC_COLOURS = ("#1f4e79", "#7b2d26", "#2d6a4f", "#5a189a", "#b5651d")


@dataclass(frozen=True)
class RenderedChart:
    image: Image.Image
    title: str
    labels: list[str]
    values: list[int]  # distinct, so "highest"/"lowest" questions have one answer


@dataclass(frozen=True)
class RenderedDiagram:
    image: Image.Image
    title: str
    stages: list[str]  # in the order the arrows follow
    cyclic: bool


@dataclass(frozen=True)
class RenderedInfographic:
    image: Image.Image
    title: str
    year: str
    stats: list[tuple[str, str]]  # (subject and activity, e.g. "adults shop online", percentage, e.g. "72%")


class ShapeObject(NamedTuple):
    label: str  # "rectangle", "circle" or "triangle"
    bbox: tuple[int, int, int, int]  # tight pixel box, xyxy with exclusive x1/y1 (PIL's getbbox convention)


@dataclass(frozen=True)
class RenderedShapes:
    image: Image.Image
    objects: list[ShapeObject]


# ---------------------------------------------------------------------------------------------------------
# Charts, diagrams, infographics


def render_bar_chart(rng: random.Random, image_size: ImageSize = (384, 384)) -> RenderedChart:
    """A titled vertical bar chart with category labels under the bars and each value printed above its bar."""
    width, height = image_size
    scale = min(width, height) / 384
    title, pool = rng.choice(_CHART_THEMES)
    count = rng.randint(3, min(6, len(pool)))
    labels = list(pool[:count]) if pool[0].isdigit() else rng.sample(pool, count)  # keep years in order
    values = rng.sample(range(5, 96), count)
    image = Image.new("RGB", image_size, "white")
    draw = ImageDraw.Draw(image)
    margin = round(16 * scale)
    title_font = fitted_font(title, width - 2 * margin, round(22 * scale))
    draw.text(((width - title_font.getlength(title)) / 2, margin), title, font=title_font, fill="#111111")
    label_font, value_font = font(round(15 * scale)), font(round(16 * scale))
    left, right = margin + round(10 * scale), width - margin
    top = margin + title_font.size + round(30 * scale)
    bottom = height - margin - round(26 * scale)
    draw.line((left, top, left, bottom), fill="#333333", width=2)
    draw.line((left, bottom, right, bottom), fill="#333333", width=2)
    if rng.random() < 0.5:  # light gridlines
        for fraction in (0.25, 0.5, 0.75):
            y = bottom - (bottom - top) * fraction
            draw.line((left + 2, y, right, y), fill="#dddddd")
    slot = (right - left) / count
    colours = (
        [rng.choice(_CHART_COLOURS)] * count if rng.random() < 0.6 else rng.sample(_CHART_COLOURS, count)
    )
    for index, (label, value, colour) in enumerate(zip(labels, values, colours, strict=True)):
        x0 = left + slot * index + slot * 0.2
        x1 = left + slot * (index + 0.8)
        y0 = bottom - (bottom - top) * value / 100
        draw.rectangle((x0, y0, x1, bottom - 1), fill=colour)
        text = str(value)
        draw.text(
            ((x0 + x1 - value_font.getlength(text)) / 2, y0 - value_font.size - 4),
            text,
            font=value_font,
            fill="#111111",
        )
        fitted = fitted_font(label, slot - 4, label_font.size)
        draw.text(
            ((x0 + x1 - fitted.getlength(label)) / 2, bottom + 6 * scale), label, font=fitted, fill="#111111"
        )
    return RenderedChart(image=image, title=title, labels=labels, values=values)


def _arrow(
    draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], size: float
) -> None:
    draw.line((start, end), fill="#333333", width=max(2, round(size / 5)))
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    head = [
        end,
        (end[0] - size * math.cos(angle - 0.45), end[1] - size * math.sin(angle - 0.45)),
        (end[0] - size * math.cos(angle + 0.45), end[1] - size * math.sin(angle + 0.45)),
    ]
    draw.polygon(head, fill="#333333")


def render_cycle_diagram(rng: random.Random, image_size: ImageSize = (384, 384)) -> RenderedDiagram:
    """AI2D-style diagram: labelled boxes around an ellipse joined by arrows in stage order."""
    width, height = image_size
    scale = min(width, height) / 384
    title, stages, cyclic = rng.choice(_DIAGRAM_THEMES)
    image = Image.new("RGB", image_size, "white")
    draw = ImageDraw.Draw(image)
    margin = round(14 * scale)
    title_font = fitted_font(title, width - 2 * margin, round(22 * scale))
    draw.text(((width - title_font.getlength(title)) / 2, margin), title, font=title_font, fill="#111111")
    label_font = font(round(16 * scale))
    pad = round(7 * scale)
    centre_y = (height + margin + title_font.size) / 2
    radius_x, radius_y = width * 0.3, (height - title_font.size - 2 * margin) * 0.32
    start, direction = rng.uniform(0, 2 * math.pi), rng.choice((1, -1))
    fill = rng.choice(("#fff2cc", "#dae8fc", "#d5e8d4", "#f8cecc"))
    boxes = []
    for index, stage in enumerate(stages):
        angle = start + direction * 2 * math.pi * index / len(stages)
        cx, cy = width / 2 + radius_x * math.cos(angle), centre_y + radius_y * math.sin(angle)
        half_w, half_h = label_font.getlength(stage) / 2 + pad, label_font.size / 2 + pad
        boxes.append((cx, cy, half_w, half_h))
    for (ax, ay, ahw, ahh), (bx, by, bhw, bhh) in itertools.pairwise(boxes + boxes[:1] if cyclic else boxes):
        dx, dy = bx - ax, by - ay
        # Fractions of the centre-to-centre segment spent inside each box, so arrows run edge to edge.
        leave = min(ahw / abs(dx) if dx else math.inf, ahh / abs(dy) if dy else math.inf) + 0.04
        enter = min(bhw / abs(dx) if dx else math.inf, bhh / abs(dy) if dy else math.inf) + 0.04
        if leave + enter < 1:
            _arrow(draw, (ax + dx * leave, ay + dy * leave), (bx - dx * enter, by - dy * enter), 10 * scale)
    for stage, (cx, cy, half_w, half_h) in zip(stages, boxes, strict=True):
        draw.rounded_rectangle(
            (cx - half_w, cy - half_h, cx + half_w, cy + half_h), 6, fill=fill, outline="#333333"
        )
        draw.text((cx - half_w + pad, cy - half_h + pad - 2 * scale), stage, font=label_font, fill="#111111")
    return RenderedDiagram(image=image, title=title, stages=list(stages), cyclic=cyclic)


def render_infographic(rng: random.Random, image_size: ImageSize = (384, 512)) -> RenderedInfographic:
    """A poster: coloured header with a titled year, then large percentages each explained by a caption."""
    width, height = image_size
    scale = width / 384
    year = str(rng.randint(2012, 2023))
    title = f"{rng.choice(_INFOGRAPHIC_THEMES)} {year}"
    colour = rng.choice(_INFOGRAPHIC_COLOURS)
    image = Image.new("RGB", image_size, "#fbfbf8")
    draw = ImageDraw.Draw(image)
    margin = round(18 * scale)
    title_font = fitted_font(title, width - 2 * margin, round(30 * scale))
    header = margin * 2 + title_font.size
    draw.rectangle((0, 0, width, header), fill=colour)
    draw.text((margin, margin), title, font=title_font, fill="white")
    value_font, caption_font = font(round(36 * scale)), font(round(16 * scale))
    icon = round(26 * scale)
    text_x = margin + icon + round(14 * scale)
    row_height = value_font.size + 2 * caption_font.size + round(24 * scale)
    y = header + round(18 * scale)
    stats: list[tuple[str, str]] = []
    for activity, percent in zip(
        rng.sample(_INFOGRAPHIC_ACTIVITIES, rng.randint(2, 4)), rng.sample(range(5, 96), 4), strict=False
    ):
        if y + row_height > height - margin:
            break
        subject = rng.choice(_INFOGRAPHIC_SUBJECTS)
        value = f"{percent}%"
        draw.ellipse((margin, y + 6 * scale, margin + icon, y + 6 * scale + icon), fill=colour)
        draw.text((text_x, y), value, font=value_font, fill=colour)
        caption_y = y + value_font.size + round(6 * scale)
        for line in wrap_words(f"of {subject} {activity}".split(), caption_font, width - text_x - margin):
            draw.text((text_x, caption_y), line, font=caption_font, fill="#222222")
            caption_y += caption_font.size + round(4 * scale)
        stats.append((f"{subject} {activity}", value))
        y += row_height
    footer = f"Source: survey of {rng.randint(5, 40) * 100:,} people"
    draw.text((margin, height - margin - caption_font.size), footer, font=caption_font, fill="#666666")
    return RenderedInfographic(image=image, title=title, year=year, stats=stats)


# ---------------------------------------------------------------------------------------------------------
# Shapes for detection


def render_shapes(
    rng: random.Random, image_size: ImageSize = (256, 256), max_objects: int = 4
) -> RenderedShapes:
    """1..max_objects non-overlapping coloured rectangles, circles and triangles on a plain background.

    Each shape is drawn through its own mask and its box is the mask's bounding box, so boxes are exactly
    tight; shapes keep a gap between them and from the border so no box hides part of another shape.
    """
    width, height = image_size
    image = Image.new("RGB", image_size, rng.choice(_SHAPE_BACKGROUNDS))
    edge, gap = 4, 6
    min_side, max_side = max(12, min(width, height) // 10), max(16, min(width, height) // 3)
    placed: list[tuple[int, int, int, int]] = []
    objects: list[ShapeObject] = []
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(50):
            w, h = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
            x0, y0 = rng.randint(edge, width - edge - w), rng.randint(edge, height - edge - h)
            box = (x0, y0, x0 + w, y0 + h)
            if all(
                box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1]
                for o in placed
            ):
                break
        else:
            continue  # crowded: fewer shapes rather than overlapping ones
        label = rng.choice(("rectangle", "circle", "triangle"))
        mask = Image.new("L", image_size, 0)
        mask_draw = ImageDraw.Draw(mask)
        if label == "rectangle":
            mask_draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=255)
        elif label == "circle":
            side = min(w, h)
            mask_draw.ellipse((x0, y0, x0 + side - 1, y0 + side - 1), fill=255)
        else:
            apex = rng.randint(x0, x0 + w - 1)
            mask_draw.polygon([(apex, y0), (x0, y0 + h - 1), (x0 + w - 1, y0 + h - 1)], fill=255)
        image.paste(rng.choice(_SHAPE_COLOURS), mask=mask)
        bbox = mask.getbbox()
        assert bbox is not None  # the mask always has drawn pixels
        placed.append(box)
        objects.append(ShapeObject(label=label, bbox=bbox))
    return RenderedShapes(image=image, objects=objects)
