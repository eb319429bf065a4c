"""MS-COCO (Karpathy train split) distilled with PDS at 100, 200, 500 and 1000 pairs, published to the Hub.

The paper distills COCO 2014's Karpathy training set: train + restval, 113,287 images with 5 captions each
(about 567k pairs). ``yerevann/coco-karpathy``, the usual Hub copy of the Karpathy split, has image URLs, not
images; two Hub copies carry the images themselves, and this recipe reads either:

- ``undefined443/coco-karpathy-wds`` (default): WebDataset shards, splits ``train`` (train + restval,
  113,287 images), ``val`` and ``test`` (5,000 each), one row per image. ``load_dataset`` gives the columns
  ``jpg`` (Image), ``json`` ({"captions": list of strings, "cocoid": int}), ``__key__``, ``__url__``. About
  19 GB; its card declares ``cc-by-4.0`` (COCO's annotation license), which the published sets inherit.
- ``bitmind/MS-COCO``: parquet, the same Karpathy splits (``train`` = train + restval) but one row per
  caption (566,747 rows, each image stored five times, about 21 GB to download and 90 GB once loaded):
  ``image`` (Image), ``sentences`` ({"raw": string, "tokens": list, "imgid": int, "sentid": int}), ``split``
  (``train``/``restval``), ``cocoid``, ``filename``, ... Its card declares no license: pass ``--license``.

Usage::

    python dataset_scripts/coco_karpathy_pds.py --org my-org                       # my-org/coco-pds-{100,...}
    python dataset_scripts/coco_karpathy_pds.py --org my-org --source bitmind/MS-COCO --license cc-by-4.0
    python dataset_scripts/coco_karpathy_pds.py --org my-org --dry-run             # offline, tiny models, folders

The pairs (:func:`to_pairs`) are saved once per source revision under ``--cache-dir``, and each size is built
by :class:`pds_hf.DistillBuilder` into datasets' cache from them: running the recipe again (say, after a failed
upload) publishes without distilling again. The command line, the checks and the publishing are those of every
recipe (:class:`pds_hf.recipe.Recipe`).

``--dry-run`` writes a small stand-in for the chosen source in its own file layout (tar shards or parquet)
with the same columns and types, loads it with ``load_dataset`` and runs the whole recipe on it with the tiny
random models of ``pds_hf.testing`` (saved to folders, which stand in for model ids), writing folders instead
of pushing.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

from pds_hf.recipe import Recipe

WDS = "undefined443/coco-karpathy-wds"
PARQUET = "bitmind/MS-COCO"
SOURCE_SPLIT = "train"
SELECTION = {
    WDS: "Karpathy train + restval: the `train` split, one row per image",
    PARQUET: "Karpathy train + restval: the `train` split, one row per caption",
}
NAME = "coco"


def parquet_features():
    """The features of ``bitmind/MS-COCO``."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "filepath": Value("string"),
            "sentids": List(Value("int32")),
            "filename": Value("string"),
            "imgid": Value("int32"),
            "split": Value("string"),
            "sentences": {
                "tokens": List(Value("string")),
                "raw": Value("string"),
                "imgid": Value("int32"),
                "sentid": Value("int32"),
            },
            "cocoid": Value("int32"),
        }
    )


def to_pairs(ds, source: str):
    """The two columns ``pds_hf.distill`` reads, renamed from the source's own: ``image`` and ``caption``."""
    # flatten() turns a struct column into "column.field" columns without copying the images.
    if source == WDS:
        columns = {"jpg": "image", "json.captions": "caption"}
    else:
        columns = {"image": "image", "sentences.raw": "caption"}
    flat = ds.flatten()
    missing = [name for name in columns if name not in flat.column_names]
    if missing:
        raise KeyError(
            f"{source} is expected to have the columns {list(columns)} once flattened; missing {missing} "
            f"(columns: {flat.column_names})."
        )
    flat = flat.select_columns(list(columns))
    return flat.rename_columns({old: new for old, new in columns.items() if old != new})


def _shapes(num_images: int):
    from pds_hf.demo import demo_dataset

    shapes = demo_dataset(num_images, side=32)
    return list(shapes["image"]), [list(c) for c in shapes["caption"]]


def write_dry_run_source(folder: Path, source: str, num_images: int = 40) -> Path:
    """A small stand-in for ``source``: shapes with captions, in the source's file layout and types."""
    images, captions = _shapes(num_images)
    if source == WDS:
        (folder / SOURCE_SPLIT).mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / SOURCE_SPLIT / f"{SOURCE_SPLIT}-00000.tar", "w") as tar:
            for key, (image, texts) in enumerate(zip(images, captions, strict=False)):
                jpeg = io.BytesIO()
                image.save(jpeg, format="JPEG", quality=95)
                meta = json.dumps({"captions": texts, "cocoid": 500000 + key}).encode()
                for suffix, data in (("jpg", jpeg.getvalue()), ("json", meta)):
                    member = tarfile.TarInfo(f"{key:09d}.{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
        return folder

    from datasets import Dataset

    rows = {name: [] for name in parquet_features()}
    for i, (image, texts) in enumerate(zip(images, captions, strict=False)):
        for k, text in enumerate(texts):  # one row per caption, the image repeated
            sentid = 10 * i + k
            rows["image"].append(image)
            rows["filepath"].append("train2014")
            rows["sentids"].append([10 * i + j for j in range(len(texts))])
            rows["filename"].append(f"COCO_train2014_{500000 + i:012d}.jpg")
            rows["imgid"].append(i)
            rows["split"].append("train" if i % 4 else "restval")
            rows["sentences"].append({"tokens": text.split(), "raw": text, "imgid": i, "sentid": sentid})
            rows["cocoid"].append(500000 + i)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=parquet_features()).to_parquet(
        str(folder / "data" / f"{SOURCE_SPLIT}-00000-of-00001.parquet")
    )
    return folder


RECIPE = Recipe(
    name=NAME,
    sources=SELECTION,
    source_split=SOURCE_SPLIT,
    to_pairs=to_pairs,
    write_dry_run_source=write_dry_run_source,
    description=__doc__.split("\n\n")[0],
    source_help="Hub copy of COCO Karpathy to read.",
)
load_source = RECIPE.load_source  # the Karpathy train split of a Hub id at a revision, or of the dry run's folder


def main(argv=None) -> int:
    return RECIPE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
