"""Synthetic documents rendered with PIL for the offline datasets: invoices, receipts and forms (charts,
diagrams, infographics and shapes are in `florence_recipes.builders.figures`).

Every renderer takes a ``random.Random`` and returns the image together with what it drew, so that the
questions asked about an image are answerable from its pixels. Only Pillow's bundled font is used
(``ImageFont.load_default(size=...)``, Pillow >= 10.1), so rendering works offline and is deterministic for
a given Pillow/FreeType build.
"""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

ImageSize = tuple[int, int]  # (width, height) in pixels

DOCUMENT_KINDS = ("invoice", "receipt", "form")

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_FIRST_NAMES = (
    "John",
    "Mary",
    "Robert",
    "Linda",
    "James",
    "Susan",
    "David",
    "Karen",
    "Paul",
    "Helen",
    "Mark",
    "Ruth",
)
_LAST_NAMES = (
    "Smith",
    "Miller",
    "Jones",
    "Brown",
    "Davis",
    "Wilson",
    "Taylor",
    "Clark",
    "Lewis",
    "Walker",
    "Hall",
)
_COMPANY_WORDS = (
    "Acme",
    "Northern",
    "Summit",
    "Liberty",
    "Pioneer",
    "Atlas",
    "Harbor",
    "Golden",
    "Union",
    "Apex",
)
_COMPANY_NOUNS = (
    "Tobacco",
    "Foods",
    "Chemicals",
    "Supply",
    "Paper",
    "Labs",
    "Motors",
    "Textiles",
    "Printing",
)
_COMPANY_SUFFIXES = ("Co.", "Inc.", "Corp.", "Ltd.")
_CITIES = (
    "Boston",
    "Denver",
    "Chicago",
    "Atlanta",
    "Richmond",
    "Portland",
    "Dallas",
    "Raleigh",
    "Memphis",
    "Tulsa",
)
_DEPARTMENTS = ("Research", "Marketing", "Finance", "Legal", "Sales", "Purchasing", "Accounting")
_ITEMS = (
    "Coffee",
    "Paper",
    "Toner",
    "Envelopes",
    "Stamps",
    "Folders",
    "Pens",
    "Binders",
    "Labels",
    "Postage",
)
_INKS = ("#111111", "#1b1b2f", "#222222", "#2b2118")
_HANDWRITING_INKS = ("#1c3f94", "#0b2e6e", "#243c8f")


class DocField(NamedTuple):
    """One piece of text drawn on a document, with the DocVQA question type and phrasings that ask for it."""

    key: str
    value: str  # exactly as drawn
    question_type: str  # "form", "table/list", "layout", "free_text" or "handwritten" (DocVQA vocabulary)
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # gold answers, the drawn value first, then equivalent spellings


@dataclass(frozen=True)
class RenderedDocument:
    image: Image.Image
    kind: str
    fields: list[DocField]  # only what actually fit on the page


