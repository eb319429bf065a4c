"""``pds-hf evaluate`` and ``pds-hf compare``.

``pds-hf`` adds these with :func:`add_parsers`; each subcommand stores its handler as ``func`` (called
with the parsed arguments, returning an exit code). ``python -m pds_hf.evaluation.cli`` runs them on
their own.

Examples:
    ```bash
    pds-hf evaluate me/flickr30k-pds-100 --test my/flickr30k-karpathy --test-split test \\
        --validation my/flickr30k-karpathy --validation-split validation \\
        --student nf_resnet50 --runs 5 --encoder openai/clip-vit-large-patch14 --output report.md
    pds-hf evaluate --demo          # tiny random models on tiny generated data, in seconds
    pds-hf compare my/flickr30k-karpathy --split train --test my/flickr30k-karpathy --test-split test \\
        --methods pds random herding kcenter --num-pairs 100 200 500 --output-dir comparison/
    ```
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..cli_base import CommandError, UsageError, run_command

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"
DEMO_PAIRS = 8
DEMO_SIDE = 32
DEFAULT_SIZES = [100, 200, 500]
DEMO_SIZES = [8, 16, 32]  # the built-in demo training set has 96 images


def load_split(name_or_dir: str, split: str):
    """A ``datasets.Dataset`` from a ``save_to_disk`` folder, or else from ``load_dataset(name_or_dir, split=split)``
    (a Hub id or a folder of data files)."""
    import datasets

    path = Path(name_or_dir)
    if (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    if (path / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(path))
        if split not in splits:
            raise UsageError(f"{name_or_dir} has splits {list(splits)}, not {split!r}; pick one with the split option.")
        return splits[split]
    return datasets.load_dataset(name_or_dir, split=split)


def demo_splits() -> dict:
    """Train, validation and test splits of :func:`pds_hf.demo.demo_dataset` (coloured shapes, two captions
    per image, 32x32), made in code; for ``--demo`` runs."""
    from ..demo import demo_dataset

    return {
        "train": demo_dataset(96, seed=0, side=DEMO_SIDE),
        "validation": demo_dataset(24, seed=1, side=DEMO_SIDE),
        "test": demo_dataset(24, seed=2, side=DEMO_SIDE),
    }


def _distill(train, encoder, num_pairs: int, *, demo: bool, **settings):
    """``pds_hf.distill`` of ``train`` with ``encoder``; ``settings``: its other keyword arguments."""
    import pds_hf

    return pds_hf.distill(
        train, num_pairs=num_pairs, clip_model=encoder, **settings, **({"image_size": DEMO_SIDE} if demo else {})
    )


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test", metavar="NAME_OR_DIR", help="test set: a Hub id, a data folder or a save_to_disk folder"
    )
    parser.add_argument("--test-split", default="test", help="split of --test (default: test)")
    parser.add_argument(
        "--validation",
        metavar="NAME_OR_DIR_OR_FRACTION",
        help="held-out real pairs to select the epoch on (e.g. the Karpathy val split), or a fraction "
        "of the training pairs to hold out; default: no selection, the last epoch is reported",
    )
    parser.add_argument("--validation-split", default="validation", help="split of --validation (default: validation)")
    parser.add_argument("--image-column", default="image", help="image column of the test/validation sets")
    parser.add_argument("--caption-column", default="caption", help="caption column of the test/validation sets")
    parser.add_argument(
        "--encoder",
        default=None,
        help=f"the distillation encoder, which encodes the test captions (default: {DEFAULT_ENCODER})",
    )
    parser.add_argument(
        "--student", default="nf_resnet50", help="timm model name of the student (default: nf_resnet50)"
    )
    parser.add_argument("--runs", type=int, default=5, help="training runs with different seeds (default: 5)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs per run (default: 100)")
    parser.add_argument("--eval-every", type=int, default=10, help="validation interval in epochs (default: 10)")
    parser.add_argument("--train-image-head", action="store_true", help="also train an image-side head (LoRS-style)")
    parser.add_argument("--learn-temperature", action="store_true", help="train the InfoNCE temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.add_argument(
        "--cache-dir", default=None, help="where to cache frozen features (default: the datasets cache)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not cache frozen features on disk")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="tiny random encoder and student (and tiny generated data where none is given); no download",
    )


def add_parsers(subparsers) -> None:
    """Add the ``evaluate`` and ``compare`` subcommands to ``subparsers`` (from ``parser.add_subparsers()``)."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="train a student on a distilled set and report IR@K/TR@K on a test set",
        description="Train a student (frozen image network + trained text head) on a distilled set and report "
        "IR@1/5/10, TR@1/5/10 and their mean on a test set, mean ± std over runs. The epoch is selected "
        "on --validation, never on the test set.",
    )
    evaluate.add_argument(
        "distilled",
        nargs="?",
        metavar="DISTILLED_DIR_OR_HUB_ID",
        help="the distilled set (a save_to_disk folder, a data folder or a Hub id)",
    )
    evaluate.add_argument("--split", default="train", help="split of the distilled set (default: train)")
    _add_shared(evaluate)
    evaluate.add_argument("--output", metavar="REPORT_MD", help="also write the markdown report here")
    evaluate.add_argument("--json", metavar="REPORT_JSON", help="also write every run's numbers here")
    evaluate.set_defaults(func=evaluate_command)

    compare = subparsers.add_parser(
        "compare",
        help="distill with several methods and sizes and compare them on one test set",
        description="Run pds_hf.distill with each --methods and --num-pairs on the training set, evaluate each "
        "result on the test set, and write a markdown table and a plot of mean recall against the number "
        "of pairs.",
    )
    compare.add_argument("train", nargs="?", metavar="TRAIN_NAME_OR_DIR", help="the dataset to distill")
    compare.add_argument("--split", default="train", help="split of the training set (default: train)")
    compare.add_argument("--train-image-column", default="image", help="image column of the training set")
    compare.add_argument("--train-caption-column", default="caption", help="caption column of the training set")
    compare.add_argument(
        "--methods",
        nargs="+",
        default=["pds", "random", "herding", "kcenter"],
        choices=["pds", "random", "herding", "kcenter"],
        help="selection methods to compare",
    )
    compare.add_argument(
        "--num-pairs",
        nargs="+",
        type=int,
        default=None,
        help=f"distilled set sizes (default: {' '.join(map(str, DEFAULT_SIZES))}; "
        f"{' '.join(map(str, DEMO_SIZES))} with --demo and no training set)",
    )
    compare.add_argument(
        "--synthesis",
        choices=["unclip", "retrieve", "retrieve-scored"],
        default=None,
        help="image synthesis for pds; the student needs images (default: unclip; retrieve with --demo)",
    )
    compare.add_argument("--distill-seed", type=int, default=42, help="seed of distill (default: 42)")
    _add_shared(compare)
    compare.add_argument("--output-dir", default="comparison", help="where to write comparison.md/.json/.png")
    compare.set_defaults(func=compare_command)


