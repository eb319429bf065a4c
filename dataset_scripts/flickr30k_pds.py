"""Flickr30k (Karpathy train split) distilled with PDS at 100, 200, 500 and 1000 pairs, published to the Hub.

Source: ``nlphuji/flickr30k``. Its ``main`` branch holds a loading script (``flickr30k.py``), which datasets >= 4
refuses to run; the Hub's parquet export of the same data (revision ``refs/convert/parquet``) loads directly. It
is one split named ``test`` (about 31k rows, one per image) with the columns

    image (Image), caption (list of 5 strings), sentids (list of strings),
    split (string: Karpathy's "train" / "val" / "test"), img_id (string), filename (string)

The paper distills the Karpathy train split: the 29,000 rows with ``split == "train"`` (145,000 pairs).
The source's card declares no license: pass ``--license`` (Flickr30k's terms are custom: ``other``).

Usage::

    python dataset_scripts/flickr30k_pds.py --org my-org --license other          # my-org/flickr30k-pds-{100,...}
    python dataset_scripts/flickr30k_pds.py --org my-org --dry-run                # offline, tiny models, folders

Each size is built by :class:`pds_hf.DistillBuilder` into datasets' cache (``--cache-dir``): the source and
settings are its config, so running the recipe again (say, after a failed upload) publishes without
distilling again. The command line, the checks and the publishing are those of every recipe
(:class:`pds_hf.recipe.Recipe`).

``--dry-run`` writes a small stand-in for the source with the same columns and types, in the same file
layout as the Hub's export (``TEST/test/0000.parquet``), and runs the whole recipe on it with the tiny
random models of ``pds_hf.testing`` (saved to folders, which stand in for model ids), writing folders
instead of pushing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pds_hf.recipe import Recipe

SOURCE = "nlphuji/flickr30k"
SOURCE_REVISION = "refs/convert/parquet"
SOURCE_SPLIT = "test"
SELECTION = "Karpathy train split: rows with split == 'train'"
NAME = "flickr30k"


def source_features():
    """The features of ``nlphuji/flickr30k`` (those its loading script declares)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "caption": List(Value("string")),
            "sentids": List(Value("string")),
            "split": Value("string"),
            "img_id": Value("string"),
            "filename": Value("string"),
        }
    )


def to_pairs(ds):
    """The Karpathy train rows, with the two columns ``pds_hf.distill`` reads (``image``, ``caption`` lists)."""
    missing = [name for name in ("image", "caption", "split") if name not in ds.column_names]
    if missing:
        raise KeyError(
            f"{SOURCE} is expected to have the columns image, caption and split; missing {missing} "
            f"(columns: {ds.column_names})."
        )
    train = ds.filter(lambda split: [value == "train" for value in split], input_columns="split", batched=True)
    return train.select_columns(["image", "caption"])


def write_dry_run_source(folder: Path, num_images: int = 48) -> Path:
    """A small stand-in for the source: shapes with captions, laid out and typed like the Hub's export."""
    from datasets import Dataset

    from pds_hf.demo import demo_dataset

    shapes = demo_dataset(num_images, side=32)
    splits = [("train", "train", "train", "val", "test")[i % 5] for i in range(num_images)]
    captions = [list(c) for c in shapes["caption"]]
    ds = Dataset.from_dict(
        {
            "image": list(shapes["image"]),
            "caption": captions,
            "sentids": [[str(5 * i + k) for k in range(len(c))] for i, c in enumerate(captions)],
            "split": splits,
            "img_id": [str(i) for i in range(num_images)],
            "filename": [f"{1000000 + i}.jpg" for i in range(num_images)],
        },
        features=source_features(),
    )
    (folder / "TEST" / SOURCE_SPLIT).mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "TEST" / SOURCE_SPLIT / "0000.parquet"))
    return folder


RECIPE = Recipe(
    name=NAME,
    sources={SOURCE: SELECTION},
    source_split=SOURCE_SPLIT,
    source_revision=SOURCE_REVISION,
    source_filter={"split": "train"},
    source_columns=["image", "caption"],
    write_dry_run_source=lambda folder, source: write_dry_run_source(folder),
    description=__doc__.split("\n\n")[0],
    license_help="Hub license id of the published sets (the source declares none).",
)


def main(argv=None) -> int:
    return RECIPE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
