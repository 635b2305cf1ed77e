"""How a saved model was trained: `florence_recipes.json` in every saved folder, and prompts that follow it.

`FlorenceTrainer.save_model` writes the recording into checkpoints, the final model and what `push_to_hub`
uploads: per source the task and the exact prompt format, `max_target_length`, the generation settings its
evaluation used and the training mode. `recipes/predict.py`, `recipes/demo.py` and `recipes/evaluate.py` read
it back (`read_record`) and default to it; `resolve_prompt` turns a request (a registry task name, a Florence-2
task token, or nothing) into a prompt and warns once when the request contradicts the recording. A model
without a recording (an original release) keeps the old defaults: `<DocVQA>` + question.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from florence_recipes.data.hub_tasks import DOCVQA_PROMPT
from florence_recipes.data.tasks import TASKS, Task
from florence_recipes.errors import RecipeError, first_line

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "florence_recipes.json"
FREE_PROMPT = "{prompt}"  # the row's own prompt, used as is (Cauldron turns, a `prompt` column)
DEFAULT_PROMPT_FORMAT = DOCVQA_PROMPT + "{question}"  # what predict/demo used before recordings existed
_FIELD = re.compile(r"\{[a-z_]+\}")
_TASK_TOKEN = re.compile(r"^<[A-Za-z_]+>")
# Florence-2 task tokens that take no text after them (the processor refuses any).
_NO_INPUT_TOKENS = frozenset(
    ("<OCR>", "<OCR_WITH_REGION>", "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OD>",
     "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>")
)  # fmt: skip


@dataclass(frozen=True)
class SourceRecord:
    """One training source: its registry task and the exact prompt format its rows were trained with."""

    name: str
    task: str
    prompt_format: str
    dataset: str
    config: str | None = None


@dataclass(frozen=True)
class TrainingRecord:
    """The contents of `florence_recipes.json`."""

    sources: tuple[SourceRecord, ...]
    max_target_length: int
    generation_max_length: int | None
    generation_num_beams: int | None
    training_mode: str

    def describe(self) -> str:
        """One line: `task vqa (prompt '<VQA>{question}')`, per source for a mixture."""
        return "; ".join(f"task {s.task} (prompt {s.prompt_format!r})" for s in self.sources)


def prompt_matches(prompt_format: str, prompt: str) -> bool:
    """Whether `prompt` is `prompt_format` with its field (if any) filled in."""
    head, field, tail = _split(prompt_format)
    if not field:
        return prompt == prompt_format
    return prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail)


def observed_format(task: Task, prompts: Sequence[str]) -> str:
    """The prompt format a source's rows really used: the task's, or `{prompt}` when the rows brought their
    own prompts (a `prompt` column in `vqa`, `caption` or `ocr` data)."""
    if all(prompt_matches(task.prompt_format, p) for p in prompts):
        return task.prompt_format
    return FREE_PROMPT


def write_record(folder: str | Path, record: TrainingRecord) -> Path:
    path = Path(folder) / PROVENANCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    return path


def read_record(model_name_or_path: str, revision: str = "main") -> TrainingRecord | None:
    """The recording of a model folder or Hub repo, or None when it has none (or the Hub cannot be reached)."""
    folder = Path(model_name_or_path)
    if folder.is_dir():
        path = folder / PROVENANCE_FILE
        if not path.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(model_name_or_path, PROVENANCE_FILE, revision=revision))
        except Exception:  # no such file (an original release), offline, no access: today's defaults
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        sources = tuple(SourceRecord(**source) for source in data.pop("sources"))
        return TrainingRecord(sources=sources, **data)
    except (ValueError, TypeError, KeyError) as err:
        raise RecipeError(f"{path}: not a florence-recipes training record ({first_line(err)})") from None


@dataclass(frozen=True)
class PromptChoice:
    """A resolved prompt format and the Florence-2 task token its outputs are parsed with."""

    prompt_format: str
    label: str  # what to call it in messages: the task name or the token
    warning: str | None = None  # one line, when the request contradicts the training record

    @property
    def task_token(self) -> str:
        """The leading task token (`<OD>`), or "" for a free prompt; `post_process_generation` parses by it."""
        match = _TASK_TOKEN.match(self.prompt_format)
        return match.group(0) if match else ""

    @property
    def takes_text(self) -> bool:
        return bool(_FIELD.search(self.prompt_format))

    def prompt(self, text: str | None) -> str:
        """The prompt for the user's `text`; text given to a format without a field is appended (the processor
        then refuses it for task tokens that take no input, in one line)."""
        head, field, tail = _split(self.prompt_format)
        return head + (text or "").strip() + tail if field else self.prompt_format + (text or "").strip()


def resolve_prompt(request: str | None, record: TrainingRecord | None) -> PromptChoice:
    """The prompt for a request: None (the recording's first source, else `<DocVQA>` + question), a registry
    task name (`vqa`; its recorded format if the model was trained on it) or a Florence-2 task token (`<OD>`).

    A request the recording contradicts is honoured; the choice's `warning` then says, in one line, what the
    model expects (predict prints it to stderr, the demo and evaluate log it).
    """
    if request is None or not request.strip():
        if record is None:
            return PromptChoice(DEFAULT_PROMPT_FORMAT, DOCVQA_PROMPT)
        source = record.sources[0]
        if len(record.sources) > 1:
            logger.info(
                "Trained on a mixture (%s): using %s; --task picks another", record.describe(), source.task
            )
        return PromptChoice(source.prompt_format, source.task)
    request = request.strip()
    if request in TASKS:
        recorded = [s for s in record.sources if s.task == request] if record else []
        choice = PromptChoice(
            recorded[0].prompt_format if recorded else TASKS[request].prompt_format, request
        )
        return _checked(choice, record, bool(recorded))
    if not _TASK_TOKEN.fullmatch(request):
        raise RecipeError(
            f"--task {request!r}: give a task name ({', '.join(sorted(TASKS))}) or a Florence-2 task token "
            "such as <OD> or <OCR>"
        )
    choice = PromptChoice(request if request in _NO_INPUT_TOKENS else request + "{text}", request)
    trained = record is not None and any(s.prompt_format.startswith(request) for s in record.sources)
    return _checked(choice, record, trained)


def _checked(choice: PromptChoice, record: TrainingRecord | None, trained: bool) -> PromptChoice:
    if record is None or trained:
        return choice
    warning = (
        f"this model was trained with {record.describe()}; you asked for {choice.label} "
        f"(prompt {choice.prompt_format!r}), which it was not trained on"
    )
    return PromptChoice(choice.prompt_format, choice.label, warning)


def _split(prompt_format: str) -> tuple[str, str, str]:
    """(text before the field, the field, text after it); the field is "" when there is none."""
    match = _FIELD.search(prompt_format)
    if match is None:
        return prompt_format, "", ""
    return prompt_format[: match.start()], match.group(0), prompt_format[match.end() :]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int | None
    max_length: int | None
    num_beams: int | None  # None: the checkpoint's generation config, as the recipe's evaluation leaves it


# What predict and the demo used before recordings existed (region tasks need long outputs).
FALLBACK_MAX_NEW_TOKENS = 1024
FALLBACK_NUM_BEAMS = 3


def generation_settings(
    record: TrainingRecord | None, max_new_tokens: int | None, num_beams: int | None
) -> GenerationSettings:
    """The user's settings where given, else the recorded evaluation's (its `generation_max_length` as
    `max_length`, its beams), else the old defaults: the same generation as the training eval by default."""
    if record is None:
        return GenerationSettings(
            max_new_tokens or FALLBACK_MAX_NEW_TOKENS, None, num_beams or FALLBACK_NUM_BEAMS
        )
    limit = record.generation_max_length or record.max_target_length
    return GenerationSettings(
        max_new_tokens,
        None if max_new_tokens is not None else limit,
        num_beams if num_beams is not None else record.generation_num_beams,
    )
