"""The ``pds-hf`` command: ``pds-hf distill ...``, ``pds-hf explore ...``, ``pds-hf evaluate ...``, ``pds-hf compare``.

Also runs as ``python -m pds_hf`` and ``python -m pds_hf.cli`` (so under ``accelerate launch -m pds_hf.cli``).

A failure prints one line on stderr, ``error: <what went wrong>; <how to fix it>``; ``-v`` adds the traceback.
Exit codes: 0 done, 1 failed, 2 the command line cannot work as given, 130 interrupted (Ctrl-C).

Example:
    ```bash
    pds-hf distill --demo --output demo-pds              # tiny models on made-in-code shapes, no network
    pds-hf distill nlphuji/flickr30k --split test --num-pairs 100 --output flickr30k-pds-100
    pds-hf explore demo-pds                              # browse the pairs and the real pairs behind each
    python -m pds_hf --version
    ```
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pds_hf.cli_base import EXIT_INTERRUPTED, CommandError, UsageError, hub_offline, one_line, run_command
from pds_hf.hub_models import is_repo_id


def _pick_split(name: str, splits, split: str | None):
    if split is None:
        if len(splits) == 1:
            return next(iter(splits.values()))
        raise UsageError(f"{name} has splits {list(splits)}; pick one with --split, e.g. --split {list(splits)[0]}.")
    if split not in splits:
        raise UsageError(f"{name} has no split {split!r}; its splits are {list(splits)}: pass one of them to --split.")
    return splits[split]


def load_source(name: str, *, split: str | None, config_name: str | None = None, streaming: bool = False):
    """A ``datasets.Dataset`` from a Hub id, a local data folder, or a ``save_to_disk`` folder.

    Args:
        name: a Hub dataset id, a folder of data files, or a folder written by ``save_to_disk``.
        split: the split to read; may be left out when the dataset has exactly one. A ``--split`` that the
            dataset does not have is an error naming the splits it has.
        config_name: the dataset configuration (Hub datasets and data folders only).
        streaming: return a ``datasets.IterableDataset`` read as it is distilled, nothing downloaded ahead
            (``load_dataset(..., streaming=True)``; a ``save_to_disk`` folder is streamed one input shard per
            Arrow file).

    Raises:
        UsageError: on a path that does not exist, a split the dataset lacks, or several splits and no ``split``.
        CommandError: when a Hub dataset cannot be reached (offline, or no network).

    Example:
        ```py
        >>> ds = load_source("./my-pairs", split=None)   # a save_to_disk folder or a folder of parquet files
        ```
    """
    import datasets

    path = Path(name).expanduser()
    if (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))
        if split is not None and split != (str(ds.split) if ds.split is not None else None):
            held = f"split {str(ds.split)!r}" if ds.split is not None else "a split with no name"
            raise UsageError(
                f"{name} is a save_to_disk folder holding one dataset ({held}), not split {split!r}; "
                "drop --split" + (f" or pass --split {ds.split}." if ds.split is not None else ".")
            )
        return _streamed(ds) if streaming else ds
    if (path / "dataset_dict.json").is_file():
        ds = _pick_split(name, datasets.load_from_disk(str(path)), split)
        return _streamed(ds) if streaming else ds
    if not path.exists() and not is_repo_id(name):
        raise UsageError(
            f"{name}: no such folder, and not a Hub dataset id (namespace/name); check the path, or name a Hub dataset."
        )
    try:
        ds = datasets.load_dataset(str(path) if path.exists() else name, config_name, split=split, streaming=streaming)
    except ValueError as err:
        if str(err).startswith(("Unknown split", "Bad split")):  # a split load_dataset lacks, loaded or streamed
            raise UsageError(f"{name}: {str(err).rstrip('.')}. Pass one of them to --split.") from err
        raise
    except ConnectionError as err:
        fix = (
            "the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache: unset HF_HUB_OFFLINE, or "
            "pass a local folder"
            if hub_offline()
            else "check the network and the id, or pass a local folder"
        )
        raise CommandError(f"could not load dataset {name!r} ({one_line(err)}); {fix}.") from err
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return _pick_split(name, ds, split)
    return ds


def _streamed(ds):
    """A ``save_to_disk`` dataset as a stream: one input shard per Arrow file, with the dataset's info."""
    stream = ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    # to_iterable_dataset drops the info (the dataset's name, license, description) that the card reports
    stream.info.update(ds.info)
    return stream


def _check_models(config, ds) -> None:
    """Refuse, before any work and without asking the Hub, a model that cannot load: a missing folder, or an id
    the offline Hub lacks (the loaders' own check, :func:`pds_hf.hub_models.check_model_source`)."""
    from pds_hf.hub_models import check_model_source

    given = {config.image_embedding_column, config.text_embedding_column} <= set(ds.column_names or ())
    needed = [] if given else [("clip_model", config.clip_model, config.clip_revision, "config.json")]
    if config.method == "pds" and config.synthesis == "unclip":
        needed.append(("unclip_model", config.unclip_model, config.unclip_revision, "model_index.json"))
    for option, model, revision, index_file in needed:
        if isinstance(model, str):
            check_model_source(option, model, revision, index_file=index_file, probe=False)


