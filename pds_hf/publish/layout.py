"""The files of a published set, the error publishing raises, and the checks every publishing path shares.

The layout is the one ``Dataset.push_to_hub`` writes and ``load_dataset`` reads, plus a preview:

- ``data/train-00000-of-0000N.parquet``: the rows, images embedded;
- ``members/train-00000-of-0000N.parquet``: the ``members`` config, which real pairs each row stands for
  (:mod:`pds_hf.members`), when the set carries them;
- ``README.md``: the dataset card (:mod:`pds_hf.publish.card`);
- ``preview.png``: a grid of the first pairs (:mod:`pds_hf.publish.preview`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

SPLIT = "train"
DATA_DIR = "data"
README = "README.md"
PREVIEW = "preview.png"
MEMBERS_CONFIG = "members"
MEMBERS_DIR = "members"


class PublishError(RuntimeError):
    """Publishing was refused or failed; the message says why, what was (not) changed, and the fix."""


def is_hub_id(source) -> bool:
    """Whether ``source`` names a Hub repository (``owner/name``) rather than a local folder that exists."""
    return isinstance(source, str) and source.count("/") == 1 and not Path(source).exists()


def is_data_shard(path: str) -> bool:
    """Whether ``path`` (relative to a repo, with ``/``) is one of the parquet shards this layout writes (the rows'
    or the members')."""
    return path.startswith((f"{DATA_DIR}/{SPLIT}-", f"{MEMBERS_DIR}/{SPLIT}-")) and path.endswith(".parquet")


@dataclass
class AttachedMembers:
    """The members a distilled Dataset carries (see :mod:`pds_hf.members`), with the source their images are in.

    Attributes:
        members: the members ``datasets.Dataset``.
        source: the map-style source ``datasets.Dataset`` (None for a stream): the members' images for the preview.
        image_column: the source's image column.
    """

    members: object
    source: object = None
    image_column: str | None = None


# Each distilled Dataset object that carries members, by id; an entry leaves with its Dataset.
_ATTACHED: dict[int, AttachedMembers] = {}


def attach_members(ds, members, *, source=None, image_column: str | None = None) -> None:
    """Attach ``members`` (and the ``source`` holding their images) to the distilled Dataset object ``ds``."""
    _ATTACHED[id(ds)] = AttachedMembers(members, source, image_column)
    weakref.finalize(ds, _ATTACHED.pop, id(ds), None)


def attached_members(ds) -> AttachedMembers | None:
    """What :func:`attach_members` attached to the Dataset object ``ds``, or None."""
    return _ATTACHED.get(id(ds))


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