def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` pixels (cached: loading it is the slowest part of drawing text)."""
    return ImageFont.load_default(size=size)


def fitted_font(text: str, max_width: float, size: int, min_size: int = 10) -> ImageFont.FreeTypeFont:
    """The largest font no bigger than ``size`` that draws ``text`` within ``max_width``."""
    while size > min_size and font(size).getlength(text) > max_width:
        size -= 1
    return font(size)


def wrap_words(tokens: list[str], text_font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """Greedy word wrap; tokens are never split, so a multi-word answer stays on one line."""
    lines: list[str] = []
    for token in tokens:
        if lines and text_font.getlength(f"{lines[-1]} {token}") <= max_width:
            lines[-1] = f"{lines[-1]} {token}"
        else:
            lines.append(token)
    return lines


# ---------------------------------------------------------------------------------------------------------
# Field values and the ways DocVQA annotators would accept them.


def _date(rng: random.Random) -> tuple[str, tuple[str, ...]]:
    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1960, 2005)
    drawn = f"{day:02d}/{month:02d}/{year}"
    return drawn, (drawn, f"{day} {_MONTHS[month - 1]} {year}")


def _money(cents: int) -> tuple[str, tuple[str, ...]]:
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    return f"${amount}", (f"${amount}", amount)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _company(rng: random.Random) -> str:
    return f"{rng.choice(_COMPANY_WORDS)} {rng.choice(_COMPANY_NOUNS)} {rng.choice(_COMPANY_SUFFIXES)}"


# Plain key-value fields: how to draw a value, and questions that ask for it.
_FORM_FIELDS: dict[str, tuple[Callable[[random.Random], str], tuple[str, ...]]] = {
    "Invoice No": (
        lambda rng: str(rng.randint(1000, 99999)),
        ("What is the invoice number?", "What is the invoice no.?"),
    ),
    "Order No": (
        lambda rng: f"{rng.choice('ABCDEFGH')}-{rng.randint(100, 9999)}",
        ("What is the order number?",),
    ),
    "Name": (_person, ("What is the name given in the document?", "Whose name is on the document?")),
    "Company": (_company, ("What is the name of the company?", "Which company is mentioned?")),
    "Phone": (
        lambda rng: f"({rng.randint(201, 989)}) {rng.randint(201, 989)}-{rng.randint(0, 9999):04d}",
        ("What is the phone number?", "What is the telephone number given?"),
    ),
    "City": (lambda rng: rng.choice(_CITIES), ("Which city is mentioned in the document?",)),
    "Account No": (lambda rng: str(rng.randint(10_000_000, 99_999_999)), ("What is the account number?",)),
    "Department": (
        lambda rng: rng.choice(_DEPARTMENTS),
        ("Which department is mentioned?", "What is the department?"),
    ),
}


def _form_field(rng: random.Random, key: str) -> DocField:
    """A key-value field drawn as "Key: value"."""
    if key in _FORM_FIELDS:
        generate, questions = _FORM_FIELDS[key]
        value = generate(rng)
        return DocField(key, value, "form", questions, (value,))
    if key == "Date":
        value, answers = _date(rng)
        return DocField(
            key, value, "form", ("What is the date mentioned in this document?", "When is it dated?"), answers
        )
    if key == "Amount":
        value, answers = _money(rng.randint(100, 500_000))
        return DocField(key, value, "form", ("What is the amount?", "How much is the amount?"), answers)
    raise ValueError(f"unknown document field {key!r}")


def _free_text_field(rng: random.Random) -> tuple[DocField, list[str]]:
    """A sentence that contains the answer, returned with its tokens (the answer being one token)."""
    choice = rng.randrange(3)
    if choice == 0:
        value = f"Room {rng.randint(100, 999)}"
        field = DocField("Meeting room", value, "free_text", ("Where will the meeting be held?",), (value,))
        return field, ["The", "meeting", "will", "be", "held", "in", value, "."]
    if choice == 1:
        value, answers = _date(rng)
        field = DocField("Reply by", value, "free_text", ("By what date should the reply be sent?",), answers)
        return field, ["Please", "reply", "before", value, "."]
    value = rng.choice(_CITIES)
    field = DocField("Shipped to", value, "free_text", ("Where were the samples shipped?",), (value,))
    return field, ["Samples", "were", "shipped", "to", value, "."]


# ---------------------------------------------------------------------------------------------------------
# Documents


class _Page:
    """A top-to-bottom text cursor that refuses to draw below the bottom margin."""

    def __init__(self, image: Image.Image, margin: int, ink: str) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.margin = margin
        self.ink = ink
        self.y = margin
        self.width = image.width - 2 * margin

    def fits(self, height: int) -> bool:
        return self.y + height <= self.image.height - self.margin

    def text(self, x: float, text: str, text_font: ImageFont.FreeTypeFont) -> None:
        self.draw.text((x, self.y), text, font=text_font, fill=self.ink)


def render_document(
    rng: random.Random, image_size: ImageSize = (384, 512), kind: str | None = None
) -> RenderedDocument:
    """A white page with a title and key-value fields (plus an item table for invoices/receipts, a sentence
    and a handwritten signature for forms), laid out differently each time; ``fields`` lists what was drawn."""
    kind = kind or rng.choice(DOCUMENT_KINDS)
    if kind not in DOCUMENT_KINDS:
        raise ValueError(f"unknown document kind {kind!r}; expected one of {DOCUMENT_KINDS}")
    scale = image_size[0] / 384
    image = Image.new("RGB", image_size, "white")
    page = _Page(image, margin=round(rng.randint(16, 30) * scale), ink=rng.choice(_INKS))
    fields = [_draw_title(rng, page, kind, scale)]
    key_values, body_font, line_height = _draw_key_values(rng, page, kind, scale)
    fields += key_values
    if kind == "form":
        if rng.random() < 0.6:
            fields += _draw_free_text(rng, page, body_font, line_height, scale)
        if rng.random() < 0.7:
            fields.extend(_draw_signature(rng, page, body_font, line_height, scale))
    else:
        fields.extend(_draw_item_table(rng, page, body_font, line_height, scale))
    return RenderedDocument(image=image, kind=kind, fields=fields)


_TITLES = {
    "invoice": ("INVOICE", "TAX INVOICE"),
    "receipt": ("RECEIPT", "SALES RECEIPT", "CASH RECEIPT"),
    "form": ("ORDER FORM", "REQUEST FORM", "APPLICATION FORM", "EXPENSE REPORT"),
}
# Every document of a kind has its required keys, plus one to three optional ones.
_REQUIRED_KEYS = {
    "invoice": ["Invoice No", "Date", "Company"],
    "receipt": ["Company", "Date"],
    "form": ["Name", "Date"],
}
_OPTIONAL_KEYS = {
    "invoice": ["Name", "Account No", "Phone", "City", "Order No"],
    "receipt": ["Phone", "City", "Order No", "Name"],
    "form": ["Company", "Department", "Phone", "Account No", "City", "Amount"],
}


def _draw_title(rng: random.Random, page: _Page, kind: str, scale: float) -> DocField:
    """The title, left or centred, maybe on a grey band and over a rule."""
    title = rng.choice(_TITLES[kind])
    title_font = fitted_font(title, page.width, round(rng.randint(26, 32) * scale))
    title_width = title_font.getlength(title)
    title_x = page.margin if rng.random() < 0.5 else page.margin + (page.width - title_width) / 2
    title_height = title_font.size + round(6 * scale)
    if rng.random() < 0.4:  # grey header band, common on printed forms
        page.draw.rectangle((0, 0, page.image.width, page.y + title_height + 4 * scale), fill="#e4e4e4")
    page.text(title_x, title, title_font)
    page.y += title_height + round(rng.randint(8, 16) * scale)
    if rng.random() < 0.5:
        rule_y = page.y - 6 * scale
        page.draw.line((page.margin, rule_y, page.image.width - page.margin, rule_y), fill=page.ink)
    questions = ("What is the title of the document?", "What is written at the top of the document?")
    return DocField("Title", title, "layout", questions, (title,))


def _draw_key_values(
    rng: random.Random, page: _Page, kind: str, scale: float
) -> tuple[list[DocField], ImageFont.FreeTypeFont, int]:
    """`Key: value` lines in shuffled order, values in a column or right after their key; also the body font
    and line height the rest of the page uses."""
    keys = _REQUIRED_KEYS[kind] + rng.sample(_OPTIONAL_KEYS[kind], rng.randint(1, 3))
    rng.shuffle(keys)
    body_font = font(round(rng.randint(17, 20) * scale))
    line_height = body_font.size + round(rng.randint(8, 13) * scale)
    value_x = page.margin + max(body_font.getlength(f"{key}:") for key in keys) + 12 * scale
    columns = rng.random() < 0.5  # values aligned in a column, or right after their key
    fields = []
    for key in keys:
        field = _form_field(rng, key)
        line = f"{key}: {field.value}"
        # Long values get a slightly smaller font rather than running off the page; unfittable ones are skipped.
        line_font = fitted_font(line, page.width, body_font.size, min_size=body_font.size - 4)
        if not page.fits(line_height) or line_font.getlength(line) > page.width:
            continue
        if columns and value_x + body_font.getlength(field.value) <= page.image.width - page.margin:
            page.text(page.margin, f"{key}:", body_font)
            page.text(value_x, field.value, body_font)
        else:
            page.text(page.margin, line, line_font)
        fields.append(field)
        page.y += line_height
    return fields, body_font, line_height


def _draw_free_text(
    rng: random.Random, page: _Page, body_font: ImageFont.FreeTypeFont, line_height: int, scale: float
) -> list[DocField]:
    """A wrapped sentence holding one answer (a form's free-text field), if it fits."""
    field, tokens = _free_text_field(rng)
    lines = wrap_words(tokens, body_font, page.width)
    if not page.fits(line_height * len(lines)):
        return []
    page.y += round(6 * scale)
    for line in lines:
        page.text(page.margin, line.replace(" .", "."), body_font)
        page.y += line_height
    return [field]


def _draw_item_table(
    rng: random.Random, page: _Page, body_font: ImageFont.FreeTypeFont, line_height: int, scale: float
) -> list[DocField]:
    """An "Item / Amount" table whose total is the sum of the rows drawn."""
    right = page.image.width - page.margin
    rows = [(item, rng.randint(100, 9_999)) for item in rng.sample(_ITEMS, rng.randint(2, 4))]
    if not page.fits(line_height * 2 + round(16 * scale)):
        return []
    page.y += round(8 * scale)
    page.text(page.margin, "Item", body_font)
    page.text(right - body_font.getlength("Amount"), "Amount", body_font)
    page.y += line_height
    page.draw.line((page.margin, page.y - 5 * scale, right, page.y - 5 * scale), fill=page.ink)
    fields: list[DocField] = []
    total = 0
    for item, cents in rows:
        if not page.fits(line_height * 2):  # keep room for the total
            break
        value, answers = _money(cents)
        page.text(page.margin, item, body_font)
        page.text(right - body_font.getlength(value), value, body_font)
        questions = (f"What is the amount for {item}?", f"How much is {item}?")
        fields.append(DocField(item, value, "table/list", questions, answers))
        total += cents
        page.y += line_height
    page.draw.line((page.margin, page.y - 5 * scale, right, page.y - 5 * scale), fill=page.ink)
    value, answers = _money(total)
    page.text(page.margin, "Total", body_font)
    page.text(right - body_font.getlength(value), value, body_font)
    page.y += line_height
    fields.append(
        DocField("Total", value, "table/list", ("What is the total amount?", "What is the total?"), answers)
    )
    return fields


def _draw_signature(
    rng: random.Random, page: _Page, body_font: ImageFont.FreeTypeFont, line_height: int, scale: float
) -> list[DocField]:
    """ "Signed by:" followed by a name in blue ink, slightly tilted, standing in for handwriting."""
    name = _person(rng)
    ink_font = font(body_font.size + round(3 * scale))
    if not page.fits(line_height + ink_font.size):
        return []
    page.y += round(10 * scale)
    page.text(page.margin, "Signed by:", body_font)
    x = page.margin + body_font.getlength("Signed by:") + 10 * scale
    if x + ink_font.getlength(name) + 8 * scale > page.image.width - page.margin:
        return []
    patch = Image.new("RGBA", (math.ceil(ink_font.getlength(name)) + 8, ink_font.size * 2), (0, 0, 0, 0))
    ImageDraw.Draw(patch).text(
        (4, ink_font.size // 3), name, font=ink_font, fill=rng.choice(_HANDWRITING_INKS)
    )
    patch = patch.rotate(rng.uniform(-4, 4), resample=Image.Resampling.BICUBIC, expand=True)
    page.image.paste(patch, (round(x), round(page.y - ink_font.size / 3)), patch)
    page.y += line_height + ink_font.size // 2
    questions = ("Who signed the form?", "Whose signature is on the document?")
    return [DocField("Signed by", name, "handwritten", questions, (name,))]
