"""Which real pairs each distilled pair stands for: its members, one row per source pair.

A PDS pair averages the kept source pairs of its matched intersection (step 5): the pairs whose image fell in
its image cluster and whose caption fell in its text cluster. Those are its members. A baseline's pair is one
real pair: its only member is that pair itself.

The members table has one row per member:

- ``pair``: the row of the distilled set the member stands behind;
- ``source_row``: the member's row in the source dataset (in stream order for a stream);
- ``caption_index``: which caption of that row (0 in the one-row-per-pair layout; the position in the row's
  list of captions in the one-row-per-image layout);
- ``caption``: the member's caption, so that the table reads without the source at hand;
- ``image_similarity``, ``text_similarity``: the cosine of the member's image and text embeddings to the pair's
  image and text prototypes;
- the id, URL and license columns of a map-style source (see :func:`carried_columns`).

Rows are in source order (by ``source_row``, then ``caption_index``). The table is written a block of pairs at
a time into the select stage's folder (``members-<tag>.arrow``) and memory-mapped back, so that 10M pairs are
never held whole; a rerun with the same select stage reuses the file.

Example:
    ```py
    >>> import pds_hf
    >>> small = pds_hf.distill(ds, num_pairs=100)
    >>> members = pds_hf.members(small)
    >>> members.filter(lambda pair: pair == 0, input_columns="pair").sort("image_similarity", reverse=True)[:5]
    >>> pds_hf.members("me/flickr30k-pds-100")  # the "members" config of a published set
    ```
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import types
import weakref
from pathlib import Path

import numpy as np

from .cache import fingerprint
from .publish.layout import MEMBERS_CONFIG, attach_members, attached_members, is_hub_id

logger = logging.getLogger(__name__)

# Bump when the table's content or columns change: the file name in the select stage carries it.
MEMBERS_VERSION = 1
# The members' info description holds this key with the counts the card reports.
SUMMARY_KEY = "pds_hf_members"
BLOCK_PAIRS = 65536

# A source column is carried into the members when one of its name's words is one of these (``img_id``,
# ``url``, ``license``), or its last word ends in ``id``/``ids``/``url`` (``cocoid``, ``sentids``, ``flickr_url``).
_CARRIED_WORDS = {
    "id",
    "ids",
    "url",
    "urls",
    "uri",
    "link",
    "href",
    "license",
    "licence",
    "copyright",
    "attribution",
    "author",
    "creator",
    "credit",
    "owner",
    "filename",
}
_CARRIED_SUFFIXES = ("id", "ids", "url", "urls")

# Each members Dataset this process wrote, by id, with the source it came from (for the preview's images).
_SOURCES: dict[int, tuple] = {}


def _scalar(feature) -> bool:
    """Whether ``feature`` is a ``Value`` of strings or integers (a bool or float is not an identifier)."""
    from datasets import Value

    return isinstance(feature, Value) and (
        feature.dtype in ("string", "large_string") or re.fullmatch(r"u?int\d+", feature.dtype) is not None
    )


def carried_columns(features, *, layout: str = "pair", exclude=()) -> dict:
    """The source columns the members carry, and how: ``{name: "value" | "at_caption"}``.

    The rule: a column named like an identifier, a URL or a license (a word of its name, split at anything but
    letters and digits, is one of ``id``, ``url``, ``uri``, ``link``, ``href``, ``license``/``licence``,
    ``copyright``, ``attribution``, ``author``, ``creator``, ``credit``, ``owner``, ``filename``; or its last word
    ends in ``id``, ``ids`` or ``url``, as ``cocoid`` and ``sentids``), whose values are strings or integers.
    In the one-row-per-image layout, a list of such values (``sentids``: one per caption) is carried as the entry
    at the member's ``caption_index`` (null when the list is shorter). Nothing else is carried: images,
    captions and embeddings are never copied.

    Args:
        features: the source's ``datasets.Features``.
        layout: ``"pair"`` or ``"image"`` (see :class:`~pds_hf.inputs.PairTable`).
        exclude: column names never carried (the image, caption and embedding columns).

    Example:
        ```py
        >>> carried_columns(load_dataset("nlphuji/flickr30k", split="test").features, layout="image")
        {'sentids': 'at_caption', 'img_id': 'value', 'filename': 'value'}
        ```
    """
    from datasets import List, Sequence

    out = {}
    for name, feature in features.items():
        if name in exclude:
            continue
        words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
        if not words or not (set(words) & _CARRIED_WORDS or words[-1].endswith(_CARRIED_SUFFIXES)):
            continue
        if _scalar(feature):
            out[name] = "value"
        elif layout == "image" and isinstance(feature, (List, Sequence)) and _scalar(feature.feature):
            out[name] = "at_caption"
    return out


def _features(source_features, carried: dict):
    from datasets import Features, Value

    features = {
        "pair": Value("int64"),
        "source_row": Value("int64"),
        "caption_index": Value("int64"),
        "caption": Value("string"),
        "image_similarity": Value("float32"),
        "text_similarity": Value("float32"),
    }
    for name, how in carried.items():
        features[name] = source_features[name] if how == "value" else source_features[name].feature
    return Features(features)


def _unit_rows(block) -> np.ndarray:
    """``block`` as float32 rows of length one (a zero row stays zero, so its cosine is 0, never NaN)."""
    block = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, np.finfo(np.float32).tiny)


def _caption_positions(pair_rows: np.ndarray, start: int, stop: int, pairs: np.ndarray) -> np.ndarray:
    """The position of each of ``pairs`` (within ``start:stop``) among its row's pairs: a row's pairs are contiguous
    and in caption order, as :func:`~pds_hf.inputs.read_pairs` and the stream's merge number them (checked on
    ``start:stop``; no N-sized array is made)."""
    if np.any(np.diff(pair_rows[max(start - 1, 0) : stop]) < 0):
        raise ValueError(
            f"The pair table is not in row order (its pair_rows decrease between pairs {start} and {stop}), so the "
            "members' caption_index cannot be told; pass the table read_pairs or the stream made, unchanged."
        )
    return pairs - np.searchsorted(pair_rows, pair_rows[pairs], side="left")


def _member_pairs(selection, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``(members, their pair)`` among the source pairs ``start:stop``, in source order."""
    if selection.pair_image_labels is None:  # a baseline: each pair's one member is the chosen pair
        chosen = np.asarray(selection.pairs, dtype=np.int64)
        inside = np.flatnonzero((chosen >= start) & (chosen < stop))
        order = inside[np.argsort(chosen[inside], kind="stable")]
        return chosen[order], order
    image_cluster = np.asarray(selection.image_cluster, dtype=np.int64)
    text_cluster = np.asarray(selection.text_cluster, dtype=np.int64)
    image_labels = np.asarray(selection.pair_image_labels[start:stop], dtype=np.int64)
    text_labels = np.asarray(selection.pair_text_labels[start:stop], dtype=np.int64)
    size = int(max(image_cluster.max(initial=-1), image_labels.max(initial=-1))) + 1
    # Hungarian matching is one-to-one: an image cluster belongs to at most one distilled pair.
    pair_of_cluster = np.full(max(size, 1), -1, dtype=np.int64)
    valid = image_cluster >= 0
    pair_of_cluster[image_cluster[valid]] = np.flatnonzero(valid)
    pair = np.where(image_labels >= 0, pair_of_cluster[np.maximum(image_labels, 0)], -1)
    member = (pair >= 0) & (text_labels == text_cluster[np.maximum(pair, 0)])
    local = np.flatnonzero(member)
    return local + start, pair[local]


