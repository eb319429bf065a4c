"""A ``datasets.Dataset`` as a source: its rows are read by index, its identity is datasets' fingerprint."""

from __future__ import annotations

from .base import Source, caption_layout, check_column_roles, check_dataset_type, check_not_empty


def check_columns(ds, image_column: str, caption_column: str, *, require_images: bool = True) -> str:
    """Check both columns of a ``Dataset`` exist and hold images and captions; return the layout.

    The column rules of :class:`MappedSource` for callers that have the column names but no config
    (:func:`pds_hf.inputs.read_pairs`, ``DistillProcessor.embed``). With ``require_images=False`` (embeddings given
    and no step needs a real image), the image column may be missing.
    """
    check_dataset_type(ds)
    check_column_roles(ds.features, image_column, caption_column, require_images=require_images)
    check_not_empty(len(ds))
    return caption_layout(ds, caption_column)


class MappedSource(Source):
    """A map-style ``datasets.Dataset`` (see :class:`~pds_hf.sources.base.Source`).

    Example:
        ```py
        >>> source = MappedSource(ds, pds_hf.DistillConfig())
        >>> source.check(), source.identity() == ds._fingerprint
        ('image', True)
        ```
    """

    kind = "dataset"

    def __init__(self, ds, config):
        check_dataset_type(ds)
        super().__init__(ds, config)

    def check_rows(self) -> None:
        check_not_empty(len(self.ds), self.kind)

    def identity(self) -> str:
        """datasets' own fingerprint of the dataset (its cache key for every transform)."""
        return self.ds._fingerprint
