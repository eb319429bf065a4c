"""Writing a distilled set into a folder as a Hub dataset repo: parquet shards, members, card and preview.

:func:`save_to_folder` writes the layout that :func:`pds_hf.publish.push_to_hub` uploads (and stages its upload
with the same code), into a folder that appears whole or not at all.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from ..schema import output_features
from .card import BLOCK_BEGIN, BLOCK_END, CardSource, demo_license, evaluation_markdown, render_card
from .layout import (
    DATA_DIR,
    MEMBERS_DIR,
    PREVIEW,
    README,
    SPLIT,
    AttachedMembers,
    attached_members,
    check_distilled,
)
from .license import LicenseChoice, resolve_license
from .preview import preview_grid

logger = logging.getLogger(__name__)

_SHARD_NAME = re.compile(rf"{re.escape(SPLIT)}-\d{{5}}-of-\d{{5}}\.parquet")
_LISTED = 5  # entries named in an error about what a folder holds


class OutputFolderError(ValueError):
    """A folder that cannot be written as asked: it exists, holds files pds-hf did not write, cannot be written,
    or is the current folder. The message names the folder and says what to do."""


def _is_layout_file(relative: str) -> bool:
    """Whether ``relative`` (a path inside the folder, with ``/``) names a file that :func:`write_repo` writes."""
    folder, _, name = relative.rpartition("/")
    return (folder == "" and name in (README, PREVIEW)) or (
        folder in (DATA_DIR, MEMBERS_DIR) and bool(_SHARD_NAME.fullmatch(name))
    )


def _entries(path: Path) -> tuple[list[str], list[str]]:
    """The entries of the folder ``path``, relative to it: (what pds-hf does not write; the files it does). A link
    is never pds-hf's, a folder is named by its files, and the walk stops once more than ``_LISTED`` are foreign."""
    foreign, own = [], []
    for root, dirs, files in os.walk(path):
        base = Path(root).relative_to(path)
        for name in sorted(files):
            relative = (base / name).as_posix()
            mine = _is_layout_file(relative) and not (Path(root) / name).is_symlink()
            (own if mine else foreign).append(relative)
        descend = []
        for name in sorted(dirs):
            full, relative = Path(root) / name, (base / name).as_posix()
            if full.is_symlink() or not any(full.iterdir()):
                foreign.append(f"{relative}/")
            else:
                descend.append(name)
        dirs[:] = descend
        if len(foreign) > _LISTED:  # enough to name; a large folder is not walked to the end
            break
    return foreign, own


def _listed(names: list[str]) -> str:
    more = ", ..." if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def _written_by_pds_hf(path: Path, own: list[str]) -> bool:
    """Whether the layout files ``own`` of ``path`` are an earlier run's: its card holds the pds-hf block, or
    (a card given as text) every data shard has a distilled set's columns."""
    readme = path / README
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if BLOCK_BEGIN in text and BLOCK_END in text:
            return True
    shards = [path / name for name in own if name.startswith(f"{DATA_DIR}/")]
    if not shards:
        return False
    import pyarrow.parquet as pq

    wanted = set(output_features(1))
    try:
        return all(wanted <= set(pq.read_schema(shard).names) for shard in shards)
    except (OSError, ValueError):  # not a readable parquet file
        return False


def _check_writable(path: Path) -> None:
    """Refuse ``path`` when the folder that would hold it cannot be written (by trying, as permissions, read-only
    mounts and ACLs all count)."""
    nearest = next(folder for folder in path.parents if folder.exists())
    if not nearest.is_dir():
        raise OutputFolderError(f"Cannot create the folder {path}: {nearest} is a file. Choose another folder.")
    probe = nearest / f".pds-hf-write-check-{secrets.token_hex(8)}"
    try:
        probe.mkdir()
    except OSError as err:
        raise OutputFolderError(
            f"Cannot write the folder {path}: {nearest} is not writable ({err.strerror}). "
            "Choose a folder you can write to."
        ) from err
    probe.rmdir()