def _blocks(selection, image_embeds, text_embeds, carried: dict, source_ds, block_pairs: int):
    """The members table as ``pyarrow.Table`` blocks, one per ``block_pairs`` source pairs."""
    import pyarrow as pa

    table = selection.table
    image_protos = _unit_rows(selection.image_embeds)
    text_protos = _unit_rows(selection.text_embeds)
    carried_source = source_ds.select_columns(list(carried)).with_format("arrow") if carried else None
    for start in range(0, max(table.num_pairs, 1), block_pairs):
        stop = min(start + block_pairs, table.num_pairs)
        members, pair = _member_pairs(selection, start, stop)
        # Rows read by index from arrays or memory maps; an empty block keeps its width.
        images = _unit_rows(
            np.asarray(image_embeds[table.pair_image[members]]).reshape(len(members), image_protos.shape[1])
        )
        texts = _unit_rows(
            np.asarray(text_embeds[table.pair_text[members]]).reshape(len(members), text_protos.shape[1])
        )
        rows = table.pair_rows[members]
        positions = _caption_positions(table.pair_rows, start, stop, members)
        columns = {
            "pair": pa.array(pair, pa.int64()),
            "source_row": pa.array(rows, pa.int64()),
            "caption_index": pa.array(positions, pa.int64()),
            "caption": pa.array([table.texts[i] for i in table.pair_text[members]], pa.string()),
            "image_similarity": pa.array(np.einsum("nd,nd->n", images, image_protos[pair]), pa.float32()),
            "text_similarity": pa.array(np.einsum("nd,nd->n", texts, text_protos[pair]), pa.float32()),
        }
        if carried:
            values = carried_source[rows.tolist()] if len(rows) else carried_source[:0]
            for name, how in carried.items():
                column = values.column(name).to_pylist()
                if how == "at_caption":
                    column = [
                        None if items is None or k >= len(items) else items[k]
                        for items, k in zip(column, positions.tolist(), strict=True)
                    ]
                columns[name] = column
        yield columns


