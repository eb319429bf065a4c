"""The files of a published set, the error publishing raises, and the checks every publishing path shares.

The layout is the one ``Dataset.push_to_hub`` writes and ``load_dataset`` reads, plus a preview:

- ``data/train-00000-of-0000N.parquet``: the rows, images embedded;
- ``README.md``: the dataset card (:mod:`pds_hf.publish.card`);
- ``preview.png``: a grid of the first pairs (:mod:`pds_hf.publish.preview`).
"""

from __future__ import annotations

from pathlib import Path

SPLIT = "train"
DATA_DIR = "data"
README = "README.md"
PREVIEW = "preview.png"


class PublishError(RuntimeError):
    """Publishing was refused or failed; the message says why, what was (not) changed, and the fix."""


def is_hub_id(source) -> bool:
    """Whether ``source`` names a Hub repository (``owner/name``) rather than a local folder that exists."""
    return isinstance(source, str) and source.count("/") == 1 and not Path(source).exists()


def is_data_shard(path: str) -> bool:
    """Whether ``path`` (relative to a repo, with ``/``) is one of the parquet shards this layout writes."""
    return path.startswith(f"{DATA_DIR}/{SPLIT}-") and path.endswith(".parquet")


def check_distilled(ds) -> None:
    """Refuse anything but a distilled ``datasets.Dataset`` with every output column, before any file is written."""
    from datasets import Dataset

    from ..schema import output_features

    if not isinstance(ds, Dataset):
        raise TypeError(f"Expected the distilled datasets.Dataset (one split), got {type(ds).__name__}.")
    missing = [name for name in output_features(1) if name not in ds.column_names]
    if missing:
        raise ValueError(
            f"The dataset lacks the column(s) {missing} of a distilled set (made by pds_hf.distill); "
            f"its columns are {ds.column_names}."
        )
    if len(ds) == 0:
        raise ValueError("The distilled dataset has no rows; there is nothing to publish.")
