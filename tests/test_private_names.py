"""Module boundaries in ``pds_hf/``, read with ``ast``: no module uses another's private names, and no two modules
import each other.

A private name is one with a single leading underscore (``_vectors``; dunders such as ``__version__`` are public).
What can be told without running the code is checked:

- ``from .inputs import _vectors``: a private name imported from another pds_hf module;
- ``inputs._vectors`` or ``DistillProcessor._select``, where ``inputs`` / ``DistillProcessor`` were imported from
  another pds_hf module;
- ``processor._select(...)`` (or ``getattr(processor, "_select")``) on any object but ``self``, ``cls`` and
  ``super()``, unless the module defines ``_select`` itself (another instance of its own class): whose object it is
  cannot be told statically, so it counts as someone else's. The third-party privates that remain are listed in
  ``THIRD_PARTY`` with the reason each is needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pds_hf"

# Another library's private attributes that pds-hf still reads, by attribute name, each with why (the value names
# the owner). An entry that no module uses any more fails the test, so that the list only shrinks with the code.
THIRD_PARTY = {
    # os: documented despite its underscore; ends the process without the interpreter's teardown, which pyarrow's
    # threads can abort (cli.console), and ends a forked worker from a signal handler (cli's Ctrl-C handler).
    "_exit": "os._exit",
    # argparse: the parser's actions, to word an error with the flag of a keyword and to find a subcommand's parser;
    # argparse has no public listing of either.
    "_actions": "argparse.ArgumentParser._actions",
    "_SubParsersAction": "argparse._SubParsersAction",
    # transformers: the commit a model's revision resolved to, the only exact identity of downloaded weights (the
    # encode stage's key).
    "_commit_hash": "transformers.PretrainedConfig._commit_hash",
    # torch: a tensor's in-place modification counter, so a student's weight digest is recomputed only on change.
    "_version": "torch.Tensor._version",
    # diffusers: the pipeline's own progress-bar settings, restored after synthesis turns the per-step bar off
    # (set_progress_bar_config has no getter).
    "_progress_bar_config": "diffusers.DiffusionPipeline._progress_bar_config",
    # datasets: a Dataset's fingerprint is the identity of its content (datasets' own cache key); stage keys and
    # cached evaluation features start from it, and datasets gives it no public getter.
    "_fingerprint": "datasets.Dataset._fingerprint",
    # datasets: an IterableDataset's source description (its examples iterables, down to files or generator) is the
    # only content identity a stream has (stream keys) and the only way to count its rows without reading it.
    "_ex_iterable": "datasets.IterableDataset._ex_iterable",
    # datasets: how a stream was split by node (split_dataset_by_node), part of what it yields (stream keys, lengths).
    "_distributed": "datasets.IterableDataset._distributed",
    # datasets: a stream resumed from a state dict yields an unknown remainder, so its length is not counted.
    "_starting_state_dict": "datasets.IterableDataset._starting_state_dict",
    # datasets: the table generators of a map-style dataset's stream and of the Parquet and Arrow builders,
    # recognised to count a stream's rows from file metadata (lengths.py).
    "_generate_tables_from_shards": "datasets.Dataset._generate_tables_from_shards",
    "_generate_tables_from_cache_file": "datasets.Dataset._generate_tables_from_cache_file",
    "_generate_tables": "datasets Parquet/Arrow builders' _generate_tables",
    # datasets: the features of a stream whose features are not declared, read without consuming the stream the
    # caller will iterate (the public `features` is None there).
    "_resolve_features": "datasets.IterableDataset._resolve_features",
}


def module_name(path: Path) -> str:
    """``pds_hf/publish/card.py`` -> ``pds_hf.publish.card``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def import_target(module: str, node: ast.ImportFrom) -> str:
    """The dotted module an ``ImportFrom`` reads from, resolving ``from .. import x`` against ``module``."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imports(module: str) -> list[tuple[ast.AST, str, str, str]]:
    """Every pds_hf import in ``module``, module-level or inside a function.

    Returns ``(node, bound name, target module, imported name)`` each; the imported name is ``""`` where the whole
    module is bound (``import x``, ``from . import x``).
    """
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pds_hf":
                    # ``import pds_hf.a.b`` binds ``pds_hf``; ``import pds_hf.a.b as c`` binds the module itself.
                    target = alias.name if alias.asname else "pds_hf"
                    found.append((node, alias.asname or "pds_hf", target, ""))
        elif isinstance(node, ast.ImportFrom):
            target = import_target(module, node)
            if target.split(".")[0] != "pds_hf":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    found.append((node, alias.asname or alias.name, submodule, ""))
                else:
                    found.append((node, alias.asname or alias.name, target, alias.name))
    return found


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines itself: functions, classes, assigned names and attributes (``self._x = ...``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def private_uses(module: str) -> list[tuple[int, str, str]]:
    """``(line, name, owner)`` for each use of a private name that ``module`` does not own; ``owner`` is the pds_hf
    module it comes from, or ``""`` where the object's module cannot be told (see ``THIRD_PARTY``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    own = defined_names(tree)
    bound = {}  # local name -> the pds_hf module it is, or comes from
    uses = []
    for node, name, target, imported in imports(module):
        bound[name] = target
        if is_private(imported) and target != module:
            uses.append((node.lineno, imported, target))

    def owner_of(value: ast.AST) -> str | None:
        """The pds_hf module ``value`` is or was imported from; None where not known."""
        if isinstance(value, ast.Name):
            return bound.get(value.id)
        if isinstance(value, ast.Attribute):
            parent = owner_of(value.value)
            if parent is not None and f"{parent}.{value.attr}" in MODULES:
                return f"{parent}.{value.attr}"
            return parent
        return None

    def is_own_object(value: ast.AST) -> bool:
        if isinstance(value, ast.Name):
            return value.id in ("self", "cls")
        return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            value, attr = node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            value, attr = node.args[0], node.args[1].value
        else:
            continue
        if not is_private(attr) or is_own_object(value):
            continue
        owner = owner_of(value)
        if owner is not None and owner != module:
            uses.append((node.lineno, attr, owner))
        elif owner is None and attr not in own:
            uses.append((node.lineno, attr, ""))
    return uses


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module):
    path = MODULES[module].relative_to(ROOT)
    found = [
        f"{path}:{line}: {name} (from {owner})" if owner else f"{path}:{line}: {name} (on an object of another module)"
        for line, name, owner in private_uses(module)
        if owner or name not in THIRD_PARTY
    ]
    assert not found, (
        "private names used across modules; make the name public where it is shared (with a docstring), move the "
        "code to the module that owns it, or, for another library's private, add it to THIRD_PARTY with why:\n"
        + "\n".join(found)
    )


def test_every_third_party_private_is_still_used():
    used = {name for module in MODULES for _, name, owner in private_uses(module) if not owner}
    assert sorted(set(THIRD_PARTY) - used) == [], "THIRD_PARTY lists names no module reads any more: remove them"


def test_no_two_modules_import_each_other():
    edges = {(module, target) for module in MODULES for _, _, target, _ in imports(module) if target != module}
    circles = sorted(f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges)
    assert not circles, "modules that import each other (module-level or inside a function):\n" + "\n".join(circles)