def _add_switch(parser, flag: str, what: str) -> None:
    """A flag that is off unless given."""
    parser.add_argument(flag, action="store_true", help=what)


def _add_choice(parser, flag: str, choices: list[str], what: str) -> None:
    """A flag taking one of ``choices``, the first being the default, which the help names."""
    parser.add_argument(flag, choices=choices, default=choices[0], help=f"{what} (default: {choices[0]}).")


def _add_distill(subparsers):
    p = subparsers.add_parser(
        "distill",
        help="Distill an image-text dataset into a few synthetic pairs.",
        description="Distill an image-text dataset with PDS and write it as a Hub dataset folder, or publish it.",
    )
    p.add_argument("dataset", nargs="?", help="Hub dataset id, local data folder or save_to_disk folder.")
    _add_switch(p, "--demo", "Use the built-in shapes dataset and tiny random models (no network, no GPU).")
    p.add_argument("--split", help="Split to distill (needed when the dataset has several).")
    p.add_argument("--config-name", help="Dataset configuration name.")
    _add_switch(
        p,
        "--streaming",
        "Stream the dataset (load_dataset(..., streaming=True)): nothing is downloaded ahead; one pass "
        "encodes, a second reads back only the images retrieve or a baseline picks.",
    )
    p.add_argument("--output", "-o", help="Folder to write (parquet + README.md + preview.png).")
    p.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="Publish as a Hub dataset: data, card and preview in one commit."
    )
    _add_switch(p, "--private", "Create the Hub repository private.")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")
    p.add_argument("--license", help="License id for the card (default: the one the source dataset's card declares).")
    _add_switch(
        p,
        "--overwrite",
        "Replace --output if an earlier pds-hf run wrote it (a folder holding other files is never "
        "replaced; an empty one is used without --overwrite).",
    )
    p.add_argument("--num-pairs", type=int, help="Distilled pairs M (default 100; 16 with --demo).")
    _add_choice(
        p,
        "--method",
        ["pds", "random", "herding", "kcenter"],
        "pds (prototypes, the paper) or a baseline that keeps real pairs",
    )
    _add_choice(
        p,
        "--synthesis",
        ["unclip", "retrieve", "retrieve-scored", "none"],
        "Images of the pds pairs: decoded by unCLIP, the nearest real image, of the 8 nearest the one the encoder "
        "matches best with the text prototype (retrieve-scored), or none",
    )
    p.add_argument("--clip-model", help="Encoder id or folder (default openai/clip-vit-large-patch14).")
    p.add_argument("--clip-revision", help="Revision (branch, tag or commit) of --clip-model.")
    p.add_argument(
        "--unclip-model", help="Decoder id or folder (default stabilityai/stable-diffusion-2-1-unclip-small)."
    )
    p.add_argument("--unclip-revision", help="Revision (branch, tag or commit) of --unclip-model.")
    p.add_argument("--image-column", default="image", help="Column of images (default: image).")
    p.add_argument(
        "--caption-column",
        default="caption",
        help="Column of captions: a string, or a list of strings per image (default: caption).",
    )
    p.add_argument(
        "--rm-ratio",
        type=float,
        default=0.2,
        help="Fraction of pairs with the lowest image-caption similarity removed first (default: 0.2).",
    )
    p.add_argument("--seed", type=int, default=42, help="Seed of k-means, the baselines and synthesis (default: 42).")
    _add_choice(
        p, "--empty", ["centroid", "drop"], "Matched clusters that share no pair: use the k-means centres, or drop them"
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Cluster on L2-normalised embeddings (cosine geometry), or on the raw ones with "
        "--no-normalize (default: --normalize).",
    )
    p.add_argument("--steps", type=int, help="unCLIP denoising steps (default 100; 20 with --demo).")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="unCLIP classifier-free guidance (default: 5).")
    p.add_argument(
        "--noise-level", type=int, default=10, help="Noise unCLIP adds to each image prototype (default: 10)."
    )
    p.add_argument("--image-size", type=int, help="Output side in pixels (default 224; 64 with --demo).")
    p.add_argument("--batch-size", type=int, default=64, help="Encoder batch size (default: 64).")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available).")
    _add_choice(
        p, "--on-bad-image", ["skip", "error"], "Images that cannot be decoded: skip them with a warning, or stop"
    )
    p.add_argument(
        "--encode-workers",
        type=int,
        help="Processes decoding and preprocessing images ahead of the encoder (default: from the cores; "
        "0 decodes in the main process).",
    )
    p.add_argument(
        "--barrier-timeout",
        type=float,
        help="Seconds a process of a multi-process run waits for the others, e.g. while the main one "
        "clusters (default: 7200).",
    )
    p.add_argument(
        "--image-embedding-column",
        help="Column of image embeddings the dataset already has; with --text-embedding-column, encoding "
        "is skipped (default: image_embedding, used when present).",
    )
    p.add_argument(
        "--text-embedding-column",
        help="Column of caption embeddings the dataset already has (default: text_embedding).",
    )
    p.add_argument(
        "--embedding-dtype",
        choices=["float32", "float16"],
        help="How encoded embeddings are stored on disk for steps 2-6 (default: float32; float16 halves "
        "the disk, moving prototypes about as much as another k-means seed).",
    )
    p.set_defaults(func=run_distill)
    return p