def _summary(selection, rows: int, carried: dict) -> dict:
    """The counts a card reports about the members."""
    support = np.asarray(selection.support, dtype=np.int64)
    baseline = selection.pair_image_labels is None
    return {
        "version": MEMBERS_VERSION,
        "method": "baseline" if baseline else "pds",
        "pairs": len(selection),
        "members": rows,
        "source_pairs": int(selection.table.num_pairs),
        "kept_pairs": None if baseline else int(selection.kept),
        "represented": int(rows if baseline else support.sum()),
        "empty_matches": None if baseline else int(selection.num_empty),
        "pairs_without_members": int((support == 0).sum()),
        "carried_columns": list(carried),
    }


def write_members(
    selection,
    image_embeds,
    text_embeds,
    *,
    stage,
    source_ds=None,
    image_column: str = "image",
    caption_column: str = "caption",
    block_pairs: int = BLOCK_PAIRS,
):
    """Write the members of every distilled pair of ``selection`` into ``stage``; return them as a ``Dataset``.

    Args:
        selection: the :class:`~pds_hf.processor.Selection` of a run (its ``table``, and for PDS its per-pair
            labels ``pair_image_labels`` / ``pair_text_labels``).
        image_embeds, text_embeds: the distinct image and caption embeddings the select stage clustered (rows of
            ``selection.table.pair_image`` / ``pair_text``), arrays or memory maps, float32 or float16.
        stage: the select stage (:class:`~pds_hf.cache.Stage`): the table is written into its folder and reused
            on a rerun. A :class:`~pds_hf.cache.MemoryStage` (no folder) keeps it in memory.
        source_ds: the map-style source ``datasets.Dataset``, whose id, URL and license columns are carried
            (:func:`carried_columns`) and whose images the preview shows; None for a stream.
        image_column, caption_column: the source's image and caption columns (never carried).
        block_pairs: source pairs handled at a time (memory is flat in the number of pairs).

    Returns:
        The members ``datasets.Dataset`` (memory-mapped from the stage's file when on disk).

    Example:
        ```py
        >>> from pds_hf.members import write_members
        >>> members = write_members(selection, image_embeds, text_embeds, stage=stage, source_ds=ds)
        >>> sum(members["pair"] == 0 for _ in [0]), selection.support[0]
        ```
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.arrow_writer import ArrowWriter
    from datasets.table import InMemoryTable

    if selection.table is None:
        raise ValueError("The selection carries no pair table (selection.table); make it with DistillProcessor.")
    if selection.pair_image_labels is None and len(selection.pairs) != len(selection):
        raise ValueError(
            "The selection has neither per-pair cluster labels (PDS) nor chosen pairs (a baseline): it was made by "
            "an older pds-hf; run the select stage again (a new cache folder, or use_cache=False)."
        )
    carried = {}
    if source_ds is not None:
        carried = carried_columns(
            source_ds.features, layout=selection.table.layout, exclude=(image_column, caption_column)
        )
    features = _features(source_ds.features if source_ds is not None else {}, carried)
    name = f"members-{fingerprint('members', MEMBERS_VERSION, carried)[:12]}"
    folder = getattr(stage, "path", None)
    path = Path(folder) / f"{name}.arrow" if folder is not None else None
    if path is not None and stage.done(name) and path.is_file():
        logger.info("Reusing the finished members table found in %s.", stage)
        members = Dataset.from_file(str(path))
    else:
        if path is None:
            sink = pa.BufferOutputStream()
            writer = ArrowWriter(features=features, stream=sink)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            writer = ArrowWriter(features=features, path=tmp)
        try:
            for columns in _blocks(selection, image_embeds, text_embeds, carried, source_ds, block_pairs):
                writer.write_batch(columns)
            writer.finalize()
        except BaseException:
            writer.close()
            if path is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise
        writer.close()
        if path is None:
            reader = pa.ipc.open_stream(sink.getvalue())
            members = Dataset(InMemoryTable(reader.read_all()), info=DatasetInfo(features=features))
        else:
            os.replace(tmp, path)
            stage.mark_done(name)
            members = Dataset.from_file(str(path))
    summary = _summary(selection, len(members), carried)
    members.info.description = json.dumps({SUMMARY_KEY: summary})
    if source_ds is not None:
        _SOURCES[id(members)] = (source_ds, image_column)
        weakref.finalize(members, _SOURCES.pop, id(members), None)
    return members


def members_summary(members) -> dict:
    """The counts :func:`write_members` recorded in a members ``Dataset``'s info (empty when it has none)."""
    try:
        return json.loads(members.info.description or "")[SUMMARY_KEY]
    except (ValueError, KeyError, TypeError):
        return {}


