"""The one interface of a source of pairs, and the input rules that both kinds share.

Every rule a source must pass before any model loads lives here once: the type of the object, the roles and
features of its columns, whether its images are needed, the embedding columns, the sizes a run can give and the
encoder the given embeddings record. :class:`Source` applies them in one order for a ``datasets.Dataset``
(:class:`~pds_hf.sources.mapped.MappedSource`) and a ``datasets.IterableDataset``
(:class:`~pds_hf.sources.streamed.StreamedSource`), so that the same inputs get the same error either way.
"""

from __future__ import annotations

import logging

import numpy as np

from ..schema import recorded_encoder

logger = logging.getLogger(__name__)

_MAX_LISTED = 5


def check_dataset_type(ds, *, streaming: bool = False) -> None:
    """Refuse what is not a single ``datasets.Dataset`` (or, with ``streaming=True``, a single
    ``datasets.IterableDataset``), saying what to do instead."""
    import datasets

    for cls, how in ((datasets.DatasetDict, ""), (datasets.IterableDatasetDict, ", streaming=True")):
        if isinstance(ds, cls):
            splits = list(ds.keys())
            raise TypeError(
                f"Got a{'n' if how else ''} {cls.__name__} with splits {splits}; distill one split, e.g. "
                f"ds[{splits[0]!r}].distill(...) or load_dataset(..., split={splits[0]!r}{how})."
            )
    if isinstance(ds, datasets.IterableDataset):
        if streaming:
            return
        raise TypeError(
            "Got an IterableDataset (streaming=True) where a map-style Dataset is needed (rows read by index). "
            "pds_hf.distill and DistillProcessor take a stream as it is; here, load without streaming=True or "
            "materialise it: Dataset.from_generator(lambda: (yield from ids), features=ids.features)."
        )
    if not isinstance(ds, datasets.Dataset):
        raise TypeError(
            f"Expected a datasets.{'IterableDataset or ' if streaming else ''}Dataset, got {type(ds).__name__}."
        )