def _models(args):
    from ..encode import load_encoder
    from .student import load_student, tiny_student

    if args.demo:
        from ..testing import tiny_clip_encoder

        if args.encoder or args.student != "nf_resnet50":
            logger.warning("--demo uses tiny random models; --encoder and --student are ignored.")
        return tiny_clip_encoder(), tiny_student(device=args.device)
    try:
        student = load_student(args.student, device=args.device)
    except ImportError as err:
        raise CommandError(str(err)) from err
    return load_encoder(args.encoder or DEFAULT_ENCODER, device=args.device), student


def _validation(args, demo_sets):
    if args.validation is None:
        return demo_sets["validation"] if demo_sets else None
    try:
        return float(args.validation)
    except ValueError:
        return load_split(args.validation, args.validation_split)


def _evaluate_kwargs(args) -> dict:
    return dict(
        image_column=args.image_column,
        caption_column=args.caption_column,
        runs=args.runs,
        epochs=args.epochs,
        eval_every=args.eval_every,
        train_image_head=args.train_image_head,
        learn_temperature=args.learn_temperature,
        seed=args.seed,
        device=args.device,
        cache_dir=False if args.no_cache else args.cache_dir,
    )


def _need(args, *names) -> None:
    missing = ["--test" if name == "test" else name.upper() for name in names if getattr(args, name) is None]
    if missing and not args.demo:
        raise UsageError(f"missing {', '.join(missing)} (or pass --demo to try it on tiny generated data).")


