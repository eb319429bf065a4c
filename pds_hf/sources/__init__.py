"""Where the pairs of a run come from: one interface, two kinds.

- :class:`MappedSource`: a ``datasets.Dataset`` (rows read by index; identity: datasets' fingerprint);
- :class:`StreamedSource`: a ``datasets.IterableDataset`` (read in passes over its input shards; identity: the
  stream's recipe, :func:`stream_fingerprint`).

Every input rule lives here once (:meth:`Source.check`, :meth:`Source.check_sizes`), so the same inputs get the
same error or the same result as a Dataset or as a stream, before any model loads; and so does the identity that
starts the stage keys (:meth:`Source.identity`). Reading the pairs, encoding and fetching the chosen images still
live in :mod:`pds_hf.inputs`, :mod:`pds_hf.encode` and :mod:`pds_hf.stream`; they move here next.

Example:
    ```py
    >>> from pds_hf.sources import source_for
    >>> source = source_for(load_dataset("nlphuji/flickr30k", split="test", streaming=True), pds_hf.DistillConfig())
    >>> source.kind, source.check()
    ('stream', 'image')
    ```
"""

from .base import Source, check_columns, check_dataset_type, embedding_columns_present, spec_name
from .mapped import MappedSource
from .streamed import StreamedSource, stream_fingerprint


def source_for(ds, config) -> Source:
    """The :class:`Source` of ``ds``: a :class:`StreamedSource` for an ``IterableDataset``, else a
    :class:`MappedSource` (which refuses what is not a single ``Dataset``, saying what to pass instead).

    Args:
        ds: a ``datasets.Dataset`` or ``datasets.IterableDataset``.
        config: the run's :class:`~pds_hf.DistillConfig`.
    """
    from datasets import IterableDataset

    return StreamedSource(ds, config) if isinstance(ds, IterableDataset) else MappedSource(ds, config)


__all__ = [
    "MappedSource",
    "Source",
    "StreamedSource",
    "check_columns",
    "check_dataset_type",
    "embedding_columns_present",
    "source_for",
    "spec_name",
    "stream_fingerprint",
]
