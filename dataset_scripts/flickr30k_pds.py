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
distilling again.

``--dry-run`` writes a small stand-in for the source with the same columns and types, in the same file
layout as the Hub's export (``TEST/test/0000.parquet``), and runs the whole recipe on it with the tiny
random models of ``pds_hf.testing`` (saved to folders, which stand in for model ids), writing folders
instead of pushing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SOURCE = "nlphuji/flickr30k"
SOURCE_REVISION = "refs/convert/parquet"
SOURCE_SPLIT = "test"
SELECTION = "Karpathy train split: rows with split == 'train'"
NAME = "flickr30k"
SIZES = (100, 200, 500, 1000)
DRY_RUN_SIZES = (4, 8)


def source_features():
    """The features of ``nlphuji/flickr30k`` (those its loading script declares)."""
    from datasets import Features, Image, List, Value

    return Features({"image": Image(), "caption": List(Value("string")), "sentids": List(Value("string")),
                     "split": Value("string"), "img_id": Value("string"), "filename": Value("string")})


def load_source(where: str, revision: str | None):
    """The single split of the source (a Hub id at a revision, or the dry run's folder)."""
    from datasets import load_dataset

    return load_dataset(where, revision=revision, split=SOURCE_SPLIT)


def to_pairs(ds):
    """The Karpathy train rows, with the two columns ``pds_hf.distill`` reads (``image``, ``caption`` lists)."""
    missing = [name for name in ("image", "caption", "split") if name not in ds.column_names]
    if missing:
        raise KeyError(f"{SOURCE} is expected to have the columns image, caption and split; missing {missing} "
                       f"(columns: {ds.column_names}).")
    train = ds.filter(lambda split: [value == "train" for value in split], input_columns="split", batched=True)
    return train.select_columns(["image", "caption"])


def builder(source: str, revision: str | None, settings: dict, cache_dir: str | None):
    """The :class:`pds_hf.DistillBuilder` of one distilled size: what :func:`to_pairs` selects, distilled."""
    from pds_hf import DistillBuilder

    return DistillBuilder(cache_dir=cache_dir, source=source, source_split=SOURCE_SPLIT, source_revision=revision,
                          source_filter={"split": "train"}, source_columns=["image", "caption"], distill=settings)


def write_dry_run_source(folder: Path, num_images: int = 48) -> Path:
    """A small stand-in for the source: shapes with captions, laid out and typed like the Hub's export."""
    from datasets import Dataset

    from pds_hf.demo import demo_dataset

    shapes = demo_dataset(num_images, side=32)
    splits = [("train", "train", "train", "val", "test")[i % 5] for i in range(num_images)]
    captions = [list(c) for c in shapes["caption"]]
    ds = Dataset.from_dict({
        "image": list(shapes["image"]),
        "caption": captions,
        "sentids": [[str(5 * i + k) for k in range(len(c))] for i, c in enumerate(captions)],
        "split": splits,
        "img_id": [str(i) for i in range(num_images)],
        "filename": [f"{1000000 + i}.jpg" for i in range(num_images)],
    }, features=source_features())
    (folder / "TEST" / SOURCE_SPLIT).mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "TEST" / SOURCE_SPLIT / "0000.parquet"))
    return folder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Each size M is published as ORG/flickr30k-pds-M.")
    parser.add_argument("--org", required=True, help="Hub namespace (user or organisation) to publish under.")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help=f"Distilled sizes M (default {' '.join(map(str, SIZES))}; "
                             f"{' '.join(map(str, DRY_RUN_SIZES))} with --dry-run).")
    parser.add_argument("--synthesis", choices=["unclip", "retrieve", "retrieve-scored", "none"], default="unclip",
                        help="Step 7: Stable unCLIP (paper), the nearest real image, or no image.")
    parser.add_argument("--license", help="Hub license id of the published sets (the source declares none).")
    parser.add_argument("--private", action="store_true", help="Create the repositories private.")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")
    parser.add_argument("--output-dir", help="Write folders here instead of pushing (default ./pds-dry-run with "
                                             "--dry-run).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing folders in --output-dir.")
    parser.add_argument("--cache-dir", help="Where the distilled sets are built (default: datasets' cache; "
                                            "OUTPUT_DIR/.cache with --dry-run).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Offline: a synthetic slice shaped like the source and tiny random models; folders only.")
    parser.add_argument("--source-revision", default=SOURCE_REVISION, help="Revision of the source to read.")
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
                prepare_push(repo_id, token=args.token, license=args.license, source=SOURCE)
        cache_dir = args.cache_dir or (str(output_dir / ".cache") if args.dry_run else None)
        settings = dict(synthesis=args.synthesis, seed=args.seed)
        if args.dry_run:
            from pds_hf.testing import save_tiny_clip, save_tiny_unclip

            source = str(write_dry_run_source(output_dir / f"{SOURCE.replace('/', '--')}-stand-in"))
            revision = None
            models = output_dir / ".models"
            settings.update(clip_model=save_tiny_clip(models / "tiny-random-clip"), image_size=32, device="cpu",
                            num_inference_steps=args.steps or 2)
            if args.synthesis == "unclip":
                settings["unclip_model"] = save_tiny_unclip(models / "tiny-random-unclip")
        else:
            from huggingface_hub import HfApi

            source = SOURCE
            # Pin the commit, so that the cards say exactly what was read even if the source changes later.
            revision = HfApi(token=args.token).dataset_info(SOURCE, revision=args.source_revision).sha
            settings.update(num_inference_steps=args.steps or 100, device=args.device)
        for size, repo_id in zip(sizes, repo_ids):
            build = builder(source, revision, {**settings, "num_pairs": size}, cache_dir)
            build.download_and_prepare()
            small = build.as_dataset("train")
            publish = dict(license=args.license, source=source, source_revision=revision,
                           source_selection=SELECTION)
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