def caption_layout(ds, caption_column: str) -> str:
    """How ``ds`` holds its captions, read from the caption column's feature: ``"pair"`` (one string per row) or
    ``"image"`` (a list of strings per row, one image with several captions).

    Shared by the map-style checks and the stream's, so that both read the same layouts and refuse the same
    features.

    Example:
        ```py
        >>> from datasets import Dataset
        >>> caption_layout(Dataset.from_dict({"caption": ["a cat"]}), "caption")
        'pair'
        ```
    """
    from datasets import LargeList, List, Value

    feature = ds.features[caption_column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return "pair"
    if isinstance(feature, (List, LargeList)):
        inner = feature.feature
        if isinstance(inner, Value) and inner.dtype in ("string", "large_string"):
            return "image"
    raise TypeError(
        f"Column {caption_column!r} has feature {feature}; expected a string (one row per pair) or a list of "
        "strings (one row per image). Pass caption_column=... to name the right column."
    )


def needs_images(config, given: bool) -> bool:
    """Whether a run with ``config`` reads the source's images: the one rule for map-style and streamed sources.

    Images are needed to encode them (no embedding columns ``given``), and in step 7 whenever it takes real
    images: ``synthesis="retrieve"``/``"retrieve-scored"``, or a baseline's own pairs. With ``synthesis="none"``
    no image is ever read, whatever the method.
    """
    from ..synthesize import REAL_IMAGE_METHODS

    if not given:
        return True
    return config.synthesis != "none" and (config.method != "pds" or config.synthesis in REAL_IMAGE_METHODS)


def check_column_roles(
    features, image_column: str, caption_column: str, *, require_images: bool = True, what: str = "dataset"
) -> None:
    """The column rules that a ``Dataset`` and a stream share: the image and caption columns exist (the image
    column only when ``require_images`` or present) and the image column holds images.

    Args:
        features: the source's ``datasets.Features``.
        what: how an error names the source (``"dataset"`` or ``"stream"``).
    """
    from datasets import Image

    columns = list(features)
    needed = [(caption_column, "caption", "caption_column")]
    if require_images or image_column in columns:
        needed.insert(0, (image_column, "image", "image_column"))
    for name, role, option in needed:
        if name not in columns:
            raise KeyError(
                f"The {what} has no {role} column {name!r}; its columns are {columns}. "
                f"Pass {option}=... to name the {role} column."
            )
    if image_column in columns and not isinstance(features[image_column], Image):
        raise TypeError(
            f"Column {image_column!r} holds {features[image_column]}, not images: pass image_column=... to "
            "name the column of images. A column of image file paths or bytes must be made an Image column first "
            f"(in Python: ds = ds.cast_column({image_column!r}, datasets.Image()))."
        )


def embedding_columns_present(
    ds, image_embedding_column: str, text_embedding_column: str, *, what: str = "dataset"
) -> bool:
    """Whether ``ds`` carries both embedding columns (one alone is an error: say which is missing).

    ``what`` names the source in the error (``"dataset"`` or ``"stream"``).
    """
    columns = set(getattr(ds, "column_names", None) or [])
    has = [name in columns for name in (image_embedding_column, text_embedding_column)]
    if any(has) and not all(has):
        present, missing = (
            (image_embedding_column, text_embedding_column)
            if has[0]
            else (text_embedding_column, image_embedding_column)
        )
        raise KeyError(
            f"The {what} has the embedding column {present!r} but not {missing!r}; both are needed to skip "
            f"encoding. Add it (ds.map(processor.encode, batched=True)), name it with "
            f"{'text' if has[0] else 'image'}_embedding_column=..., or drop {present!r} to encode from scratch."
        )
    return all(has)


def check_not_empty(num_rows: int, what: str = "dataset") -> None:
    """Refuse a source without rows: a ``Dataset`` before anything is read, a stream once its rows are counted (at
    the end of its encode pass). ``what`` names the source (``"dataset"`` or ``"stream"``)."""
    if num_rows == 0:
        raise ValueError(f"The {what} has no rows.")


def bad_images_error(image_column: str, rows, where: str = "") -> ValueError:
    """The error for images that ``on_bad_image="error"`` refuses, in the same words for both kinds of source.

    A ``Dataset`` finds its null images when its pairs are read and its undecodable ones when they are encoded; a
    stream finds both in its encode pass, where ``where`` names the input shard (``"Input shard 1 of the stream: "``)
    and ``rows`` count within it.

    Example:
        ```py
        >>> str(bad_images_error("image", [5]))
        "Column 'image' has 1 empty (null) or undecodable image(s), at row(s) [5]. Remove them (ds.filter) or ..."
        ```
    """
    rows = [int(row) for row in rows]
    return ValueError(
        f"{where}Column {image_column!r} has {len(rows)} empty (null) or undecodable image(s), at row(s) "
        f"{rows[:_MAX_LISTED]}. Remove them (ds.filter) or pass on_bad_image='skip'."
    )


def spec_name(spec, revision: str | None = None) -> str | None:
    """The name an encoder is known by: its id (with a revision other than main), or a loaded one's name.

    Example:
        ```py
        >>> spec_name("openai/clip-vit-base-patch32", "v2")
        'openai/clip-vit-base-patch32@v2'
        ```
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec if revision in (None, "main") else f"{spec}@{revision}"
    name = getattr(spec, "name", None) or getattr(spec, "name_or_path", None)
    return name if isinstance(name, str) and name else None


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


class Source:
    """Where the pairs of a run come from: a ``datasets.Dataset`` or a ``datasets.IterableDataset``.

    Build one with :func:`pds_hf.sources.source_for`. :meth:`check` applies every input rule and returns the
    layout; :meth:`identity` names the content for the stage keys; :meth:`check_sizes` refuses a ``num_pairs`` the
    pairs read cannot give; :meth:`describe` is the source's entry in the run record.

    Args:
        ds: the dataset or stream.
        config: the run's :class:`~pds_hf.DistillConfig`.

    Attributes:
        kind: ``"dataset"`` or ``"stream"``: how errors name the source.
        given: whether ``ds`` carries both embedding columns (known after :meth:`check`; then nothing is encoded).
        layout: ``"pair"`` or ``"image"`` (known after :meth:`check`).

    Example:
        ```py
        >>> from pds_hf.sources import source_for
        >>> source = source_for(ds, pds_hf.DistillConfig(num_pairs=10))
        >>> source.check(), source.given
        ('image', False)
        ```
    """

    kind = "source"

    def __init__(self, ds, config):
        self.ds = ds
        self.config = config
        self.given = False
        self.layout: str | None = None

    @property
    def has_images(self) -> bool:
        """Whether the source has its image column (it may lack one when the embeddings are given)."""
        return self.config.image_column in self.ds.column_names

    @property
    def needs_images(self) -> bool:
        """Whether the run reads the source's images (see :func:`needs_images`)."""
        return needs_images(self.config, self.given)

    def check(self) -> str:
        """Apply every input rule that needs no row read; return the layout (``"pair"`` or ``"image"``).

        Raises:
            KeyError, TypeError, ValueError: naming the column and the fix.
        """
        config = self.config
        self.given = embedding_columns_present(
            self.ds, config.image_embedding_column, config.text_embedding_column, what=self.kind
        )
        check_column_roles(
            self.ds.features,
            config.image_column,
            config.caption_column,
            require_images=self.needs_images,
            what=self.kind,
        )
        self.check_rows()
        self.layout = caption_layout(self.ds, config.caption_column)
        if self.given:
            self.check_recorded_encoder()
        return self.layout

    def check_rows(self) -> None:
        """The rules on the number of rows that this kind can tell without reading them (none by default)."""

    def embeddings(self, load_encoder, *, timer, ranks, cache_dir):
        """Run the encode stage: check the source, read its pairs and give one embedding per distinct image and
        caption, encoded (``load_encoder()`` gives the encoder, loaded only when needed) or read from the given
        columns, cached under the stage's key (see :mod:`pds_hf.stages`).

        Args:
            load_encoder: a function returning this process's encoder.
            timer: the run's :class:`~pds_hf.cache.StageTimer`.
            ranks: the processes of the run (:class:`~pds_hf.distributed.Ranks`); each encodes its share.
            cache_dir: the cache folder (None: nothing is cached).

        Returns:
            An :class:`~pds_hf.stages.Embedded`; its embeddings are None on the processes that do not select.
        """
        raise NotImplementedError

    def images(self, selection, *, ranks, cache_dir) -> list:
        """The source's own images chosen by ``selection`` (``selection.image_index``: the nearest to each image
        prototype, the teacher's pick, or a baseline's pairs), resized to ``config.image_size``."""
        raise NotImplementedError

    def given_encoder(self) -> str:
        """Where the given embeddings came from: the encoder their column records, or the column's name."""
        column = self.config.image_embedding_column
        return recorded_encoder(self.ds.features[column]) or f"given column {column!r}"

    def record(self, table, num_rows: int) -> dict:
        """The source's entries in the run record: ``source`` (:meth:`describe`) and, for given embeddings, which
        columns they came from."""
        config = self.config
        entries = {"source": self.describe(table, num_rows)}
        if self.kind == "stream":
            entries["streaming"] = True
        if self.given:
            entries["embeddings"] = {
                "given": True,
                "image_column": config.image_embedding_column,
                "text_column": config.text_embedding_column,
            }
        return entries

    def identity(self) -> str | None:
        """The fingerprint of what the source holds (None: it cannot be known, and nothing is cached)."""
        raise NotImplementedError

    def check_sizes(self, table) -> None:
        """Refuse a ``num_pairs`` that the usable pairs of ``table`` cannot give (after ``rm_ratio`` for PDS, and
        with enough distinct images and captions to cluster)."""
        config = self.config
        if config.method != "pds":
            if config.num_pairs > table.num_pairs:
                raise ValueError(
                    f"num_pairs={config.num_pairs} but the {self.kind} has {table.num_pairs} usable pairs; pass "
                    f"num_pairs={table.num_pairs} or fewer."
                )
            return
        left = table.num_pairs - int(np.floor(config.rm_ratio * table.num_pairs))
        if config.num_pairs > left:
            raise ValueError(
                f"num_pairs={config.num_pairs} but the {self.kind} has {table.num_pairs} usable pairs, {left} after "
                f"removing rm_ratio={config.rm_ratio} of them; pass num_pairs={left} or fewer, or a smaller "
                f"rm_ratio={config.rm_ratio / 2:g}."
            )
        # Each modality is cut into num_pairs k-means clusters: it needs at least that many distinct items.
        for what, count in (("images", len(table.image_rows)), ("captions", len(table.texts))):
            if config.num_pairs > count:
                raise ValueError(
                    f"num_pairs={config.num_pairs} but the {self.kind} has only {count} distinct {what}, and PDS "
                    f"clusters each modality into num_pairs clusters; pass num_pairs={count} or fewer."
                )

    def check_recorded_encoder(self) -> None:
        """Warn when the given embedding columns record an encoder other than ``clip_model``; the embeddings are
        used as they are."""
        config = self.config
        mine = spec_name(config.clip_model, config.clip_revision)
        for column in (config.image_embedding_column, config.text_embedding_column):
            theirs = recorded_encoder(self.ds.features[column])
            if theirs is not None:
                if mine is not None and theirs != mine:
                    logger.warning(
                        "Column %r was encoded with %r but this processor is configured with clip_model=%r. The "
                        "given embeddings are used as they are (no encoding); captions and prototypes live in "
                        "%r's space. Pass clip_model=%r to silence this, or drop the column to re-encode.",
                        column,
                        theirs,
                        mine,
                        theirs,
                        theirs,
                    )
                return

    def describe(self, table, num_rows: int) -> dict:
        """The source's entry in the run record: name, split, fingerprint and what was read from it."""
        info = self.ds.info
        return {
            "dataset": info.dataset_name or info.builder_name,
            "config": info.config_name,
            "split": str(self.ds.split) if self.ds.split is not None else None,
            "fingerprint": self.identity(),
            "num_rows": num_rows,
            "num_pairs": int(table.num_pairs),
            "num_images": int(len(table.image_rows)),
            "num_captions": int(len(table.texts)),
            "layout": table.layout,
            "skipped_images": len(table.skipped_images),
        }
