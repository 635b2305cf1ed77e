"""HTML reports of an evaluation: metrics, a per-question-type bar chart and a gallery of examples.

`write_report` renders one evaluation (worst examples first, with thumbnails of their documents);
`write_comparison_report` renders two evaluations of the same items side by side and lists the items
whose answer changed, like the before/after figure of the Florence-2 fine-tuning blog post. Pages are
static files (HTML + PNG/JPEG next to it), so they open from disk, in CI artifacts or on any web server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment
from matplotlib.figure import Figure
from PIL import Image

from florence_recipes.data.images import to_rgb

REPORT_FILE = "report.html"
COMPARISON_FILE = "comparison.html"
THUMBNAIL_SIZE = (360, 480)  # fits a portrait page; DocVQA scans are ~1700x2200

# Returns the image of the record at a position of the records list (= dataset row).
ImageLoader = Callable[[int], Image.Image]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.gallery td { max-width: 22rem; } .gallery img { width: 200px; border: 1px solid #ccc; }
.score { display: inline-block; min-width: 3.2rem; padding: 0.1rem 0.4rem; border-radius: 0.3rem;
         color: white; font-weight: 600; text-align: center; }
.pred { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.tags { color: #666; font-size: 0.85rem; } .note { background: #fff6d5; padding: 0.5rem 0.8rem; }
"""

_MACROS = """
{% macro score_badge(value) -%}
{% if value is none %}<span class="score" style="background:#999">n/a</span>
{%- else %}<span class="score" style="background:hsl({{ (value * 120) | round }},65%,38%)">
{{- '%.3f' % value }}</span>{% endif %}
{%- endmacro %}
{% macro pred(text) -%}
<div class="pred">{% if text %}{{ text }}{% else %}<em class="tags">(empty)</em>{% endif %}</div>
{%- endmacro %}
{% macro gold(answers) -%}
{% if answers %}{{ answers | join(' | ') }}{% else %}<em>hidden</em>{% endif %}
{%- endmacro %}
"""

