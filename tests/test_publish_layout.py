"""The publish package's rooms: each module imports only those to its left, and what callers import is there."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLISH = ROOT / "pds_hf" / "publish"
ORDER = ("layout", "license", "card", "preview", "folder", "hub")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as a dotted name relative to ``pds_hf``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(f"publish.{node.module}" if node.module else "publish")
        elif isinstance(node, ast.ImportFrom) and node.level == 2:
            names.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pds_hf"):
            names.add(node.module.removeprefix("pds_hf").lstrip("."))
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("pds_hf").lstrip(".") for a in node.names if a.name.startswith("pds_hf"))
    return names


def test_every_module_is_placed_in_the_order():
    assert sorted(p.stem for p in PUBLISH.glob("*.py")) == sorted(ORDER + ("__init__",))


@pytest.mark.parametrize("name", ORDER)
def test_modules_import_only_leftward_ones_and_schema(name):
    allowed = {f"publish.{left}" for left in ORDER[: ORDER.index(name)]} | {"schema"}
    imported = imported_modules(PUBLISH / f"{name}.py")
    assert imported <= allowed, f"publish/{name}.py imports {sorted(imported - allowed)}; allowed: {sorted(allowed)}"


def test_callers_find_every_name_they_import_from_the_package():
    import pds_hf.publish

    wanted = set()
    for folder in ("pds_hf", "tests", "dataset_scripts", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if PUBLISH in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                module = getattr(node, "module", None) or ""
                level = getattr(node, "level", 0)
                if isinstance(node, ast.ImportFrom) and (module == "pds_hf.publish" or (level and module == "publish")):
                    wanted.update(alias.name for alias in node.names)
    assert {"metadata_from_card", "push_to_hub", "save_to_folder", "PublishError"} <= wanted
    assert [name for name in sorted(wanted) if not hasattr(pds_hf.publish, name)] == []


def test_the_card_template_is_found_in_a_checkout_and_in_an_installed_wheel(tmp_path):
    from pds_hf.publish.card import TEMPLATE_PATH

    assert TEMPLATE_PATH == ROOT / "model_cards" / "dataset_card_template.md"

    # The wheel's layout (pyproject maps model_cards/ to pds_hf/model_cards/), with only what card.py needs.
    package = tmp_path / "pds_hf"
    shutil.copytree(PUBLISH, package / "publish", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "model_cards", package / "model_cards")
    shutil.copy(ROOT / "pds_hf" / "schema.py", package / "schema.py")
    (package / "__init__.py").write_text("")
    script = "import pds_hf, pds_hf.publish.card as card; print(pds_hf.__file__); print(card.TEMPLATE_PATH)"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == [str(package / "__init__.py"), str(package / "model_cards" / "dataset_card_template.md")]


def test_save_to_folder_then_metadata_from_card_gives_the_run_record(tmp_path):
    from pds_hf.publish import metadata_from_card, save_to_folder
    from pds_hf.schema import read_run_record
    from pds_hf.testing import tiny_distilled_set

    record = {
        "config": {"num_pairs": 3, "seed": 7, "synthesis": "retrieve", "rm_ratio": 0.2},
        "source": {"dataset": "pds-org/shapes", "num_pairs": 40, "layout": "pair"},
        "models": {"encoder": "pds-hf/tiny-random-clip", "unclip": None},
        "stages_seconds": {"encode": 0.5, "select": 0.25},
        "versions": {"datasets": "5.2.0"},
        "note": 'quotes " and a | pipe, é',
    }
    ds = tiny_distilled_set(record=record)
    assert read_run_record(ds) == record

    save_to_folder(ds, tmp_path / "out", license="mit", preview_pairs=0)
    assert metadata_from_card(tmp_path / "out") == record
    assert json.loads(json.dumps(metadata_from_card(str(tmp_path / "out")))) == record
