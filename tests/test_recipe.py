"""The recipe runner behind dataset_scripts/: a spec that cannot work is refused when it is written."""

import pytest

from pds_hf.recipe import Recipe


def _write(folder, source):
    return folder


def test_a_recipe_needs_a_source():
    with pytest.raises(ValueError, match=r"Recipe needs sources=\{'<Hub id>'"):
        Recipe(name="x", sources={}, source_split="train", write_dry_run_source=_write)


def test_to_pairs_excludes_filter_and_columns():
    with pytest.raises(ValueError, match="source_filter= and source_columns= apply only without to_pairs="):
        Recipe(
            name="x",
            sources={"a/b": "all rows"},
            source_split="train",
            write_dry_run_source=_write,
            to_pairs=lambda ds, source: ds,
            source_columns=["image", "caption"],
        )


def test_several_sources_add_a_source_choice():
    one = Recipe(name="x", sources={"a/b": "all rows"}, source_split="train", write_dry_run_source=_write)
    two = Recipe(
        name="x",
        sources={"a/b": "all rows", "c/d": "the same rows"},
        source_split="train",
        write_dry_run_source=_write,
        source_help="Which copy to read.",
    )
    assert "--source " not in one.parser().format_help()
    assert one.parser().parse_args(["--org", "me"]).source == "a/b"
    args = two.parser().parse_args(["--org", "me", "--source", "c/d"])
    assert args.source == "c/d"
    with pytest.raises(SystemExit):
        two.parser().parse_args(["--org", "me", "--source", "e/f"])
