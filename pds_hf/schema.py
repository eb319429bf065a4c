"""What a distilled set looks like: its columns and the run record it carries.

This module sits at the bottom of the package: it imports nothing of ``pds_hf``, so the processor, the
publishing code and the public API can all use it without importing one another.
"""

from __future__ import annotations

import json

METADATA_KEY = "pds_hf"
# The feature ``id`` of an embedding column made by ``DistillProcessor.embed`` names its encoder, so that a
# later run can tell whether the given embeddings come from the encoder it is configured with.
ENCODER_ID_PREFIX = "pds_hf:encoder="

# Names pds-hf gives to what it makes in code, as they appear in a run record: the demo dataset (its builder name)
# and the tiny random-weight models, with the call that builds each. None is a Hub repository, so a dataset card
# shows the code a reader can run instead.
DEMO_DATASET_NAME = "pds_hf.demo.demo_dataset"
# The demo's shapes and captions are made by pds-hf's own code; they carry its license.
DEMO_LICENSE = "apache-2.0"
TINY_MODELS = {
    "pds-hf/tiny-random-clip": "pds_hf.testing.tiny_clip_encoder()",
    "pds-hf/tiny-random-unclip": "pds_hf.testing.tiny_unclip_pipeline()",
}

COLUMNS = ("image", "caption", "image_embedding", "text_embedding", "support", "image_cluster", "text_cluster")


def output_features(dim: int):
    """The schema of a distilled set whose embeddings have ``dim`` dimensions."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "caption": Value("string"),
            "image_embedding": List(Value("float32"), length=dim),
            "text_embedding": List(Value("float32"), length=dim),
            "support": Value("int64"),
            "image_cluster": Value("int64"),
            "text_cluster": Value("int64"),
            # the source row of a real image (synthesis="retrieve"/"retrieve-scored", baselines), -1 for a made one
            "source_row": Value("int64"),
        }
    )


def run_record_info(record: dict, features):
    """A ``DatasetInfo`` that carries ``record`` (config, source, models, timings) in its description."""
    from datasets import DatasetInfo

    return DatasetInfo(description=json.dumps({METADATA_KEY: record}), features=features)


def read_run_record(ds) -> dict:
    """The run record a distilled ``Dataset`` carries in its info; ``ValueError`` when there is none."""
    try:
        return json.loads(ds.info.description or "")[METADATA_KEY]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            "This dataset carries no pds_hf metadata; was it made by pds_hf.distill? A set loaded back from "
            "parquet (load_dataset) has lost it: pass its folder or Hub id instead, "
            "e.g. pds_hf.metadata('me/flickr30k-pds-100')."
        ) from None


def recorded_encoder(feature) -> str | None:
    """The encoder an embedding column's feature names (set by ``DistillProcessor.embed``), or None."""
    while hasattr(feature, "feature"):
        feature = feature.feature
    tag = getattr(feature, "id", None)
    return tag[len(ENCODER_ID_PREFIX) :] if isinstance(tag, str) and tag.startswith(ENCODER_ID_PREFIX) else None


def set_stage_seconds(ds, seconds: dict) -> None:
    """Replace the seconds per stage in the run record ``ds`` carries, in place.

    For a caller that times work around :func:`pds_hf.distill` (loading the data, building models): its stages
    and the run's then reach the summary and the dataset card together, so that their sum is the whole time.

    Args:
        ds: a distilled ``Dataset`` (made by :func:`pds_hf.distill`).
        seconds: stage name to seconds, in the order the stages ran.

    Example:
        ```py
        >>> set_stage_seconds(small, {"load data": 0.5, **pds_hf.metadata(small)["stages_seconds"]})
        ```
    """
    record = read_run_record(ds)
    record["stages_seconds"] = {name: round(float(value), 3) for name, value in seconds.items()}
    ds.info.description = json.dumps({METADATA_KEY: record})
