"""The package's shape: no import cycles, nothing re-exported, light argument parsing, and the private
Trainer hooks `FlorenceTrainer` relies on still exist in the installed transformers."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Seq2SeqTrainer

from florence_recipes.training.trainer import PRIVATE_TRAINER_HOOKS

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "florence_recipes"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Each package module -> the package modules it imports, `TYPE_CHECKING` and function-level imports too.

    `from florence_recipes.data import hub_tasks` imports the submodule, not the package."""
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("florence_recipes")
            ):
                imported |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("florence_recipes")}
        graph[module_name(path)] = imported
    return graph


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = package_imports()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target == path[0]:
                cycles.append(" -> ".join([*path, target]))
            elif (
                target not in path and target > path[0]
            ):  # each cycle reported once, from its smallest module
                visit(target, [*path, target])

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _top_level_definitions(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_names_are_imported_from_where_they_are_defined() -> None:
    """No re-exports: `from florence_recipes.X import name` only for names X defines (a package's
    `__init__` is its public face and may gather its modules' names)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    defined = {module: _top_level_definitions(path) for module, path in files.items()}
    wrong = []
    for path in [
        *PACKAGE.rglob("*.py"),
        *(REPO_ROOT / "recipes").glob("*.py"),
        *(REPO_ROOT / "tests").glob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module in files):
                continue
            if files[node.module].name == "__init__.py":
                continue
            wrong += [
                f"{path.relative_to(REPO_ROOT)}: {alias.name} from {node.module}"
                for alias in node.names
                if alias.name not in defined[node.module]
            ]
    assert not wrong, "names imported from a module that does not define them:\n" + "\n".join(wrong)


def test_argument_parsing_loads_no_torch_or_pil_of_its_own() -> None:
    """`configs` needs transformers' `Seq2SeqTrainingArguments` (which itself loads torch and PIL); parsing
    must add no package module besides `configs` (its modules) and `errors`, and no torch or PIL import of its own."""
    code = (
        "import json, sys\n"
        "import transformers, yaml\n"
        "from accelerate.utils import parse_flag_from_env\n"
        "from transformers import HfArgumentParser, Seq2SeqTrainingArguments\n"
        "from transformers.training_args import ParallelMode\n"
        "before = set(sys.modules)\n"
        "import florence_recipes.configs\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = json.loads(result.stdout)
    package = [m for m in added if m.startswith("florence_recipes")]
    assert "florence_recipes.configs" in package
    assert [
        m
        for m in package
        if m not in ("florence_recipes", "florence_recipes._moved", "florence_recipes.errors")
        and not m.startswith("florence_recipes.configs")
    ] == []
    assert not [m for m in added if m.split(".")[0] in ("torch", "PIL", "datasets")]


@pytest.mark.parametrize("hook", PRIVATE_TRAINER_HOOKS)
def test_private_trainer_hooks_still_exist(hook: str) -> None:
    assert callable(getattr(Seq2SeqTrainer, hook, None)), (
        f"transformers' Seq2SeqTrainer has no {hook} any more: FlorenceTrainer (florence_recipes/training/trainer.py) "
        "relies on it; adapt it to this transformers version"
    )


def test_private_trainer_hooks_keep_their_signatures() -> None:
    expected = {
        "_get_train_sampler": ["self", "train_dataset"],
        "_prepare_inputs": ["self", "inputs"],
        "_pad_tensors_to_max_len": ["self", "tensor", "max_length"],
    }
    assert set(expected) == set(PRIVATE_TRAINER_HOOKS)
    for hook, parameters in expected.items():
        found = list(inspect.signature(getattr(Seq2SeqTrainer, hook)).parameters)
        assert found == parameters, f"Seq2SeqTrainer.{hook}{found} changed; FlorenceTrainer relies on it"


def test_the_trainer_uses_no_other_private_trainer_member() -> None:
    tree = ast.parse((PACKAGE / "training" / "trainer.py").read_text(encoding="utf-8"))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    overridden = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    private = {
        name
        for name in used | overridden
        if name.startswith("_") and not name.startswith("__") and hasattr(Seq2SeqTrainer, name)
    }
    assert private == set(PRIVATE_TRAINER_HOOKS)
