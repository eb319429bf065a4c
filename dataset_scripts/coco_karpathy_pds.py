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
upload) publishes without distilling again.

``--dry-run`` writes a small stand-in for the chosen source in its own file layout (tar shards or parquet)
with the same columns and types, loads it with ``load_dataset`` and runs the whole recipe on it with the tiny
random models of ``pds_hf.testing`` (saved to folders, which stand in for model ids), writing folders instead
of pushing.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

WDS = "undefined443/coco-karpathy-wds"
PARQUET = "bitmind/MS-COCO"
SOURCES = (WDS, PARQUET)
SOURCE_SPLIT = "train"
SELECTION = {WDS: "Karpathy train + restval: the `train` split, one row per image",
             PARQUET: "Karpathy train + restval: the `train` split, one row per caption"}
NAME = "coco"
SIZES = (100, 200, 500, 1000)
DRY_RUN_SIZES = (4, 8)


def parquet_features():
    """The features of ``bitmind/MS-COCO``."""
    from datasets import Features, Image, List, Value

    return Features({
        "image": Image(), "filepath": Value("string"), "sentids": List(Value("int32")),
        "filename": Value("string"), "imgid": Value("int32"), "split": Value("string"),
        "sentences": {"tokens": List(Value("string")), "raw": Value("string"), "imgid": Value("int32"),
                      "sentid": Value("int32")},
        "cocoid": Value("int32"),
    })


def load_source(where: str, revision: str | None):
    """The Karpathy train split of the source (a Hub id at a revision, or the dry run's folder)."""
    from datasets import load_dataset

    return load_dataset(where, revision=revision, split=SOURCE_SPLIT)


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
        raise KeyError(f"{source} is expected to have the columns {list(columns)} once flattened; missing {missing} "
                       f"(columns: {flat.column_names}).")
    flat = flat.select_columns(list(columns))
    return flat.rename_columns({old: new for old, new in columns.items() if old != new})


def builder(pairs_dir: str, settings: dict, cache_dir: str | None):
    """The :class:`pds_hf.DistillBuilder` of one distilled size, over the pairs saved by :func:`to_pairs`."""
    from pds_hf import DistillBuilder

    return DistillBuilder(cache_dir=cache_dir, source=pairs_dir, source_split=SOURCE_SPLIT, distill=settings)


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
            for key, (image, texts) in enumerate(zip(images, captions)):
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
    for i, (image, texts) in enumerate(zip(images, captions)):
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
        str(folder / "data" / f"{SOURCE_SPLIT}-00000-of-00001.parquet"))
    return folder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Each size M is published as ORG/coco-pds-M.")
    parser.add_argument("--org", required=True, help="Hub namespace (user or organisation) to publish under.")
    parser.add_argument("--source", choices=SOURCES, default=WDS, help="Hub copy of COCO Karpathy to read.")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help=f"Distilled sizes M (default {' '.join(map(str, SIZES))}; "
                             f"{' '.join(map(str, DRY_RUN_SIZES))} with --dry-run).")
    parser.add_argument("--synthesis", choices=["unclip", "retrieve", "retrieve-scored", "none"], default="unclip",
                        help="Step 7: Stable unCLIP (paper), the nearest real image, or no image.")
    parser.add_argument("--license", help="Hub license id (default: the one the source's card declares).")
    parser.add_argument("--private", action="store_true", help="Create the repositories private.")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")
    parser.add_argument("--output-dir", help="Write folders here instead of pushing (default ./pds-dry-run with "
                                             "--dry-run).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing folders in --output-dir.")
    parser.add_argument("--cache-dir", help="Where the distilled sets are built (default: datasets' cache; "
                                            "OUTPUT_DIR/.cache with --dry-run).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Offline: a synthetic slice shaped like the source and tiny random models; folders only.")
    parser.add_argument("--source-revision", default="main", help="Revision of the source to read.")
    parser.add_argument("--steps", type=int, help="unCLIP denoising steps (default 100; 2 with --dry-run).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pds_hf.publish import PublishError, prepare_push, push_to_hub, save_to_folder

    sizes = args.sizes or (DRY_RUN_SIZES if args.dry_run else SIZES)
    repo_ids = [f"{args.org}/{NAME}-pds-{size}" for size in sizes]
    output_dir = Path(args.output_dir) if args.output_dir else (Path("pds-dry-run") if args.dry_run else None)
    try:
        if output_dir is not None and not args.overwrite:  # an existing folder fails now, not after distilling
            taken = [str(output_dir / r.split("/")[1]) for r in repo_ids if (output_dir / r.split("/")[1]).exists()]
            if taken:
                raise FileExistsError(f"{', '.join(taken)} already exist(s); pass --overwrite to replace, or choose "
                                      "another --output-dir.")
        if output_dir is None:
            for repo_id in repo_ids:  # a bad token, namespace or license fails now, not after hours of work
                prepare_push(repo_id, token=args.token, license=args.license, source=args.source, source_revision=args.source_revision)
        cache_dir = args.cache_dir or (str(output_dir / ".cache") if args.dry_run else None)
        settings = dict(synthesis=args.synthesis, seed=args.seed)
        if args.dry_run:
            from pds_hf.testing import save_tiny_clip, save_tiny_unclip

            source = str(write_dry_run_source(output_dir / f"{args.source.replace('/', '--')}-stand-in", args.source))
            revision = None
            models = output_dir / ".models"
            settings.update(clip_model=save_tiny_clip(models / "tiny-random-clip"), image_size=32, device="cpu",
                            num_inference_steps=args.steps or 2)
            if args.synthesis == "unclip":
                settings["unclip_model"] = save_tiny_unclip(models / "tiny-random-unclip")
        else:
            from huggingface_hub import HfApi

            source = args.source
            # Pin the commit, so that the cards say exactly what was read even if the source changes later.
            revision = HfApi(token=args.token).dataset_info(args.source, revision=args.source_revision).sha
            settings.update(num_inference_steps=args.steps or 100, device=args.device)
        # The pairs are saved once per source revision; the builder distills from that folder.
        pairs_dir = Path(cache_dir or Path.home() / ".cache" / "pds_hf_recipes") / \
            f"{NAME}-pairs-{args.source.replace('/', '--')}-{revision or 'dry-run'}"
        if not (pairs_dir / "state.json").exists():
            to_pairs(load_source(source, revision), args.source).save_to_disk(str(pairs_dir))
        for size, repo_id in zip(sizes, repo_ids):
            build = builder(str(pairs_dir), {**settings, "num_pairs": size}, cache_dir)
            build.download_and_prepare()
            small = build.as_dataset("train")
            publish = dict(license=args.license, source=source, source_revision=revision,
                           source_selection=SELECTION[args.source])
            if output_dir is not None:
                where = save_to_folder(small, output_dir / repo_id.split("/")[1], repo_id=repo_id,
                                       overwrite=args.overwrite, **publish)
            else:
                where = push_to_hub(small, repo_id, private=args.private or None, token=args.token,
                                    **publish).commit_url
            print(f"{repo_id}: {len(small)} pairs -> {where}")
    except (PublishError, ValueError, KeyError, TypeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