_REPORT_TEMPLATE = (
    _MACROS
    + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ style }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
{% if metrics.note %}<p class="note">{{ metrics.note }}</p>{% endif %}
<h2>Metrics</h2>
<table>
<tr><th>items</th><th>scored</th><th>skipped</th>{% for m in metric_names %}<th>{{ m }}</th>{% endfor %}</tr>
<tr><td class="num">{{ metrics.count }}</td><td class="num">{{ metrics.scored }}</td>
<td class="num">{{ metrics.skipped }}</td>
{% for m in metric_names %}<td class="num">{{ '%.4f' % metrics[m] }}</td>{% endfor %}</tr>
</table>
{% if metrics.unreadable %}<p id="unreadable" class="note">{{ metrics.unreadable }} unreadable item(s), skipped as
bad samples, score 0 in the metrics above (every item counts). Over the readable items only:
{% for m in metric_names if (m ~ '_over_readable') in metrics %}{{ m }}_over_readable
{{ '%.4f' % metrics[m ~ '_over_readable'] }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}
{% if per_type %}
<h2>Per question type</h2>
<img id="per-type-chart" src="{{ chart }}" alt="{{ headline }} per question type">
<table>
<tr><th>type</th><th>items</th>{% for m in metric_names %}<th>{{ m }}</th>{% endfor %}</tr>
{% for tag, row in per_type.items() %}<tr><td>{{ tag }}</td><td class="num">{{ row.count }}</td>
{% for m in metric_names %}<td class="num">{{ '%.4f' % row[m] }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endif %}
<h2>Examples{% if metrics.scored %}, worst first{% endif %}</h2>
<p>{{ gallery | length }} of {{ metrics.count }} shown; every item is in predictions.jsonl.</p>
<table class="gallery">
<tr><th>document</th><th>question</th><th>prediction</th><th>gold answers</th><th>{{ headline }}</th></tr>
{% for item in gallery %}<tr>
<td><img src="{{ item.thumbnail }}" alt="document {{ item.record.image_id }}"></td>
<td>{{ item.record.question }}<div class="tags">id {{ item.record.id }}
{%- if item.record.tags %} · {{ item.record.tags | join(', ') }}{% endif %}</div></td>
<td>{{ pred(item.record.prediction) }}</td>
<td>{{ gold(item.record.answers) }}</td>
<td>{{ score_badge(item.record.score) }}</td>
</tr>
{% endfor %}</table>
</body></html>
"""
)

_COMPARISON_TEMPLATE = (
    _MACROS
    + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ style }}</style></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
<h2>Metrics</h2>
<table>
<tr><th>metric</th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th><th>change</th></tr>
{% for m in metric_names %}<tr><td>{{ m }}</td><td class="num">{{ '%.4f' % before[m] }}</td>
<td class="num">{{ '%.4f' % after[m] }}</td><td class="num">{{ '%+.4f' % (after[m] - before[m]) }}</td></tr>
{% endfor %}</table>
<p id="changed-summary">{{ changed | length }} of {{ after.count }} answers changed
{%- if metric_names %}: {{ improved }} improved, {{ regressed }} got worse, {{ changed | length - improved - regressed }}
scored the same{% endif %}.</p>
{% if chart %}<img id="per-type-chart" src="{{ chart }}" alt="{{ headline }} per question type">{% endif %}
<h2>Answers that changed</h2>
<p>{{ gallery | length }} of {{ changed | length }} shown{% if metric_names %}, biggest improvements first,
regressions last{% endif %}.</p>
<table class="gallery">
<tr><th>document</th><th>question</th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th><th>gold answers</th></tr>
{% for item in gallery %}<tr>
<td><img src="{{ item.thumbnail }}" alt="document {{ item.after.image_id }}"></td>
<td>{{ item.after.question }}<div class="tags">id {{ item.after.id }}
{%- if item.after.tags %} · {{ item.after.tags | join(', ') }}{% endif %}</div></td>
<td>{{ pred(item.before.prediction) }}{{ score_badge(item.before.score) }}</td>
<td>{{ pred(item.after.prediction) }}{{ score_badge(item.after.score) }}</td>
<td>{{ gold(item.after.answers) }}</td>
</tr>
{% endfor %}</table>
</body></html>
"""
)

_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _metric_names(metrics: dict[str, Any], candidates: Sequence[str]) -> list[str]:
    return [m for m in candidates if m in metrics]


