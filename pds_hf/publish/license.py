"""Which license a published set declares: the publisher's, else the one already published, else the source's.

The captions of a distilled set are copied from its source (and, without synthesis, its images too), so the
source's license is the right default; a publisher who knows better passes ``license=``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .layout import README, is_hub_id

UNKNOWN_LICENSES = ("", "unknown")


@dataclass
class LicenseChoice:
    """The license a card declares and where it came from.

    Attributes:
        license: a Hub license id (``"cc-by-4.0"``, ``"other"``...) or None when unknown.
        origin: ``"given"`` (``license=``), ``"repository"`` (the card being replaced), ``"source"``
            (the source dataset's card) or ``"unknown"``.
        detail: why, in words (what was looked up and what it said).
    """

    license: str | None
    origin: str
    detail: str


def _declared_license(card_data) -> str | None:
    value = card_data.get("license") if card_data else None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or value.strip().lower() in UNKNOWN_LICENSES:
        return None
    return value.strip()


def _source_card_data(source, revision: str | None, token) -> tuple[dict | None, str]:
    """The YAML of the source's card (a Hub dataset or a local folder), or None and why it could not be read."""
    from huggingface_hub import DatasetCard, HfApi

    path = Path(source)
    if path.is_dir():
        if (path / README).is_file():
            return DatasetCard.load(path / README).data.to_dict(), f"the card in {path}"
        if (path / "dataset_info.json").is_file():  # a save_to_disk folder
            info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
            return {"license": info.get("license")}, f"dataset_info.json in {path}"
        return {}, f"{path} (no README.md)"
    if not is_hub_id(source):
        return None, f"{source!r} is neither a folder nor a Hub dataset id"
    try:
        info = HfApi(token=token).dataset_info(source, revision=revision)
    except Exception as err:  # HTTP or connection error: reported, and the license stays unknown
        return None, f"the card of {source} could not be read ({type(err).__name__}: {str(err).splitlines()[0]})"
    return (info.card_data.to_dict() if info.card_data else {}), f"the card of {source}"


def resolve_license(
    *, license: str | None = None, existing_card=None, source=None, source_revision: str | None = None, token=None
) -> LicenseChoice:
    """Decide the license of a distilled set: ``license=``, else the existing card's, else the source's.

    The captions of a distilled set are copied from its source (and, without synthesis, its images too), so
    the source's license is the right default; a publisher who knows better passes ``license=``.

    Args:
        license: a Hub license id chosen by the publisher; wins over everything else.
        existing_card: the ``DatasetCard`` already on the repository (or in the folder) being replaced.
        source: the source dataset: a Hub id or a local folder (its ``README.md`` or ``dataset_info.json``).
        source_revision: the revision of a Hub ``source`` to read the card at.
        token: token for reading a private source.

    Returns:
        A :class:`LicenseChoice`; its ``license`` is None when nothing declares one.
    """
    if license is not None:
        if not isinstance(license, str) or not license.strip():
            raise ValueError(f"license must be a Hub license id such as 'cc-by-4.0' or 'other', got {license!r}.")
        return LicenseChoice(license.strip(), "given", "set by the publisher")
    declared = _declared_license(existing_card.data if existing_card is not None else None)
    if declared:
        return LicenseChoice(declared, "repository", "kept from the card already published")
    if source is None:
        return LicenseChoice(None, "unknown", "no license was given and no source dataset was named")
    data, where = _source_card_data(source, source_revision, token)
    declared = _declared_license(data)
    if declared:
        return LicenseChoice(declared, "source", f"declared by {where}")
    if data is None:
        return LicenseChoice(None, "unknown", where)
    return LicenseChoice(None, "unknown", f"{where} declares no license")