def check_output_folder(path, *, overwrite: bool = False) -> Path:
    """Check, before any work, that the folder ``path`` can be written; return it as an absolute path.

    It can when it does not exist or is empty, or, with ``overwrite=True``, when an earlier pds-hf run wrote it:
    every file in it is one pds-hf writes (``README.md``, ``preview.png``, ``data/train-*-of-*.parquet``,
    ``members/train-*-of-*.parquet``) and its
    card holds the pds-hf block (or its shards a distilled set's columns). A folder holding anything else is
    never replaced, nor is the current folder or one of its parents. The folder that will hold ``path`` must be
    writable. :func:`save_to_folder` runs the same check.

    Args:
        path: the output folder.
        overwrite: whether a folder an earlier pds-hf run wrote may be replaced.

    Returns:
        ``path`` made absolute, so that ``load_dataset`` reads it as a local folder from anywhere.

    Raises:
        OutputFolderError: the folder cannot be written; the message names it, what is in the way, and the fix.

    Example:
        ```py
        >>> from pds_hf.publish.folder import check_output_folder
        >>> check_output_folder("flickr30k-pds-100")  # before distilling
        PosixPath('/home/me/flickr30k-pds-100')
        ```
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        _check_in_the_way(path, overwrite)
        _check_writable(path)
    except OSError as err:  # a folder on the way that cannot be read
        raise OutputFolderError(
            f"Cannot use the folder {path}: {err.strerror or err} ({err.filename}). Choose a folder you can write to."
        ) from err
    return path


def _check_in_the_way(path: Path, overwrite: bool) -> None:
    """Refuse ``path`` when what is there now may not be replaced (see :func:`check_output_folder`)."""
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise OutputFolderError(
            f"{path} is the current folder or one of its parents, which pds-hf never writes "
            f"into; name a new folder, e.g. {path / 'pds-output'}."
        )
    if path.is_symlink():
        raise OutputFolderError(
            f"{path} is a symbolic link; name the folder it points to ({path.resolve()}) or another folder."
        )
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{path} is a file, not a folder; choose another folder.")
    if path.is_dir():
        foreign, own = _entries(path)
        if foreign:
            raise OutputFolderError(
                f"{path} holds files pds-hf did not write ({_listed(foreign)}); pds-hf replaces "
                "only a folder it wrote. Choose another folder, or move those files away."
            )
        if own and not _written_by_pds_hf(path, own):
            raise OutputFolderError(
                f"{path} holds {_listed(own)}, but not from pds-hf (its {README} has no pds-hf "
                "block and its shards are not a distilled set); pds-hf replaces only a folder "
                "it wrote. Choose another folder."
            )
        if own and not overwrite:
            raise OutputFolderError(
                f"{path} exists (written by an earlier pds-hf run); pass overwrite=True to "
                "replace it, or choose another folder."
            )


def _new_folder_beside(path: Path, tag: str) -> Path:
    """A new hidden folder next to ``path``, with the permissions the umask gives: it becomes the output folder
    (``tempfile.mkdtemp`` would make it 0700)."""
    folder = path.parent / f".{path.name}.{tag}{secrets.token_hex(8)}"
    folder.mkdir()
    return folder


def _write_shards(ds, data_dir: Path, max_shard_rows: int, *, embed: bool = True) -> tuple[list[str], int, int]:
    """Parquet shards named as ``push_to_hub`` names them, in ``data_dir``; returns (paths relative to the repo,
    dataset_size, download_size). ``embed``: read images stored by path into the rows (a table without images,
    the members', is written as it is, a batch at a time)."""
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
        if embed:
            shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        shard.to_parquet(str(data_dir / name))
        dataset_size += shard.data.nbytes
        download_size += (data_dir / name).stat().st_size
        names.append(f"{data_dir.name}/{name}")
    return names, dataset_size, download_size


def members_to_publish(ds, members) -> AttachedMembers | None:
    """The members that go with ``ds``: ``members`` when given (a ``Dataset`` or :class:`AttachedMembers`; False:
    none), else those :func:`pds_hf.members.remember` attached to ``ds``."""
    if members is False:
        return None
    if members is None:
        return attached_members(ds)
    if isinstance(members, AttachedMembers):
        return members
    return AttachedMembers(members)


def write_repo(
    ds,
    folder: Path,
    *,
    choice: LicenseChoice,
    repo_id,
    src: CardSource,
    evaluation_md,
    existing_card,
    preview_pairs: int,
    max_shard_rows: int,
    card: str | None = None,
    members: AttachedMembers | None = None,
    max_member_shard_rows: int = 1_000_000,
) -> list[str]:
    """Write the repo layout into ``folder``; return the written paths, relative to it.

    ``members`` (see :func:`members_to_publish`) go into ``members/`` as the second config, and, with their
    source, into the preview.
    """
    files, dataset_size, download_size = _write_shards(ds, folder / DATA_DIR, max_shard_rows)
    member_sizes = None
    if members is not None:
        names, size, download = _write_shards(members.members, folder / MEMBERS_DIR, max_member_shard_rows, embed=False)
        files += names
        member_sizes = (size, download)
    preview = None
    count = min(preview_pairs, len(ds))
    if count > 0:
        preview_grid(
            ds,
            num_pairs=count,
            members=members.members if members is not None else None,
            source=members.source if members is not None else None,
            image_column=(members.image_column or "image") if members is not None else "image",
        ).save(folder / PREVIEW, format="PNG")
        preview = PREVIEW
        files.append(PREVIEW)
    if card is None:
        card = str(
            render_card(
                ds,
                choice=choice,
                repo_id=repo_id,
                src=src,
                evaluation_md=evaluation_md,
                existing_card=existing_card,
                preview=preview,
                preview_count=count,
                sizes=(dataset_size, download_size),
                members=members.members if members is not None else None,
                member_sizes=member_sizes,
                members_images=members is not None and members.source is not None and count > 0,
            )
        )
    (folder / README).write_text(card, encoding="utf-8")
    files.append(README)
    return files


def _replace(path: Path, staging: Path) -> None:
    """Put ``staging`` in the place of the folder ``path`` (one pds-hf wrote), then delete the old one; if the
    second rename fails, the old folder is put back."""
    old = _new_folder_beside(path, "old.")
    try:
        os.replace(path, old / path.name)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(staging, path)
    except OSError:
        os.replace(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_to_folder(
    ds,
    path,
    *,
    card: str | None = None,
    overwrite: bool = False,
    max_shard_rows: int = 1000,
    repo_id: str | None = None,
    license: str | None = None,
    source=None,
    source_revision: str | None = None,
    source_selection: str | None = None,
    evaluation=None,
    preview_pairs: int = 16,
    token=None,
    members=None,
) -> Path:
    """Write ``ds`` as a Hub dataset repo into the folder ``path``, as :func:`~pds_hf.publish.push_to_hub` uploads it.

    The folder appears whole or not at all: everything is written to a temporary sibling folder first and
    renamed into place. ``load_dataset(path)`` reads it, and ``hf upload ORG/NAME path --repo-type dataset``
    publishes it as is.

    Args:
        ds: a distilled ``datasets.Dataset``.
        path: the folder to create.
        card: the ``README.md`` text; by default the card of :func:`~pds_hf.publish.dataset_card`.
        overwrite: replace a folder that an earlier pds-hf run wrote (only once the new one is complete). Its
            card's text outside the pds-hf block and its YAML keys are kept, as on the Hub. A folder holding
            anything pds-hf did not write is never replaced (see :func:`check_output_folder`); an empty one is
            used without ``overwrite``.
        max_shard_rows: rows per parquet shard.
        repo_id: the Hub id the folder is meant for, shown in the card's ``load_dataset`` example.
        license: see :func:`resolve_license`; unknown is allowed here (``license: unknown``).
        source: the source dataset's Hub id or folder (named in the card; its license is the default).
        source_revision: the source revision the set was made from.
        source_selection: which rows of the source were distilled, in words.
        evaluation: an evaluation report, a markdown file or markdown text, included in the card.
        preview_pairs: pairs shown in ``preview.png`` (0: no preview).
        token: token for reading a private source's card.
        members: the members to publish as the ``members`` config (``load_dataset(path, "members")``): by
            default those the set carries (:func:`pds_hf.members`); a members ``Dataset``; or False for none.

    Returns:
        The folder, as an absolute path.

    Raises:
        OutputFolderError: before anything is written, when the folder cannot be written or replaced.

    Example:
        ```py
        >>> pds_hf.save_to_folder(small, "./flickr30k-pds-100")
        >>> load_dataset("./flickr30k-pds-100", split="train")
        ```
    """
    from huggingface_hub import DatasetCard

    path = check_output_folder(path, overwrite=overwrite)
    check_distilled(ds)
    evaluation_md = evaluation_markdown(evaluation)
    existing_card = DatasetCard.load(path / README) if (path / README).is_file() else None
    choice = resolve_license(
        license=license, existing_card=existing_card, source=source, source_revision=source_revision, token=token
    )
    choice = demo_license(choice, ds)
    if choice.license is None and card is None:
        logger.warning(
            "License unknown (%s): the card says 'license: unknown'. Pass license=... before sharing.", choice.detail
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder_beside(path, "")
    try:
        write_repo(
            ds,
            staging,
            choice=choice,
            repo_id=repo_id,
            src=CardSource(source, source_revision, source_selection),
            evaluation_md=evaluation_md,
            existing_card=existing_card,
            preview_pairs=preview_pairs,
            max_shard_rows=max_shard_rows,
            card=card,
            members=members_to_publish(ds, members),
        )
        check_output_folder(path, overwrite=overwrite)  # again: files may have been added while it was written
        if path.is_dir() and any(path.iterdir()):
            _replace(path, staging)
        else:
            os.replace(staging, path)  # a new folder, or in place of an empty one
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote %d pairs to %s", len(ds), path)
    return path
