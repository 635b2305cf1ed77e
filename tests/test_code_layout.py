"""The package's shape: imports go down the layers only, no import cycles, nothing re-exported, light argument
parsing, small modules and functions, and the private Trainer hooks `FlorenceTrainer` relies on still exist in the
installed transformers."""

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


# The layers of `florence_recipes/__init__.py`, bottom first: a module may import its own layer and the ones below.
LAYERS = {
    "errors": 0,
    "cli": 0,
    "_moved": 0,
    "configs": 1,
    "data": 2,
    "models": 3,
    "evaluation": 4,
    "builders": 5,
    "training": 6,
    "tooling": 7,
}


def layer_of(module: str) -> int | None:
    """The layer of a package module (`florence_recipes.data.tasks` -> 2); None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: add its subpackage to LAYERS (and to florence_recipes/__init__.py)")
    return LAYERS[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`importer -> imported` for every import of a higher layer's module."""
    return [
        f"{module} (layer {layer_of(module)}) -> {target} (layer {layer_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(module) is not None
        and layer_of(target) is not None
        and layer_of(target) > layer_of(module)
    ]


def test_imports_go_down_the_layers() -> None:
    wrong = upward_imports(package_imports())
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_the_layer_check_catches_an_upward_import() -> None:
    """The check is not vacuous: a data module importing the trainer, or models importing evaluation, is caught
    (function-level imports too); the same edge downwards is not."""
    graph = package_imports()
    assert graph["florence_recipes.training.recipe"] & {
        "florence_recipes.data.sources"
    }  # real edges are read
    planted = {
        "florence_recipes.data.collator": {"florence_recipes.training.trainer"},
        "florence_recipes.models.inference": {"florence_recipes.evaluation.scoring"},
        "florence_recipes.training.trainer": {"florence_recipes.data.collator"},
    }
    assert upward_imports(planted) == [
        "florence_recipes.data.collator (layer 2) -> florence_recipes.training.trainer (layer 6)",
        "florence_recipes.models.inference (layer 3) -> florence_recipes.evaluation.scoring (layer 4)",
    ]


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.split()) >= 30 and "import" in doc, (
            f"{init}: its docstring must say what it owns and imports"
        )


MAX_MODULE_LINES = 430  # "about 400"
MAX_FUNCTION_LINES = 60
# The sectioned recipe main()s read top to bottom like the recipe, as in transformers' examples.
RECIPE_MAINS = {"florence_recipes/training/recipe.py:main", "recipes/evaluate.py:main"}


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(REPO_ROOT / "recipes").glob("*.py")]):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO_ROOT).as_posix()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{where}:{node.name}" not in RECIPE_MAINS:
                    too_long.append(f"{where}:{node.lineno} {node.name}(): {lines} lines")
    assert not too_long, "split by concern:\n" + "\n".join(too_long)


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
        "_save_checkpoint": ["self", "model", "trial"],
        "_save_rng_state": ["self", "output_dir"],
        "_get_output_dir": ["self", "trial"],
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


def test_old_module_paths_resolve_for_one_release_with_a_warning() -> None:
    """0.1's flat paths: a moved name resolves (one FutureWarning naming where it lives now); a name that moved
    nowhere fails in one line naming the modules that took the old module's place."""
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', FutureWarning)\n"
        "try:\n"
        "    from florence_recipes.trainer import FlorenceTrainer\n"
        "except FutureWarning as warning:\n"
        "    print(warning)\n"
        "warnings.simplefilter('ignore', FutureWarning)\n"
        "from florence_recipes.trainer import FlorenceTrainer\n"
        "from florence_recipes.training.trainer import FlorenceTrainer as New\n"
        "assert FlorenceTrainer is New\n"
        "import florence_recipes.benchmark as old\n"
        "try:\n"
        "    old.no_such_name\n"
        "except AttributeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warning, error = result.stdout.strip().splitlines()
    assert warning.startswith(
        "florence_recipes.trainer.FlorenceTrainer moved to florence_recipes.training.trainer.FlorenceTrainer"
    )
    assert error.startswith("florence_recipes.benchmark has no 'no_such_name'")
    assert "florence_recipes.tooling.benchmark_ours" in error
