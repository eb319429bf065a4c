"""Publishing a distilled set: the Hub's dataset repo layout, in a local folder or on the Hub.

The layout is what ``Dataset.push_to_hub`` writes and ``load_dataset`` reads: parquet shards with
the images embedded under ``data/``, and a ``README.md`` dataset card whose YAML lists the config.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SPLIT = "train"


def _write_shards(ds, data_dir: Path, max_shard_rows: int) -> list[str]:
    from datasets.utils import tqdm

    data_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, -(-len(ds) // max_shard_rows))
    names = []
    for index in tqdm(range(num_shards), desc="Writing parquet shards", unit="shard"):
        name = f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
        ds.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(str(data_dir / name))
        names.append(f"data/{name}")
    return names


def save_to_folder(ds, path, *, card=None, overwrite: bool = False, max_shard_rows: int = 1000) -> Path:
    """Write ``ds`` as a Hub dataset repo into the folder ``path`` (loadable with ``load_dataset(path)``).

    The folder appears whole or not at all: everything is written to a temporary sibling folder
    first and renamed into place.

    Args:
        ds: a distilled ``datasets.Dataset``.
        path: the folder to create.
        card: the ``README.md`` text; by default the dataset card of :func:`dataset_card`.
        overwrite: replace an existing folder (only once the new one is complete).
        max_shard_rows: rows per parquet shard.

    Example:
        ```py
        >>> pds_hf.save_to_folder(small, "./flickr30k-pds-100")
        >>> load_dataset("./flickr30k-pds-100", split="train")
        ```
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) or choose another folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_shards(ds, staging / "data", max_shard_rows)
        (staging / "README.md").write_text(card if card is not None else dataset_card(ds), encoding="utf-8")
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote %d pairs to %s", len(ds), path)
    return path


def dataset_card(ds) -> str:
    """A minimal dataset card: the YAML config that ``load_dataset`` needs and how the set was made."""
    import json

    from .pipeline import metadata

    try:
        meta = metadata(ds)
    except ValueError:
        meta = {}
    return (
        "---\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "tags:\n- dataset-distillation\n- synthetic\n- pds\n"
        "---\n\n"
        f"# Distilled with pds-hf\n\n{len(ds)} image-text pairs.\n\n"
        f"```json\n{json.dumps(meta, indent=2, default=str)}\n```\n"
    )
