"""The ``pds-hf`` command: ``pds-hf distill ...``, ``pds-hf evaluate ...``.

Also runs as ``python -m pds_hf.cli`` (and so under ``accelerate launch -m pds_hf.cli``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("pds_hf")


def load_source(name: str, *, split: str | None, config_name: str | None = None):
    """A ``datasets.Dataset`` from a Hub id, a local data folder, or a ``save_to_disk`` folder."""
    import datasets

    path = Path(name)
    if path.is_dir() and (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(name, config_name, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            return next(iter(ds.values()))
        if split is None:
            raise SystemExit(f"error: {name} has splits {list(ds)}; pass --split.")
        return ds[split]
    return ds


def _add_distill(subparsers):
    p = subparsers.add_parser("distill", help="Distill an image-text dataset into a few synthetic pairs.",
                              description="Distill an image-text dataset with PDS and write it as a Hub dataset folder.")
    p.add_argument("dataset", nargs="?", help="Hub dataset id, local data folder or save_to_disk folder.")
    p.add_argument("--demo", action="store_true",
                   help="Use the built-in shapes dataset and tiny random models (no network, no GPU).")
    p.add_argument("--split", help="Split to distill (needed when the dataset has several).")
    p.add_argument("--config-name", help="Dataset configuration name.")
    p.add_argument("--output", "-o", help="Folder to write (parquet + README.md + preview.png).")
    p.add_argument("--push-to-hub", metavar="REPO_ID",
                   help="Publish as a Hub dataset: data, card and preview in one commit.")
    p.add_argument("--private", action="store_true", help="Create the Hub repository private.")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")
    p.add_argument("--license", help="License id for the card (default: the one the source dataset's card declares).")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument("--num-pairs", type=int, help="Distilled pairs M (default 100; 16 with --demo).")
    p.add_argument("--method", choices=["pds", "random", "herding", "kcenter"], default="pds")
    p.add_argument("--synthesis", choices=["unclip", "retrieve", "none"], default="unclip")
    p.add_argument("--clip-model", help="Encoder id (default openai/clip-vit-large-patch14).")
    p.add_argument("--clip-revision")
    p.add_argument("--unclip-model", help="Decoder id (default stabilityai/stable-diffusion-2-1-unclip-small).")
    p.add_argument("--unclip-revision")
    p.add_argument("--image-column", default="image")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--rm-ratio", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--empty", choices=["centroid", "drop"], default="centroid")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="Cluster on L2-normalised embeddings (cosine geometry) instead of the raw ones.")
    p.add_argument("--steps", type=int, help="unCLIP denoising steps (default 100; 20 with --demo).")
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--noise-level", type=int, default=10)
    p.add_argument("--image-size", type=int, help="Output side in pixels (default 224; 64 with --demo).")
    p.add_argument("--batch-size", type=int, default=64, help="Encoder batch size.")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available).")
    p.add_argument("--on-bad-image", choices=["skip", "error"], default="skip")
    p.set_defaults(func=run_distill)
    return p


def run_distill(args) -> int:
    import pds_hf
    from pds_hf.distributed import current_ranks
    from pds_hf.publish import prepare_push, push_to_hub, save_to_folder

    if not args.output and not args.push_to_hub:
        raise SystemExit("error: pass --output DIR, --push-to-hub ORG/NAME, or both.")
    output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise SystemExit(f"error: {output} exists; pass --overwrite or choose another --output.")
    source = None if args.demo else args.dataset
    if args.push_to_hub and current_ranks().is_main:
        # Token, namespace and license are checked before any data or model is loaded.
        prepare_push(args.push_to_hub, token=args.token, license=args.license, source=source)
    overrides = {k: v for k, v in dict(
        method=args.method, synthesis=args.synthesis, clip_revision=args.clip_revision,
        unclip_revision=args.unclip_revision, image_column=args.image_column, caption_column=args.caption_column,
        rm_ratio=args.rm_ratio, seed=args.seed, empty=args.empty, normalize=args.normalize,
        guidance_scale=args.guidance_scale,
        noise_level=args.noise_level, encode_batch_size=args.batch_size, device=args.device,
        on_bad_image=args.on_bad_image, num_pairs=args.num_pairs, clip_model=args.clip_model,
        unclip_model=args.unclip_model, num_inference_steps=args.steps, image_size=args.image_size,
    ).items() if v is not None}

    start = time.perf_counter()
    if args.demo:
        if args.dataset:
            raise SystemExit("error: --demo uses the built-in dataset; drop the dataset argument.")
        from pds_hf.demo import demo_config, demo_dataset

        ds = demo_dataset()
        config = demo_config(**overrides)
    else:
        if not args.dataset:
            raise SystemExit("error: name a dataset (Hub id or folder), or pass --demo.")
        ds = load_source(args.dataset, split=args.split, config_name=args.config_name)
        config = pds_hf.DistillConfig(**overrides)
    small = pds_hf.distill(ds, config)
    if not current_ranks().is_main:
        return 0  # every process returns the same set; the main one writes it
    if output is not None:
        save_to_folder(small, output, overwrite=args.overwrite, repo_id=args.push_to_hub, license=args.license,
                       source=source)
    meta = pds_hf.metadata(small)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in meta["stages_seconds"].items())
    source = meta["source"]
    print(f"Distilled {source['num_pairs']} pairs ({source['num_images']} images, {source['num_captions']} "
          f"distinct captions) into {len(small)} pairs in {time.perf_counter() - start:.1f}s "
          f"on {meta['processes']} process(es).")
    print(f"Stages: {stages}")
    if output is not None:
        print(f"Wrote {output}  (load it with: load_dataset({str(output)!r}, split='train'))")
    if args.push_to_hub:
        commit = push_to_hub(small, args.push_to_hub, private=True if args.private else None, token=args.token,
                             license=args.license, source=source)
        print(f"Published {commit.repo_url}  (load it with: load_dataset({args.push_to_hub!r}, split='train'))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pds-hf", description="Prototype-guided dataset distillation (PDS).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log each stage.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_distill(subparsers)
    try:
        from pds_hf.evaluation.cli import add_parsers
    except ImportError:
        pass
    else:
        add_parsers(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from pds_hf.publish import PublishError

    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, FileExistsError, PublishError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