def _write_thumbnails(
    folder: Path, records: Sequence[dict[str, Any]], positions: Sequence[int], images: ImageLoader
) -> dict[int, str]:
    """One JPEG per document (questions about the same image share it); returns position -> relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, str] = {}
    paths: dict[int, str] = {}
    for position in positions:
        image_id = records[position]["image_id"]
        if image_id not in by_image:
            thumbnail = to_rgb(images(position))
            thumbnail.thumbnail(THUMBNAIL_SIZE)
            name = f"{len(by_image):05d}.jpg"
            thumbnail.save(folder / name, quality=85)
            by_image[image_id] = f"{folder.name}/{name}"
        paths[position] = by_image[image_id]
    return paths


def _bar_chart(path: Path, groups: dict[str, list[float]], series: Sequence[str], headline: str) -> None:
    """Horizontal bars of `headline` per question type (one bar per series and type), values annotated."""
    tags = list(groups)
    height = 0.8 / len(series)
    figure = Figure(figsize=(8, 1.2 + 0.45 * len(tags) * len(series)), layout="constrained")
    axes = figure.subplots()
    rows = np.arange(len(tags))
    for index, name in enumerate(series):
        values = [groups[tag][index] for tag in tags]
        offset = index - (len(series) - 1) / 2  # first series on top within each type (y is inverted)
        bars = axes.barh(rows + offset * height, values, height=height, label=name)
        axes.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    axes.set_yticks(rows, tags)
    axes.invert_yaxis()  # first type at the top
    axes.set_xlim(0, 1.1)
    axes.set_xlabel(headline)
    if len(series) > 1:
        axes.legend(loc="lower right")
    figure.savefig(path, dpi=100)


def _type_rows(metrics: dict[str, Any], headline: str) -> dict[str, float]:
    rows = {"overall": metrics[headline]}
    rows.update(
        {f"{tag} ({row['count']})": row[headline] for tag, row in metrics.get("per_type", {}).items()}
    )
    return rows


def write_report(
    output_dir: Path,
    records: Sequence[dict[str, Any]],
    metrics: dict[str, Any],
    images: ImageLoader,
    metric_names: Sequence[str],
    title: str,
    subtitle: str = "",
    gallery_size: int = 200,
) -> Path:
    """report.html (+ report_files/) for one evaluation; `records`/`metrics` as in `florence_recipes.evaluation`.

    The gallery shows the `gallery_size` lowest-scoring items (ties in dataset order); an unscored split
    shows its first items.
    """
    files = output_dir / "report_files"
    names = _metric_names(metrics, metric_names)
    headline = names[0] if names else "score"
    order = sorted(
        range(len(records)),
        key=lambda i: (records[i]["score"] is None, records[i]["score"] or 0.0, i),
    )[:gallery_size]
    thumbnails = _write_thumbnails(files, records, order, images)
    chart = None
    if metrics.get("per_type"):
        rows = _type_rows(metrics, headline)
        _bar_chart(
            files / "per_type.png", {tag: [value] for tag, value in rows.items()}, [headline], headline
        )
        chart = f"{files.name}/per_type.png"
    html = _ENV.from_string(_REPORT_TEMPLATE).render(
        title=title,
        subtitle=subtitle,
        style=_STYLE,
        metrics=metrics,
        metric_names=names,
        headline=headline,
        per_type=metrics.get("per_type", {}),
        chart=chart,
        gallery=[{"record": records[i], "thumbnail": thumbnails[i]} for i in order],
    )
    path = output_dir / REPORT_FILE
    path.write_text(html, encoding="utf-8")
    return path


def write_comparison_report(
    output_dir: Path,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    before_metrics: dict[str, Any],
    after_metrics: dict[str, Any],
    images: ImageLoader,
    metric_names: Sequence[str],
    title: str,
    labels: tuple[str, str] = ("before", "after"),
    subtitle: str = "",
    gallery_size: int = 200,
) -> Path:
    """comparison.html (+ comparison_files/): two evaluations of the same items, the changed answers listed
    with both predictions and scores, biggest improvements first and regressions last."""
    if [r["id"] for r in before] != [r["id"] for r in after]:
        raise ValueError("the two evaluations must cover the same items in the same order")
    files = output_dir / "comparison_files"
    names = _metric_names(after_metrics, metric_names)
    headline = names[0] if names else "score"
    changed = [
        i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b["prediction"] != a["prediction"]
    ]

    def delta(i: int) -> float:
        b, a = before[i]["score"], after[i]["score"]
        return 0.0 if a is None or b is None else a - b

    changed.sort(key=lambda i: (-delta(i), i))
    shown = changed[:gallery_size]
    thumbnails = _write_thumbnails(files, after, shown, images)
    chart = None
    if names:
        before_rows, after_rows = _type_rows(before_metrics, headline), _type_rows(after_metrics, headline)
        groups = {tag: [before_rows.get(tag, 0.0), value] for tag, value in after_rows.items()}
        files.mkdir(parents=True, exist_ok=True)
        _bar_chart(files / "per_type.png", groups, labels, headline)
        chart = f"{files.name}/per_type.png"
    html = _ENV.from_string(_COMPARISON_TEMPLATE).render(
        title=title,
        subtitle=subtitle,
        style=_STYLE,
        labels=labels,
        before=before_metrics,
        after=after_metrics,
        metric_names=names,
        headline=headline,
        changed=changed,
        improved=sum(delta(i) > 0 for i in changed),
        regressed=sum(delta(i) < 0 for i in changed),
        chart=chart,
        gallery=[{"before": before[i], "after": after[i], "thumbnail": thumbnails[i]} for i in shown],
    )
    path = output_dir / COMPARISON_FILE
    path.write_text(html, encoding="utf-8")
    return path