def evaluate_command(args) -> int:
    """Handler of ``pds-hf evaluate``: prints the markdown report, and writes it to ``--output``."""
    from .protocol import evaluate

    _need(args, "distilled", "test")
    encoder, student = _models(args)
    demo_sets = demo_splits() if args.demo and (args.distilled is None or args.test is None) else None
    test = demo_sets["test"] if args.test is None else load_split(args.test, args.test_split)
    if args.distilled is None:
        settings = dict(method="pds", synthesis="retrieve", seed=42, device=args.device)  # the columns: the defaults
        distilled = _distill(demo_sets["train"], encoder, DEMO_PAIRS, demo=True, **settings)
    else:
        distilled = load_split(args.distilled, args.split)
    report = evaluate(
        distilled,
        test,
        encoder=encoder,
        student=student,
        validation=_validation(args, demo_sets),
        **_evaluate_kwargs(args),
    )
    markdown = report.to_markdown()
    print(markdown)
    if args.output:
        Path(args.output).write_text(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0


def compare_command(args) -> int:
    """Handler of ``pds-hf compare``: distills with every method and size, evaluates each, and writes
    ``comparison.md``, ``comparison.json`` and (with matplotlib) ``comparison.png`` to ``--output-dir``."""
    from .protocol import evaluate
    from .report import comparison_markdown, plot_comparison

    _need(args, "train", "test")
    encoder, student = _models(args)
    demo_sets = demo_splits() if args.demo and (args.train is None or args.test is None) else None
    train = demo_sets["train"] if args.train is None else load_split(args.train, args.split)
    test = demo_sets["test"] if args.test is None else load_split(args.test, args.test_split)
    validation = _validation(args, demo_sets)
    synthesis = args.synthesis or ("retrieve" if args.demo else "unclip")

    sizes = args.num_pairs or (DEMO_SIZES if args.train is None else DEFAULT_SIZES)
    settings = dict(
        synthesis=synthesis,
        seed=args.distill_seed,
        image_column=args.train_image_column,
        caption_column=args.train_caption_column,
        device=args.device,
    )
    results = []
    for method in args.methods:
        for num_pairs in sizes:
            logger.info("Distilling %d pairs with %s", num_pairs, method)
            distilled = _distill(train, encoder, num_pairs, demo=args.demo, method=method, **settings)
            report = evaluate(
                distilled, test, encoder=encoder, student=student, validation=validation, **_evaluate_kwargs(args)
            )
            results.append((method, num_pairs, report))

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    markdown = comparison_markdown(results)
    (output / "comparison.md").write_text(markdown)
    (output / "comparison.json").write_text(
        json.dumps([{"method": m, "num_pairs": n, **r.to_dict()} for m, n, r in results], indent=2, default=str)
    )
    print(markdown)
    if plot_comparison(results, output / "comparison.png"):
        print(f"Plot written to {output / 'comparison.png'}")
    else:
        print("matplotlib is not installed, so no plot was written (pip install matplotlib).")
    return 0


def main(argv=None) -> int:
    """Run ``evaluate`` or ``compare`` without the rest of ``pds-hf``."""
    parser = argparse.ArgumentParser(prog="pds-hf")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug lines and the traceback of an error")
    return run_command(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