def run_distill(args) -> int:
    """Handler of ``pds-hf distill``: distill, write ``--output``, publish to ``--push-to-hub``."""
    import pds_hf
    from pds_hf.cache import StageTimer
    from pds_hf.distributed import current_ranks
    from pds_hf.progress import library_output
    from pds_hf.publish import prepare_push, push_to_hub, save_to_folder
    from pds_hf.publish.folder import check_output_folder
    from pds_hf.publish.preview import pairs_table
    from pds_hf.schema import set_stage_seconds

    if not args.output and not args.push_to_hub:
        raise UsageError("nothing to write: pass --output DIR, --push-to-hub ORG/NAME, or both.")
    if args.demo and args.dataset:
        raise UsageError("--demo uses the built-in dataset; drop the dataset argument or --demo.")
    if not args.demo and not args.dataset:
        raise UsageError("no dataset: name one (Hub id or folder), or pass --demo.")
    # Before any data or model is loaded; absolute, so that the load_dataset hint works from any folder.
    output = check_output_folder(args.output, overwrite=args.overwrite) if args.output else None
    source = None if args.demo else args.dataset
    if args.push_to_hub and current_ranks(args.barrier_timeout or 7200).is_main:
        # Token, namespace and license are checked before any data or model is loaded.
        prepare_push(args.push_to_hub, token=args.token, license=args.license, source=source)
    overrides = {
        k: v
        for k, v in dict(
            method=args.method,
            synthesis=args.synthesis,
            clip_revision=args.clip_revision,
            unclip_revision=args.unclip_revision,
            image_column=args.image_column,
            caption_column=args.caption_column,
            rm_ratio=args.rm_ratio,
            seed=args.seed,
            empty=args.empty,
            normalize=args.normalize,
            guidance_scale=args.guidance_scale,
            noise_level=args.noise_level,
            encode_batch_size=args.batch_size,
            device=args.device,
            on_bad_image=args.on_bad_image,
            num_pairs=args.num_pairs,
            clip_model=args.clip_model,
            unclip_model=args.unclip_model,
            num_inference_steps=args.steps,
            image_size=args.image_size,
            encode_workers=args.encode_workers,
            barrier_timeout=args.barrier_timeout,
            embedding_dtype=args.embedding_dtype,
            image_embedding_column=args.image_embedding_column,
            text_embedding_column=args.text_embedding_column,
        ).items()
        if v is not None
    }

    # Every second from here on is in a named stage: the summary's total is their sum, and the card lists them.
    stages = StageTimer()
    if args.demo:
        from pds_hf.demo import demo_config, demo_dataset

        with stages("load data"):
            table = demo_dataset()
            ds = _streamed(table) if args.streaming else table
        with stages("build demo models"):
            # Checks the settings against the data first: bad input fails before any model is built.
            config = demo_config(dataset=table, **overrides)
    else:
        with stages("load data"), library_output():
            ds = load_source(args.dataset, split=args.split, config_name=args.config_name, streaming=args.streaming)
            config = pds_hf.DistillConfig(**overrides)
            _check_models(config, ds)
    with stages("distill"), library_output():
        small = pds_hf.distill(ds, config)
    if not current_ranks().is_main:
        return 0  # every process returns the same set; the main one writes it
    meta = pds_hf.metadata(small)
    # The run's own stages stand for "distill"; what they leave out of its time is making the dataset's rows.
    seconds = dict(stages.seconds)
    rest = seconds.pop("distill") - sum(meta["stages_seconds"].values())
    seconds.update(meta["stages_seconds"])
    if rest >= 0.005:
        seconds["make the dataset"] = seconds.get("make the dataset", 0.0) + rest
    set_stage_seconds(small, seconds)
    stages.seconds = pds_hf.metadata(small)["stages_seconds"]  # as the card shows them (rounded once, alike)
    with stages("write output"), library_output():
        if output is not None:
            save_to_folder(
                small, output, overwrite=args.overwrite, repo_id=args.push_to_hub, license=args.license, source=source
            )
    if args.push_to_hub:
        with stages("publish"), library_output():
            commit = push_to_hub(
                small,
                args.push_to_hub,
                private=True if args.private else None,
                token=args.token,
                license=args.license,
                source=source,
            )
    shown = {name: round(value, 2) for name, value in stages.seconds.items()}
    record = meta["source"]
    print(pairs_table(small))
    print(
        f"Distilled {record['num_pairs']} pairs ({record['num_images']} images, {record['num_captions']} "
        f"distinct captions) into {len(small)} pairs in {sum(shown.values()):.2f}s "
        f"on {meta['processes']} process(es)."
    )
    print(
        "Stages: "
        + ", ".join(f"{name} {value:.2f}s" for name, value in shown.items())
        + f" = {sum(shown.values()):.2f}s"
    )
    if output is not None:
        print(f"Wrote {output}  (load it with: load_dataset({str(output)!r}, split='train'))")
    if args.push_to_hub:
        print(f"Published {commit.repo_url}  (load it with: load_dataset({args.push_to_hub!r}, split='train'))")
    return 0


