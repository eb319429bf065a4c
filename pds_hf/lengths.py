"""How many rows a unit of a stream must yield, known from its source without reading its rows.

A stream cut short without an error (a truncated file read to a clean end, a connection closed cleanly, a
generator that returns early) looks like a short shard. Where the source knows its length, the rows a unit of
the stream (``ds.shard(num_shards=ds.n_shards, index=u)``, or a ``split_dataset_by_node`` part) must yield can
be found from metadata alone, and a unit that yields fewer is an error rather than a silent loss:

- ``Dataset.to_iterable_dataset`` (and ``IterableDataset.from_dict/from_list/from_pandas``): the rows of the
  unit's in-memory shards;
- parquet files (``load_dataset("parquet", ..., streaming=True)``, a Hub dataset stored as parquet,
  ``IterableDataset.from_parquet``): the row counts in the footers of the unit's files (or of its row groups
  after ``reshard()``), read through the same opener the builder uses; not with ``filters`` or
  ``on_bad_files`` other than ``"error"``, which drop rows;
- arrow files on the local disk (``load_dataset("arrow", ..., streaming=True)``, ``IterableDataset.from_file``):
  the row counts of their record batches, from the memory-mapped batch headers.

On top of a source, the steps that keep every row keep the count (``select_columns``, ``rename_column(s)``,
``remove_columns``, ``cast``/``cast_column``, ``decode``, ``with_format``, ``shuffle``, a non-batched ``map``
outside an arrow, pandas or polars format);
``skip``, ``take``, ``repeat``, ``concatenate_datasets`` and ``split_dataset_by_node`` change it in a known way.
A ``filter``, a batched ``map``, ``interleave_datasets`` and every other source (generators, json, csv,
webdataset, image folders) give None: their length is only known by reading them.

This leans on the internals of ``datasets.iterable_dataset`` (checked against datasets 5.2): anything it does
not recognise gives None, never an error.
"""

from __future__ import annotations

import builtins
import logging
import os

logger = logging.getLogger(__name__)


def expected_rows(unit) -> int | None:
    """The number of rows ``unit`` must yield when read to its end, or None when only reading it can tell.

    The count is found from the source's metadata (in-memory shard sizes, parquet footers, arrow batch headers)
    and the steps applied on top of it, without reading a row. It holds for one fresh pass over ``unit`` with
    ``iter(unit)`` or ``unit.iter(batch_size, drop_last_batch=False)`` in the main process; a unit that yields
    fewer rows was cut short.

    Args:
        unit (`datasets.IterableDataset`):
            A unit of work of a stream, typically ``ds.shard(num_shards=ds.n_shards, index=u)`` or
            ``datasets.distributed.split_dataset_by_node(ds, rank=u, world_size=w)``; any ``IterableDataset``
            is accepted.

    Returns:
        `int` or `None`: the number of rows, or None when the source or one of the steps on it does not tell
        (a generator, json or csv files, a ``filter``, a batched ``map`` or one on arrow tables, a stream
        resumed from a state dict),
        or when ``unit`` is not an ``IterableDataset`` at all.

    Example:

    ```py
    >>> from datasets import Dataset
    >>> from pds_hf.lengths import expected_rows
    >>> stream = Dataset.from_dict({"caption": [str(i) for i in range(10)]}).to_iterable_dataset(num_shards=3)
    >>> [expected_rows(stream.shard(num_shards=stream.n_shards, index=u)) for u in range(stream.n_shards)]
    [4, 3, 3]
    >>> expected_rows(stream.filter(lambda row: row["caption"] != "0")) is None
    True
    ```
    """
    try:
        from datasets import IterableDataset

        if not isinstance(unit, IterableDataset) or unit._starting_state_dict:
            return None
        return _rows(_as_iterated(unit))
    except Exception as err:  # a layout of datasets' internals this module does not know
        logger.debug("The length of the stream cannot be known (%s: %s).", type(err).__name__, err)
        return None


def _as_iterated(unit):
    """The examples iterable that iterating ``unit`` reads: its epoch's shard order and its node's part.

    The same steps as ``IterableDataset._prepare_ex_iterable_for_iteration``; the shard order only matters for
    which shards a node gets.
    """
    import numpy as np
    from datasets.iterable_dataset import DataSourcesShufflingDisallowed, StepExamplesIterable

    ex_iterable = unit._ex_iterable
    if unit.epoch:
        try:
            ex_iterable = ex_iterable.shuffle_data_sources(np.random.default_rng(unit.epoch))
        except DataSourcesShufflingDisallowed:
            pass
    node = unit._distributed
    if node is not None:
        by_shards = node.strategy == "shards" or (
            node.strategy == "auto" and ex_iterable.num_shards % node.world_size == 0
        )
        if by_shards:
            ex_iterable = ex_iterable.shard_data_sources(num_shards=node.world_size, index=node.rank, contiguous=False)
        else:
            ex_iterable = StepExamplesIterable(ex_iterable, step=node.world_size, offset=node.rank)
    return ex_iterable


