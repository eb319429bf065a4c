"""``DistillBuilder``: a distilled set as a ``datasets`` builder, built into datasets' own cache.

The builder's config names the source (id or folder, config, split, revision, an optional row filter) and
the distillation settings (ids and values, never loaded models: the config is part of the cache path).
``download_and_prepare()`` runs :class:`~pds_hf.DistillProcessor` once and writes the result as datasets
writes any dataset (Arrow, or parquet with ``file_format="parquet"``); building again with the same config
finds it there and does no work. ``as_dataset("train")`` loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import datasets

from .config import DistillConfig
from .processor import DistillProcessor

SPLIT = "train"


@dataclass
class DistillBuilderConfig(datasets.BuilderConfig):
    """What :class:`DistillBuilder` distills, and how.

    Attributes:
        source: the source dataset: a Hub id, a folder ``load_dataset`` reads, or a folder written by
            ``Dataset.save_to_disk``.
        source_config: the source's config (subset) name, if it has several.
        source_split: the split to distill.
        source_revision: the source's revision (a commit sha pins exactly what was read).
        source_filter: keep only the rows whose columns equal these values, e.g. ``{"split": "train"}``.
        source_columns: keep only these columns before distilling (e.g. ``["image", "caption"]``).
        distill: :class:`~pds_hf.DistillConfig` fields, as JSON values (model ids, not loaded models).
    """

    source: str | None = None
    source_config: str | None = None
    source_split: str = "train"
    source_revision: str | None = None
    source_filter: dict | None = None
    source_columns: list | None = None
    distill: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        settings = dict(self.distill or {})
        objects = sorted(k for k, v in settings.items() if v is not None and not isinstance(v, (str, int, float, bool)))
        if objects:
            raise TypeError(f"DistillBuilderConfig.distill holds loaded objects in {objects}: the config is part of "
                            "the cache path, so models are named by id or local folder, e.g. clip_model="
                            "'openai/clip-vit-large-patch14'. Use pds_hf.DistillProcessor for loaded models.")
        self.distill_config()  # every setting is checked now, before anything is read or loaded

    def distill_config(self) -> DistillConfig:
        """The :class:`~pds_hf.DistillConfig` these settings make."""
        known = {f.name for f in dataclasses.fields(DistillConfig)}
        unknown = sorted(set(self.distill or {}) - known)
        if unknown:
            raise TypeError(f"DistillBuilderConfig.distill has unknown setting(s) {unknown}; see "
                            "help(pds_hf.DistillConfig) for the fields.")
        return DistillConfig(**(self.distill or {}))


class DistillBuilder(datasets.ArrowBasedBuilder):
    """Distill a dataset into datasets' cache, as a builder.

    Example:
        ```py
        >>> import pds_hf
        >>> builder = pds_hf.DistillBuilder(
        ...     source="nlphuji/flickr30k", source_split="test", source_filter={"split": "train"},
        ...     distill={"num_pairs": 100, "synthesis": "unclip"})
        >>> builder.download_and_prepare()              # distills once; the same config later does no work
        >>> small = builder.as_dataset("train")
        ```
    """

    BUILDER_CONFIG_CLASS = DistillBuilderConfig
    # The version of what this builder writes: a new pds-hf version builds anew rather than reading an old result.
    VERSION = datasets.Version("0.1.0")

    def __init__(self, *args, dataset_name: str | None = None, **kwargs):
        super().__init__(*args, dataset_name=dataset_name or "pds_hf_distilled", **kwargs)

    def _info(self):
        return datasets.DatasetInfo(description="A dataset distilled with pds-hf (PDS).")

    def load_source(self):
        """The source split, filtered and reduced to the configured columns."""
        config = self.config
        if config.source is None:
            raise ValueError("DistillBuilder needs source=... (a Hub dataset id or a local folder).")
        folder = Path(config.source)
        if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
            ds = datasets.load_from_disk(str(folder))
            if isinstance(ds, datasets.DatasetDict):
                if config.source_split not in ds:
                    raise KeyError(f"{folder} has the splits {list(ds)}, not {config.source_split!r}; pass "
                                   "source_split=... to choose one.")
                ds = ds[config.source_split]
        else:
            ds = datasets.load_dataset(config.source, config.source_config, split=config.source_split,
                                       revision=config.source_revision, token=self.token)
        if config.source_filter:
            missing = sorted(set(config.source_filter) - set(ds.column_names))
            if missing:
                raise KeyError(f"source_filter names the column(s) {missing}, which {config.source} lacks "
                               f"(columns: {ds.column_names}).")
            wanted = dict(config.source_filter)
            names = list(wanted)
            ds = ds.filter(lambda *values: [all(v[i] == wanted[n] for v, n in zip(values, names))
                                            for i in range(len(values[0]))],
                           input_columns=names, batched=True, desc="Filtering the source")
        if config.source_columns:
            ds = ds.select_columns(list(config.source_columns))
        return ds

    def _split_generators(self, dl_manager):
        small = DistillProcessor(self.config.distill_config())(self.load_source())
        record = datasets.DatasetInfo.from_dict({"description": small.info.description})
        self.info.description = record.description
        self.info.features = small.features
        # A tuple, not a list: datasets would split a list across num_proc jobs, but distillation is global.
        return [datasets.SplitGenerator(name=SPLIT, gen_kwargs={"tables": (small.data.table,)})]

    def _generate_tables(self, tables):
        from datasets.builder import Key

        for index, table in enumerate(tables):
            yield Key(index, 0), table