def _add_explore(subparsers):
    p = subparsers.add_parser(
        "explore",
        help="Browse a distilled set and the real pairs behind each pair, on a local page.",
        description="Serve a local page (Gradio, on 127.0.0.1 only) of a folder written by pds-hf distill --output "
        "or a Hub id: the grid of pairs with caption and support; choose one to see its members (the real pairs "
        "it stands for), closest first; filter the pairs by caption. Needs: pip install 'pds-hf[explore]'.",
    )
    p.add_argument("set", metavar="FOLDER_OR_REPO", help="The distilled set: its folder or its Hub dataset id.")
    p.add_argument(
        "--source",
        help="The source dataset (Hub id, data folder or save_to_disk folder), for the members' images; the demo "
        "shapes are remade in code. Without it, members are shown by caption only.",
    )
    p.add_argument("--split", help="Split of --source (default: the one the set was made from).")
    p.add_argument("--config-name", help="Configuration of --source.")
    p.add_argument("--port", type=int, help="Port on 127.0.0.1 (default: 7860, or the next free one).")
    p.add_argument("--revision", help="Hub revision of the set.")
    p.add_argument("--token", help="Hub token for a private set (default: HF_TOKEN or `hf auth login`).")
    p.set_defaults(func=run_explore)
    return p


def run_explore(args) -> int:
    """Handler of ``pds-hf explore``: load the set (and ``--source``), serve the page until Ctrl-C."""
    from pds_hf.progress import library_output

    try:
        import gradio  # noqa: F401

        from pds_hf.explore import explore
    except ImportError as err:
        raise UsageError("pds-hf explore needs Gradio: pip install 'pds-hf[explore]'.") from err
    path = Path(args.set).expanduser()
    source = None
    if args.source:
        split = args.split
        if split is None and path.is_dir():
            from pds_hf.publish import metadata_from_card

            try:
                split = metadata_from_card(path).get("source", {}).get("split")
            except (OSError, ValueError):
                split = None
        with library_output():
            source = load_source(args.source, split=split, config_name=args.config_name)
    with library_output():
        page = explore(args.set, source=source, port=args.port, block=False, revision=args.revision, token=args.token)
    print(f"Serving {args.set} on {page.local_url}  (Ctrl-C to stop)", flush=True)
    try:
        page.block_thread()
    finally:
        page.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pds-hf`` argument parser: ``distill``, and ``evaluate`` / ``compare`` from :mod:`pds_hf.evaluation`."""
    from pds_hf import __version__

    parser = argparse.ArgumentParser(
        prog="pds-hf",
        description="Prototype-guided dataset distillation (PDS).",
        epilog="Exit codes: 0 done, 1 failed, 2 bad command line, 130 interrupted. Progress shows as bars on a "
        "terminal and as a log line every few seconds when stderr goes to a file; "
        "HF_DATASETS_DISABLE_PROGRESS_BARS=1 turns both off.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Log debug lines, other libraries' warnings, and the traceback of an error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_distill(subparsers)
    _add_explore(subparsers)
    from pds_hf.evaluation.cli import add_parsers

    add_parsers(subparsers)
    for sub in subparsers.choices.values():  # -v after the subcommand too: pds-hf distill ... -v
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="Log debug lines, other libraries' warnings, and the traceback of an error.",
        )
    return parser


def main(argv=None) -> int:
    """Entry point of ``pds-hf``: parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C).", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_command(args, parser)


def console() -> None:
    """The ``pds-hf`` console script and ``python -m pds_hf``: :func:`main`, then end the process.

    The process ends without the interpreter's teardown, once output is flushed: pyarrow's C++ threads can race
    that teardown and abort ("terminate called without an active exception") after the command has finished.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    console()
