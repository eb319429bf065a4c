"""What the quality datasets' builders (``openclipart.py``, ``openmoji.py``) share: a built ``DatasetDict``
cached on disk beside its ``manifest.json``, the seeded split, and the command line that builds one and
prints a few rows.

A build lives in its own folder under the cache: ``data/`` (``save_to_disk``) and ``manifest.json``, written
last, so that a build cut short is not taken for a finished one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"

T = TypeVar("T")


def build_once(
    target: Path,
    fetch: Callable[[], T],
    make: Callable[[T], tuple[list[dict], dict]],
    *,
    features,
    seed: int,
    test_images: int,
    validation_images: int,
):
    """The dataset saved in ``target``, built and saved there first if it is not yet.

    A build ``fetch``-es its inputs, ``make``-s the rows from them, and splits the rows: a permutation by ``seed``
    gives the first ``test_images`` to ``test``, the next ``validation_images`` to ``validation`` and the rest to
    ``train`` (within a split the rows keep their order).

    Args:
        target: the build's folder under the cache; it gets ``data/`` and then ``manifest.json``.
        fetch: gets the inputs (timed as the manifest's ``seconds.fetch``).
        make: the rows from the inputs, one dict per image with a ``caption`` list, and the builder's part of the
            manifest (version, inputs, size, seed, counts); ``splits`` (images and captions per split) and
            ``seconds`` (``fetch``, and ``build``: from the inputs to the saved splits) are added after it.
        features: the ``datasets.Features`` of a row.
        seed: seeds the permutation.
        test_images, validation_images: rows in the test and validation splits.

    Returns:
        ``(dataset_dict, manifest)``, the splits loaded from ``target``.

    Example:
        ```py
        >>> splits, manifest = build_once(cache / "name", lambda: fetch_package(cache), make_rows,
        ...                               features=features, seed=0, test_images=500, validation_images=300)
        ```
    """
    import datasets

    if (target / "manifest.json").exists():
        return datasets.load_from_disk(str(target / "data")), json.loads((target / "manifest.json").read_text())

    start = time.perf_counter()
    inputs = fetch()
    fetched = time.perf_counter()
    rows, manifest = make(inputs)
    order = np.random.default_rng(seed).permutation(len(rows))
    parts = {
        "test": order[:test_images],
        "validation": order[test_images : test_images + validation_images],
        "train": order[test_images + validation_images :],
    }
    splits = datasets.DatasetDict(
        {
            part: datasets.Dataset.from_list([rows[i] for i in sorted(index)], features=features, split=part)
            for part, index in parts.items()
        }
    )
    splits.save_to_disk(str(target / "data"))
    manifest = {
        **manifest,
        "splits": {
            part: {"images": len(ds), "captions": int(sum(len(c) for c in ds["caption"]))}
            for part, ds in splits.items()
        },
        "seconds": {"fetch": round(fetched - start, 1), "build": round(time.perf_counter() - fetched, 1)},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return datasets.load_from_disk(str(target / "data")), manifest


def main(argv, *, description: str, build: Callable, label: str) -> int:
    """Build (or load) a dataset, print its manifest and 12 training rows as ``<label column> -> captions``.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``): ``--cache-dir``, ``--size`` and ``--seed``.
        description: the ``--help`` text.
        build: the builder's ``build(cache_dir, *, size, seed)``.
        label: the column printed before each row's captions.

    Example:
        ```py
        >>> main(None, description="OpenMoji.", build=openmoji.build, label="group")
        ```
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    splits, manifest = build(args.cache_dir, size=args.size, seed=args.seed)
    print(json.dumps(manifest, indent=2))
    train = splits["train"]
    for i in np.random.default_rng(1).choice(len(train), size=12, replace=False):
        print(train[int(i)][label], "->", train[int(i)]["caption"])
    return 0
