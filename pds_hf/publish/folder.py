"""Writing a distilled set into a folder as a Hub dataset repo: parquet shards, card and preview.

:func:`save_to_folder` writes the layout that :func:`pds_hf.publish.push_to_hub` uploads (and stages its upload
with the same code), into a folder that appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .card import _evaluation_markdown, _render_card, _Source
from .layout import DATA_DIR, PREVIEW, README, SPLIT, _check_distilled
from .license import LicenseChoice, resolve_license
from .preview import preview_grid

logger = logging.getLogger(__name__)


def _write_shards(ds, data_dir: Path, max_shard_rows: int) -> tuple[list[str], int, int]:
    """Parquet shards named as ``push_to_hub`` names them; returns (paths, dataset_size, download_size)."""
    from datasets.table import embed_table_storage
    from datasets.utils import tqdm

    if max_shard_rows < 1:
        raise ValueError(f"max_shard_rows must be at least 1, got {max_shard_rows}.")
    data_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, -(-len(ds) // max_shard_rows))
    names, dataset_size, download_size = [], 0, 0
    for index in tqdm(range(num_shards), desc="Writing parquet shards", unit="shard"):
        name = f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        # Images referenced by path are read into the rows, so that the shard stands alone (as push_to_hub does).
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        shard.to_parquet(str(data_dir / name))
        dataset_size += shard.data.nbytes
        download_size += (data_dir / name).stat().st_size
        names.append(f"{DATA_DIR}/{name}")
    return names, dataset_size, download_size


def _write_repo(ds, folder: Path, *, choice: LicenseChoice, repo_id, src: _Source, evaluation_md,
                existing_card, preview_pairs: int, max_shard_rows: int, card: str | None = None) -> list[str]:
    """Write the repo layout into ``folder``; return the written paths, relative to it."""
    files, dataset_size, download_size = _write_shards(ds, folder / DATA_DIR, max_shard_rows)
    preview = None
    count = min(preview_pairs, len(ds))
    if count > 0:
        preview_grid(ds, num_pairs=count).save(folder / PREVIEW, format="PNG")
        preview = PREVIEW
        files.append(PREVIEW)
    if card is None:
        card = str(_render_card(ds, choice=choice, repo_id=repo_id, src=src, evaluation_md=evaluation_md,
                                existing_card=existing_card, preview=preview, preview_count=count,
                                sizes=(dataset_size, download_size)))
    (folder / README).write_text(card, encoding="utf-8")
    files.append(README)
    return files


def save_to_folder(ds, path, *, card: str | None = None, overwrite: bool = False, max_shard_rows: int = 1000,
                   repo_id: str | None = None, license: str | None = None, source=None,
                   source_revision: str | None = None, source_selection: str | None = None, evaluation=None,
                   preview_pairs: int = 16, token=None) -> Path:
    """Write ``ds`` as a Hub dataset repo into the folder ``path``, as :func:`~pds_hf.publish.push_to_hub` uploads it.

    The folder appears whole or not at all: everything is written to a temporary sibling folder first and
    renamed into place. ``load_dataset(path)`` reads it, and ``hf upload ORG/NAME path --repo-type dataset``
    publishes it as is.

    Args:
        ds: a distilled ``datasets.Dataset``.
        path: the folder to create.
        card: the ``README.md`` text; by default the card of :func:`~pds_hf.publish.dataset_card`.
        overwrite: replace an existing folder (only once the new one is complete). Its card's text outside
            the pds-hf block and its YAML keys are kept, as on the Hub.
        max_shard_rows: rows per parquet shard.
        repo_id: the Hub id the folder is meant for, shown in the card's ``load_dataset`` example.
        license: see :func:`resolve_license`; unknown is allowed here (``license: unknown``).
        source: the source dataset's Hub id or folder (named in the card; its license is the default).
        source_revision: the source revision the set was made from.
        source_selection: which rows of the source were distilled, in words.
        evaluation: an evaluation report, a markdown file or markdown text, included in the card.
        preview_pairs: pairs shown in ``preview.png`` (0: no preview).
        token: token for reading a private source's card.

    Example:
        ```py
        >>> pds_hf.save_to_folder(small, "./flickr30k-pds-100")
        >>> load_dataset("./flickr30k-pds-100", split="train")
        ```
    """
    from huggingface_hub import DatasetCard

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) or choose another folder.")
    _check_distilled(ds)
    evaluation_md = _evaluation_markdown(evaluation)
    existing_card = DatasetCard.load(path / README) if (path / README).is_file() else None
    choice = resolve_license(license=license, existing_card=existing_card, source=source,
                             source_revision=source_revision, token=token)
    if choice.license is None and card is None:
        logger.warning("License unknown (%s): the card says 'license: unknown'. Pass license=... before sharing.",
                       choice.detail)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_repo(ds, staging, choice=choice, repo_id=repo_id, src=_Source(source, source_revision, source_selection),
                    evaluation_md=evaluation_md, existing_card=existing_card, preview_pairs=preview_pairs,
                    max_shard_rows=max_shard_rows, card=card)
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