def _rows(ex_iterable) -> int | None:
    """The rows one examples iterable yields, from its source and its kind; None when they cannot be known."""
    from datasets import iterable_dataset as it

    kind = type(ex_iterable)  # exact types: filter's iterable is a subclass of map's
    if kind is it.ArrowExamplesIterable:
        return _source_rows(ex_iterable.generate_tables_fn, ex_iterable.kwargs)
    if kind is it.VerticallyConcatenatedMultiSourcesExamplesIterable:
        counts = [_rows(part) for part in ex_iterable.ex_iterables]
        return None if None in counts else sum(counts)
    if kind in (
        it.SelectColumnsIterable,
        it.FormattedExamplesIterable,
        it.BufferShuffledExamplesIterable,
        it.InterleavedShardsExamplesIterable,
    ):
        # A column selection, a cast or a format, a shuffle buffer, shards read in turn: every row comes out once.
        return _rows(ex_iterable.ex_iterable)
    if kind is it.RebatchedArrowExamplesIterable:
        return None if ex_iterable.drop_last_batch else _rows(ex_iterable.ex_iterable)
    if kind is it.MappedExamplesIterable:
        # One output per input row, unless the function sees batches or (arrow/pandas/polars format) returns tables.
        formatting = ex_iterable.formatting
        one_to_one = not (
            ex_iterable.batched
            or ex_iterable.is_batch_accumulate_arrow_table_function
            or (formatting is not None and formatting.is_table)
        )
        return _rows(ex_iterable.ex_iterable) if one_to_one else None
    if kind not in (
        it.StepExamplesIterable,
        it.SkipExamplesIterable,
        it.TakeExamplesIterable,
        it.RepeatExamplesIterable,
    ):
        return None
    inner = _rows(ex_iterable.ex_iterable)
    if inner is None:
        return None
    if kind is it.StepExamplesIterable:
        return len(range(ex_iterable.offset, inner, ex_iterable.step))
    if kind is it.SkipExamplesIterable:
        return max(inner - ex_iterable.n, 0)
    if kind is it.TakeExamplesIterable:
        return min(inner, max(ex_iterable.n, 0))
    if ex_iterable.num_times is None:  # repeated forever, unless there is nothing to repeat
        return 0 if inner == 0 else None
    return inner * max(ex_iterable.num_times, 0)


def _source_rows(generate_tables, kwargs: dict) -> int | None:
    """The rows a source of arrow tables yields for ``kwargs`` (its part of the source), from metadata only."""
    from datasets import Dataset
    from datasets.packaged_modules.arrow.arrow import Arrow
    from datasets.packaged_modules.parquet.parquet import Parquet

    if generate_tables is Dataset._generate_tables_from_shards:
        shards = kwargs["shards"]
        return sum(len(shard) for shard in shards) if all(isinstance(s, Dataset) for s in shards) else None
    if generate_tables is Dataset._generate_tables_from_cache_file:
        return _arrow_file_rows(kwargs["filename"])
    method = getattr(generate_tables, "__func__", None)
    builder = getattr(generate_tables, "__self__", None)
    if method is Parquet._generate_tables:
        config = builder.config
        if config.filters is not None or config.on_bad_files != "error":
            return None
        # The builder's module `open` is datasets' streaming opener (fsspec, hf://, chained archives) when streaming.
        opener = method.__globals__.get("open", builtins.open)
        return sum(
            _parquet_rows(opener, file, row_groups)
            for file, row_groups in zip(kwargs["files"], kwargs["row_groups_list"], strict=True)
        )
    if method is Arrow._generate_tables:
        counts = [_arrow_file_rows(file) for file in kwargs["files"]]
        return None if None in counts else sum(counts)
    return None


def _parquet_rows(opener, file: str, row_groups) -> int:
    """Rows of a parquet file, or of its row groups ``row_groups`` (ids), from its footer."""
    import pyarrow.parquet as pq

    with opener(file, "rb") as f:
        metadata = pq.read_metadata(f)
    if row_groups is None:
        return metadata.num_rows
    return sum(metadata.row_group(i).num_rows for i in row_groups)


def _arrow_file_rows(path) -> int | None:
    """Rows of a local arrow file (IPC stream or file format) from its batch headers; None if not on this disk."""
    import pyarrow as pa

    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    with pa.memory_map(path) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (OSError, pa.ArrowInvalid):  # the builder's order: the stream format first, then the file format
            source.seek(0)
            return pa.ipc.open_file(source).count_rows()
        # Batches of a memory map are views: counting them reads their headers, not their rows.
        return sum(batch.num_rows for batch in reader)
