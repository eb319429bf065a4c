"""Recipes: one source dataset distilled at several sizes, each size published as ``ORG/<name>-pds-<M>``.

A recipe script (see ``dataset_scripts/``) holds only what is its own: the source, how its rows become image
and caption pairs, a small stand-in for offline dry runs, the words for the cards. A :class:`Recipe` holds
those, and :meth:`Recipe.main` does the rest, the same way for every source: the command line, the checks
before any work (output folders, or the token, namespace and license of every repository), distilling each
size with :class:`~pds_hf.DistillBuilder`, and writing folders or pushing to the Hub.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """A distill-and-publish recipe for one source dataset, run from the command line by :meth:`main`.

    Attributes:
        name: each size ``M`` is published as ``ORG/<name>-pds-<M>``.
        sources: the source's Hub id, mapped to which of its rows are distilled, in words (written in the cards).
            With several ids (copies of the same data), the first is the default and ``--source`` chooses.
        source_split: the split of the source that is read.
        write_dry_run_source: ``write_dry_run_source(folder, source) -> folder``: writes a small stand-in for the
            Hub id ``source`` into ``folder``, with its columns, types and file layout, for ``--dry-run``.
        source_revision: the default of ``--source-revision`` (a branch or tag: the run pins the commit it
            resolves to, and the cards record that commit).
        source_filter: keep only the rows whose columns equal these values, e.g. ``{"split": "train"}``.
        source_columns: the columns that are distilled, e.g. ``["image", "caption"]``.
        to_pairs: ``to_pairs(ds, source) -> Dataset`` with the columns ``image`` and ``caption``, for a source
            whose columns must be renamed or flattened first. The mapped split is saved once per source
            revision (under ``--cache-dir``) and distilled from there; without it, the source is distilled as
            it is, through ``source_filter`` and ``source_columns``.
        sizes: the sizes ``M`` distilled by default.
        dry_run_sizes: the sizes ``M`` distilled by default with ``--dry-run``.
        description: the command line's description.
        license_help: the help of ``--license`` (say whether the source's card declares a license).
        source_help: the help of ``--source`` (with several ``sources``).

    Example:
        ```py
        >>> from pds_hf.recipe import Recipe
        >>> def write_stand_in(folder, source):   # a few rows with the source's columns, in its file layout
        ...     ...
        ...     return folder
        >>> recipe = Recipe(
        ...     name="flickr30k", sources={"nlphuji/flickr30k": "Karpathy train split: rows with split == 'train'"},
        ...     source_split="test", source_revision="refs/convert/parquet", source_filter={"split": "train"},
        ...     source_columns=["image", "caption"], write_dry_run_source=write_stand_in)
        >>> recipe.main(["--org", "me", "--license", "other"])     # me/flickr30k-pds-100, ..., me/flickr30k-pds-1000
        >>> recipe.main(["--org", "me", "--dry-run"])              # offline: tiny models, ./pds-dry-run/flickr30k-pds-4
        ```
    """

    name: str
    sources: Mapping[str, str]
    source_split: str
    write_dry_run_source: Callable[[Path, str], Path]
    source_revision: str = "main"
    source_filter: dict | None = None
    source_columns: list | None = None
    to_pairs: Callable | None = None
    sizes: Sequence[int] = (100, 200, 500, 1000)
    dry_run_sizes: Sequence[int] = (4, 8)
    description: str | None = None
    license_help: str = "Hub license id (default: the one the source's card declares)."
    source_help: str | None = None

    def __post_init__(self):
        if not self.sources:
            raise ValueError("Recipe needs sources={'<Hub id>': '<which rows are distilled, in words>'}.")
        if self.to_pairs is not None and (self.source_filter or self.source_columns):
            raise ValueError(
                "Recipe: to_pairs= makes the pairs from the source, so choose the rows and columns there; "
                "source_filter= and source_columns= apply only without to_pairs=."
            )

    def parser(self) -> argparse.ArgumentParser:
        """The recipe's command line: where to publish, the sizes and settings, and ``--dry-run``."""
        parser = argparse.ArgumentParser(
            description=self.description, epilog=f"Each size M is published as ORG/{self.name}-pds-M."
        )
        parser.add_argument("--org", required=True, help="Hub namespace (user or organisation) to publish under.")
        if len(self.sources) > 1:
            parser.add_argument(
                "--source", choices=tuple(self.sources), default=next(iter(self.sources)), help=self.source_help
            )
        else:
            parser.set_defaults(source=next(iter(self.sources)))
        parser.add_argument(
            "--sizes",
            type=int,
            nargs="+",
            help=f"Distilled sizes M (default {' '.join(map(str, self.sizes))}; "
            f"{' '.join(map(str, self.dry_run_sizes))} with --dry-run).",
        )
        parser.add_argument(
            "--synthesis",
            choices=["unclip", "retrieve", "retrieve-scored", "none"],
            default="unclip",
            help="Step 7: Stable unCLIP (paper), the nearest real image, or no image.",
        )
        parser.add_argument("--license", help=self.license_help)
        parser.add_argument("--private", action="store_true", help="Create the repositories private.")
        parser.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`).")
        parser.add_argument(
            "--output-dir", help="Write folders here instead of pushing (default ./pds-dry-run with --dry-run)."
        )
        parser.add_argument("--overwrite", action="store_true", help="Replace existing folders in --output-dir.")
        parser.add_argument(
            "--cache-dir",
            help="Where the distilled sets are built (default: datasets' cache; OUTPUT_DIR/.cache with --dry-run).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Offline: a synthetic slice shaped like the source and tiny random models; folders only.",
        )
        parser.add_argument("--source-revision", default=self.source_revision, help="Revision of the source to read.")
        parser.add_argument("--steps", type=int, help="unCLIP denoising steps (default 100; 2 with --dry-run).")
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available).")
        return parser

    def load_source(self, where: str, revision: str | None):
        """The split ``source_split`` of the source: a Hub id at a revision, or the dry run's stand-in folder."""
        from datasets import load_dataset

        return load_dataset(where, revision=revision, split=self.source_split)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the recipe: distill each size and save it to a folder or push it to the Hub.

        Everything that can fail cheaply is checked before the source is read: existing output folders (without
        ``--overwrite``), or, when pushing, the token, the namespace and the license of every repository. Each
        size is built by :class:`~pds_hf.DistillBuilder` into datasets' cache, so running again (say, after a
        failed upload) publishes without distilling again.

        Args:
            argv: the command-line arguments (default: ``sys.argv[1:]``).

        Returns:
            The exit status: 0, or 2 after printing ``error: ...`` to stderr when an input or a check fails.
        """
        from datasets.exceptions import DatasetGenerationError

        from .builder import DistillBuilder
        from .cli_base import command_line_words
        from .publish import PublishError, prepare_push, push_to_hub, save_to_folder
        from .publish.folder import check_output_folder

        parser = self.parser()
        args = parser.parse_args(argv)
        sizes = args.sizes or (self.dry_run_sizes if args.dry_run else self.sizes)
        repo_ids = [f"{args.org}/{self.name}-pds-{size}" for size in sizes]
        output_dir = Path(args.output_dir) if args.output_dir else (Path("pds-dry-run") if args.dry_run else None)
        try:
            if output_dir is not None:  # a folder that cannot be written fails now, not after distilling
                for repo_id in repo_ids:
                    check_output_folder(output_dir / repo_id.split("/")[1], overwrite=args.overwrite)
            if output_dir is None:
                for repo_id in repo_ids:  # a bad token, namespace or license fails now, not after hours of work
                    prepare_push(
                        repo_id,
                        token=args.token,
                        license=args.license,
                        source=args.source,
                        source_revision=args.source_revision,
                    )
            cache_dir = args.cache_dir or (str(output_dir / ".cache") if args.dry_run else None)
            where, revision, settings = self._source_and_settings(args, output_dir)
            source = self._builder_source(where, revision, args.source, cache_dir)
            for size, repo_id in zip(sizes, repo_ids, strict=False):
                build = DistillBuilder(
                    cache_dir=cache_dir,
                    source_split=self.source_split,
                    distill={**settings, "num_pairs": size},
                    **source,
                )
                build.download_and_prepare()
                small = build.as_dataset("train")
                publish = dict(
                    license=args.license,
                    source=where,
                    source_revision=revision,
                    source_selection=self.sources[args.source],
                )
                if output_dir is not None:
                    target = save_to_folder(
                        small, output_dir / repo_id.split("/")[1], repo_id=repo_id, overwrite=args.overwrite, **publish
                    )
                else:
                    target = push_to_hub(
                        small, repo_id, private=args.private or None, token=args.token, **publish
                    ).commit_url
                print(f"{repo_id}: {len(small)} pairs -> {target}")
        except (PublishError, ValueError, KeyError, TypeError, FileExistsError) as err:
            print(f"error: {command_line_words(str(err), parser)}", file=sys.stderr)
            return 2
        except DatasetGenerationError as err:
            # The builder wraps what failed while distilling; its cause says what to fix.
            cause = err.__cause__ or err
            print(f"error: {command_line_words(str(cause), parser)}", file=sys.stderr)
            return 2 if isinstance(cause, (ValueError, KeyError, TypeError)) else 1
        return 0

    def _source_and_settings(self, args, output_dir: Path | None) -> tuple[str, str | None, dict]:
        """Where the source is read (Hub id or stand-in folder), its pinned revision, and the distill settings."""
        settings = dict(synthesis=args.synthesis, seed=args.seed)
        if args.dry_run:
            from .testing import save_tiny_clip, save_tiny_unclip

            stand_in = output_dir / f"{args.source.replace('/', '--')}-stand-in"
            # Written once: rewriting it would give its files new times, and the builder would take it for a new source.
            where = str(stand_in if stand_in.exists() else self.write_dry_run_source(stand_in, args.source))
            models = output_dir / ".models"
            settings.update(
                clip_model=save_tiny_clip(models / "tiny-random-clip"),
                image_size=32,
                device="cpu",
                num_inference_steps=args.steps or 2,
            )
            if args.synthesis == "unclip":
                settings["unclip_model"] = save_tiny_unclip(models / "tiny-random-unclip")
            return where, None, settings
        from huggingface_hub import HfApi

        # Pin the commit, so that the cards say exactly what was read even if the source changes later.
        revision = HfApi(token=args.token).dataset_info(args.source, revision=args.source_revision).sha
        settings.update(num_inference_steps=args.steps or 100, device=args.device)
        return args.source, revision, settings

    def _builder_source(self, where: str, revision: str | None, source: str, cache_dir: str | None) -> dict:
        """The :class:`~pds_hf.DistillBuilder` arguments that name what is distilled (the mapped pairs' folder,
        saved now if missing, or the source itself)."""
        if self.to_pairs is None:
            return dict(
                source=where,
                source_revision=revision,
                source_filter=self.source_filter,
                source_columns=self.source_columns,
            )
        pairs_dir = (
            Path(cache_dir or Path.home() / ".cache" / "pds_hf_recipes")
            / f"{self.name}-pairs-{source.replace('/', '--')}-{revision or 'dry-run'}"
        )
        if not (pairs_dir / "state.json").exists():
            self.to_pairs(self.load_source(where, revision), source).save_to_disk(str(pairs_dir))
        return dict(source=str(pairs_dir))