def remember(output, members_ds) -> None:
    """Attach ``members_ds`` to the distilled ``output`` Dataset object, for :func:`members` and publishing.

    ``save_to_folder`` and ``push_to_hub`` then write it as the ``members`` config, and the source images it
    came with (``source_ds`` of :func:`write_members`) go into ``preview.png``. The counts go into the run record
    (``pds_hf.metadata(output)["members"]``). The link is to this Python object: a Dataset derived from it
    (``select``, ``map``) has no members (pass ``members=`` to the publishing functions).

    Example:
        ```py
        >>> remember(small, write_members(selection, image_embeds, text_embeds, stage=stage, source_ds=ds))
        >>> pds_hf.members(small) is not None
        True
        ```
    """
    from .schema import METADATA_KEY, read_run_record

    if len(members_ds) and max(members_ds["pair"]) >= len(output):
        raise ValueError(
            f"The members name pair {max(members_ds['pair'])}, but the distilled set has {len(output)} rows: "
            "they belong to another run."
        )
    source, image_column = _SOURCES.get(id(members_ds), (None, None))
    attach_members(output, members_ds, source=source, image_column=image_column)
    try:
        record = read_run_record(output)
    except ValueError:
        return
    record["members"] = members_summary(members_ds)
    output.info.description = json.dumps({METADATA_KEY: record})


def members(small, *, revision: str | None = None, token=None):
    """The members of a distilled set: which real pairs each of its pairs stands for (see :mod:`pds_hf.members`).

    Args:
        small: the distilled ``Dataset`` as :func:`pds_hf.distill` returned it, or a folder written by
            :func:`pds_hf.save_to_folder`, or a Hub id published by :func:`pds_hf.push_to_hub` (its ``members``
            config).
        revision: the Hub revision to read.
        token: a token for a private repository.

    Returns:
        A ``datasets.Dataset``, one row per member: ``pair``, ``source_row``, ``caption_index``, ``caption``,
        ``image_similarity``, ``text_similarity`` and the carried source columns.

    Raises:
        ValueError: the Dataset carries no members (it was derived from the distilled one, or made before they
            existed), or the folder or repository has no ``members`` config.

    Example:
        ```py
        >>> members = pds_hf.members(small)
        >>> members.filter(lambda pair: pair == 0, input_columns="pair")["caption"][:3]
        >>> pds_hf.members("me/flickr30k-pds-100")
        ```
    """
    from datasets import Dataset, load_dataset

    if isinstance(small, Dataset):
        found = attached_members(small)
        if found is None:
            raise ValueError(
                "This Dataset carries no members: only the Dataset pds_hf.distill returned does (not one derived "
                "from it by select/map, nor one loaded back with load_dataset). Pass its folder or Hub id instead, "
                "e.g. pds_hf.members('./flickr30k-pds-100')."
            )
        return found.members
    where = str(small)
    if not Path(where).is_dir() and not is_hub_id(where):
        raise FileNotFoundError(f"{where}: neither a distilled Dataset, a folder, nor a Hub dataset id.")
    try:
        return load_dataset(where, MEMBERS_CONFIG, split="train", revision=revision, token=token)
    except ValueError as err:
        if "BuilderConfig" in str(err) or MEMBERS_CONFIG in str(err):
            raise ValueError(
                f"{where} has no {MEMBERS_CONFIG!r} config: it was published without members (by an older pds-hf, "
                "or from a Dataset derived from the distilled one)."
            ) from err
        raise


class _CallableModule(types.ModuleType):
    """This module, callable: ``pds_hf.members(small)`` is :func:`members`, and ``pds_hf.members.write_members``
    stays this module's function (the package exports the module, not a function that would hide it)."""

    def __call__(self, small, **kwargs):
        return members(small, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
