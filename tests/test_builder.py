"""DistillBuilder: distills into datasets' cache, builds once per config, loads; parquet output."""

import numpy as np
import pytest

import pds_hf
from pds_hf import DistillBuilder, DistillConfig, DistillProcessor


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from pds_hf.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def source(shapes_ds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    shapes_ds.add_column("split", ["train" if i % 3 else "val" for i in range(len(shapes_ds))]) \
        .save_to_disk(str(folder))
    return str(folder)


def _settings(clip_folder, **changes):
    return {"num_pairs": 5, "clip_model": clip_folder, "synthesis": "retrieve", "image_size": 32, "device": "cpu",
            **changes}


def test_builds_caches_and_loads(source, clip_folder, shapes_ds, tmp_path, monkeypatch):
    builder = DistillBuilder(cache_dir=str(tmp_path), source=source, source_filter={"split": "train"},
                             source_columns=["image", "caption"], distill=_settings(clip_folder))
    builder.download_and_prepare()
    small = builder.as_dataset("train")
    assert len(small) == 5
    record = pds_hf.metadata(small)
    assert record["config"]["num_pairs"] == 5 and record["source"]["num_images"] == 40  # the 'train' rows only

    # The same result as the processor on the same rows.
    train = shapes_ds.select([i for i in range(len(shapes_ds)) if i % 3])
    direct = DistillProcessor(DistillConfig(**_settings(clip_folder)))(train)
    assert small["caption"] == direct["caption"]
    np.testing.assert_allclose(np.asarray(small["text_embedding"]), np.asarray(direct["text_embedding"]), atol=1e-6)

    # Built once: the same config again does no work (distilling would raise).
    def refuse(self, ds):
        raise AssertionError("distilled again")

    monkeypatch.setattr(DistillProcessor, "__call__", refuse)
    again = DistillBuilder(cache_dir=str(tmp_path), source=source, source_filter={"split": "train"},
                           source_columns=["image", "caption"], distill=_settings(clip_folder))
    again.download_and_prepare()
    assert again.as_dataset("train")["caption"] == small["caption"]
    # Another config is another build.
    other = DistillBuilder(cache_dir=str(tmp_path), source=source, source_filter={"split": "train"},
                           source_columns=["image", "caption"], distill=_settings(clip_folder, num_pairs=4))
    with pytest.raises(AssertionError, match="distilled again"):
        other.download_and_prepare()


def test_parquet_output(source, clip_folder, tmp_path):
    from datasets import load_dataset

    builder = DistillBuilder(cache_dir=str(tmp_path / "cache"), source=source, source_columns=["image", "caption"],
                             distill=_settings(clip_folder, num_pairs=3))
    builder.download_and_prepare(str(tmp_path / "out"), file_format="parquet")
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert files, list((tmp_path / "out").iterdir())
    loaded = load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    assert len(loaded) == 3 and loaded[0]["image"].size == (32, 32)


def test_config_takes_ids_not_objects(tiny_encoder, source):
    with pytest.raises(TypeError, match="loaded objects in \\['clip_model'\\]"):
        DistillBuilder(source=source, distill={"clip_model": tiny_encoder})
    with pytest.raises(TypeError, match="unknown setting\\(s\\) \\['num_pair'\\]"):
        DistillBuilder(source=source, distill={"num_pair": 3})
    with pytest.raises(ValueError, match="num_pairs must be a positive integer"):
        DistillBuilder(source=source, distill={"num_pairs": 0})


def test_bad_filter_column(source, clip_folder, tmp_path):
    builder = DistillBuilder(cache_dir=str(tmp_path), source=source, source_filter={"fold": "train"},
                             distill=_settings(clip_folder))
    with pytest.raises(KeyError, match="source_filter names the column\\(s\\) \\['fold'\\]"):
        builder.download_and_prepare()
