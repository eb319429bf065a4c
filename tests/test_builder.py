"""DistillBuilder: distills into datasets' cache, builds once per config, loads; parquet output.

What a build is keyed on (issue 17): the source's content (a save_to_disk fingerprint, a data folder's files, a Hub
commit), the columns and filter, the settings that change the result (not the machine ones, not a spelled-out
default) and the stage versions. Each case counts the distillations with a spy on ``DistillProcessor.__call__``.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import List, Value

import pds_hf
from pds_hf import DistillBuilder, DistillBuilderConfig, DistillConfig, DistillProcessor
from pds_hf.cache import STAGE_VERSIONS
from pds_hf.schema import output_features

GIVEN_DIM = 7


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from pds_hf.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clip_dim(clip_folder):
    """The tiny CLIP's embedding size, read from its saved config.json (not through the builder)."""
    return json.loads((Path(clip_folder) / "config.json").read_text())["projection_dim"]


@pytest.fixture(scope="module")
def source(shapes_ds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    shapes_ds.add_column("split", ["train" if i % 3 else "val" for i in range(len(shapes_ds))]).save_to_disk(
        str(folder)
    )
    return str(folder)


@pytest.fixture
def runs(monkeypatch):
    """The configs ``DistillProcessor`` is called with, one per distillation (the calls go through)."""
    seen = []
    call = DistillProcessor.__call__

    def spy(self, ds):
        seen.append(self.config)
        return call(self, ds)

    monkeypatch.setattr(DistillProcessor, "__call__", spy)
    return seen


def _settings(clip_folder, **changes):
    return {
        "num_pairs": 5,
        "clip_model": clip_folder,
        "synthesis": "retrieve",
        "image_size": 32,
        "device": "cpu",
        **changes,
    }


def _renamed(ds, prefix):
    """``ds`` (one row per image, a list of captions each) with every caption prefixed."""
    return ds.map(lambda row: {"caption": [prefix + c for c in row["caption"]]}, desc="Renaming captions")


def _captions(ds):
    return {c for row in ds["caption"] for c in (row if isinstance(row, list) else [row])}


def test_builds_caches_and_loads(source, clip_folder, clip_dim, shapes_ds, tmp_path, runs):
    def train_rows(distill):
        """A builder of the source's 'train' rows, images and captions only."""
        return DistillBuilder(
            cache_dir=str(tmp_path),
            source=source,
            source_filter={"split": "train"},
            source_columns=["image", "caption"],
            distill=distill,
        )

    builder = train_rows(_settings(clip_folder))
    # Declared before anything is built, from the encoder's config.
    assert builder.info.features == output_features(clip_dim)
    builder.download_and_prepare()
    small = builder.as_dataset("train")
    assert len(small) == 5 and len(runs) == 1
    assert small.features == output_features(clip_dim)
    record = pds_hf.metadata(small)
    assert record["config"]["num_pairs"] == 5 and record["source"]["num_images"] == 40  # the 'train' rows only
    train = shapes_ds.select([i for i in range(len(shapes_ds)) if i % 3])
    assert set(small["caption"]) <= _captions(train)
    # The cache path says what it is: the source's name, then pds.
    assert Path(builder.cache_dir).relative_to(tmp_path).parts[0] == f"{Path(source).name}-pds"

    # The same result as the processor on the same rows.
    direct = DistillProcessor(DistillConfig(**_settings(clip_folder)))(train)
    assert small["caption"] == direct["caption"]
    np.testing.assert_allclose(np.asarray(small["text_embedding"]), np.asarray(direct["text_embedding"]), atol=1e-6)
    del runs[:]

    # Built once: the same config again does no work.
    again = train_rows(_settings(clip_folder))
    again.download_and_prepare()
    assert again.as_dataset("train")["caption"] == small["caption"] and runs == []
    # Another config is another build.
    other = train_rows(_settings(clip_folder, num_pairs=4))
    other.download_and_prepare()
    assert len(other.as_dataset("train")) == 4 and len(runs) == 1


def test_source_columns_decide_what_is_distilled(shapes_pairs_ds, clip_folder, clip_dim, tmp_path, runs, rng):
    # A source that carries embeddings of its own (7-d): used as given, unless source_columns leaves them out.
    n = len(shapes_pairs_ds)
    vector = List(Value("float32"), length=GIVEN_DIM)
    given = shapes_pairs_ds.add_column(
        "image_embedding", rng.normal(size=(n, GIVEN_DIM)).tolist(), feature=vector
    ).add_column("text_embedding", rng.normal(size=(n, GIVEN_DIM)).tolist(), feature=vector)
    given.save_to_disk(str(tmp_path / "given"))

    with_given = DistillBuilder(
        cache_dir=str(tmp_path / "cache"), source=str(tmp_path / "given"), distill=_settings(clip_folder)
    )
    encoded = DistillBuilder(
        cache_dir=str(tmp_path / "cache"),
        source=str(tmp_path / "given"),
        source_columns=["image", "caption"],
        distill=_settings(clip_folder),
    )
    # Declared before building: the source's own vector size, or the encoder's once those columns are left out.
    assert with_given.info.features == output_features(GIVEN_DIM)
    assert encoded.info.features == output_features(clip_dim)
    assert with_given.config_id != encoded.config_id

    with_given.download_and_prepare()
    encoded.download_and_prepare()
    assert len(runs) == 2
    small_given, small_encoded = with_given.as_dataset("train"), encoded.as_dataset("train")
    assert np.asarray(small_given["image_embedding"]).shape == (5, GIVEN_DIM)
    assert pds_hf.metadata(small_given)["embeddings"]["given"] is True
    assert np.asarray(small_encoded["image_embedding"]).shape == (5, clip_dim)
    assert "embeddings" not in pds_hf.metadata(small_encoded)

    missing = DistillBuilder(
        cache_dir=str(tmp_path / "cache"),
        source=str(tmp_path / "given"),
        source_columns=["image", "captions"],
        distill=_settings(clip_folder),
    )
    with pytest.raises(KeyError, match="source_columns names the column\\(s\\) \\['captions'\\]"):
        missing.download_and_prepare()


def test_a_changed_save_to_disk_source_is_built_again(shapes_ds, clip_folder, tmp_path, runs):
    folder, cache = str(tmp_path / "source"), str(tmp_path / "cache")
    shapes_ds.save_to_disk(folder)
    first = DistillBuilder(cache_dir=cache, source=folder, distill=_settings(clip_folder))
    first.download_and_prepare()
    assert set(first.as_dataset("train")["caption"]) <= _captions(shapes_ds)

    # The folder rewritten with other rows: a new build, whose captions are the new rows' captions.
    renamed = _renamed(shapes_ds, "new ")
    renamed.save_to_disk(folder)
    second = DistillBuilder(cache_dir=cache, source=folder, distill=_settings(clip_folder))
    assert second.config_id != first.config_id
    second.download_and_prepare()
    captions = second.as_dataset("train")["caption"]
    assert len(runs) == 2 and len(captions) == 5 and set(captions) <= _captions(renamed)

    # Unchanged (even written again: new files, the same fingerprint): no work.
    renamed.save_to_disk(folder)
    third = DistillBuilder(cache_dir=cache, source=folder, distill=_settings(clip_folder))
    third.download_and_prepare()
    assert len(runs) == 2 and third.as_dataset("train")["caption"] == captions


def test_a_changed_data_folder_is_built_again(shapes_pairs_ds, clip_folder, clip_dim, tmp_path, runs):
    folder, cache = tmp_path / "pairs", str(tmp_path / "cache")
    folder.mkdir()
    shapes_pairs_ds.to_parquet(str(folder / "data.parquet"))
    settings = dict(
        cache_dir=cache, source=str(folder), source_columns=["image", "caption"], distill=_settings(clip_folder)
    )
    first = DistillBuilder(**settings)
    assert first.info.features == output_features(clip_dim)
    # Without source_columns the folder may hold embeddings of another size: not declared before building.
    assert DistillBuilder(cache_dir=cache, source=str(folder), distill=_settings(clip_folder)).info.features is None
    first.download_and_prepare()
    assert set(first.as_dataset("train")["caption"]) <= _captions(shapes_pairs_ds)

    renamed = shapes_pairs_ds.map(lambda row: {"caption": "new " + row["caption"]})
    renamed.to_parquet(str(folder / "data.parquet"))
    second = DistillBuilder(**settings)
    second.download_and_prepare()
    captions = second.as_dataset("train")["caption"]
    assert len(runs) == 2 and set(captions) <= _captions(renamed)

    third = DistillBuilder(**settings)
    third.download_and_prepare()
    assert len(runs) == 2 and third.as_dataset("train")["caption"] == captions


def test_a_hub_source_is_keyed_on_its_commit(hub, shapes_ds, clip_folder, tmp_path, runs):
    small_source = shapes_ds.select(range(24))
    small_source.push_to_hub("tester/shapes", token=hub.token)
    old_commit = hub.commits("tester/shapes")[-1].oid
    cache = str(tmp_path / "cache")
    first = DistillBuilder(cache_dir=cache, source="tester/shapes", token=hub.token, distill=_settings(clip_folder))
    assert Path(first.cache_dir).relative_to(cache).parts[0] == "tester--shapes-pds"
    first.download_and_prepare()
    old = first.as_dataset("train")["caption"]
    assert set(old) <= _captions(small_source)

    renamed = _renamed(small_source, "new ")
    renamed.push_to_hub("tester/shapes", token=hub.token)
    second = DistillBuilder(cache_dir=cache, source="tester/shapes", token=hub.token, distill=_settings(clip_folder))
    second.download_and_prepare()
    assert len(runs) == 2 and set(second.as_dataset("train")["caption"]) <= _captions(renamed)

    # The first build was the old commit's: pinning that commit finds it.
    pinned = DistillBuilder(
        cache_dir=cache,
        source="tester/shapes",
        source_revision=old_commit,
        token=hub.token,
        distill=_settings(clip_folder),
    )
    assert pinned.config_id == first.config_id
    pinned.download_and_prepare()
    assert len(runs) == 2 and pinned.as_dataset("train")["caption"] == old

    with pytest.raises(FileNotFoundError, match="source='tester/nothing' at revision 'main' is not a local folder"):
        DistillBuilder(cache_dir=cache, source="tester/nothing", token=hub.token, distill=_settings(clip_folder))


def test_an_unresolvable_hub_revision_is_used_as_given(monkeypatch, caplog):
    from huggingface_hub import HfApi

    def offline(self, repo_id, revision=None, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(HfApi, "dataset_info", offline)
    config = DistillBuilderConfig(source="me/pairs", source_split="test")
    with caplog.at_level(logging.WARNING, logger="pds_hf.builder"):
        identity = config.source_identity()
    assert identity == {"hub": "me/pairs", "revision": "main", "config": None, "split": "test"}
    assert "pass source_revision=<commit sha>" in caplog.text and "no network" in caplog.text
    # A full commit sha needs no Hub: it is the commit.
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert DistillBuilderConfig(source="me/pairs", source_revision=sha).source_identity()["commit"] == sha


def test_the_commits_of_hub_models_are_part_of_the_build(source, tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    heads = {"me/clip": "a" * 40, "me/unclip": "c" * 40}
    asked = []

    def model_info(self, repo_id, revision=None, **kwargs):
        asked.append(repo_id)
        return SimpleNamespace(sha=heads[repo_id])

    monkeypatch.setattr(HfApi, "model_info", model_info)
    retrieve = DistillBuilderConfig(source=source, distill={"clip_model": "me/clip", "synthesis": "retrieve"})
    assert retrieve.model_commits() == {"clip_model": "a" * 40} and asked == ["me/clip"]  # no decoder used
    before = retrieve.result_key({}, retrieve.model_commits())
    heads["me/clip"] = "b" * 40  # main moved on: another build
    assert retrieve.result_key({}, retrieve.model_commits()) != before
    unclip = DistillBuilderConfig(source=source, distill={"clip_model": "me/clip", "unclip_model": "me/unclip"})
    assert unclip.model_commits() == {"clip_model": "b" * 40, "unclip_model": "c" * 40}
    # A local folder is known by its path: the Hub is not asked.
    asked.clear()
    local = DistillBuilderConfig(source=source, distill={"clip_model": str(tmp_path), "synthesis": "retrieve"})
    assert local.model_commits() == {} and asked == []

    def offline(self, repo_id, revision=None, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(HfApi, "model_info", offline)
    with caplog.at_level(logging.WARNING, logger="pds_hf.builder"):
        assert retrieve.model_commits() == {"clip_model_revision": "main"}
    assert "pass clip_revision=<commit sha>" in caplog.text


def test_a_new_stage_version_is_a_new_build(source, clip_folder, tmp_path, runs, monkeypatch):
    first = DistillBuilder(cache_dir=str(tmp_path), source=source, distill=_settings(clip_folder, num_pairs=3))
    first.download_and_prepare()
    monkeypatch.setitem(STAGE_VERSIONS, "select", STAGE_VERSIONS["select"] + 1)
    second = DistillBuilder(cache_dir=str(tmp_path), source=source, distill=_settings(clip_folder, num_pairs=3))
    assert second.config_id != first.config_id
    second.download_and_prepare()
    assert len(runs) == 2


def test_machine_settings_and_spelled_out_defaults_share_the_build(source, clip_folder, tmp_path, runs):
    first = DistillBuilder(
        cache_dir=str(tmp_path),
        source=source,
        distill=_settings(clip_folder, num_pairs=3, encode_batch_size=7, encode_workers=0),
    )
    first.download_and_prepare()
    # Machine settings are used to run, though not part of the key.
    assert (runs[0].encode_batch_size, runs[0].encode_workers, runs[0].device) == (7, 0, "cpu")

    same = _settings(
        clip_folder,
        num_pairs=3,
        encode_batch_size=64,
        synthesis_batch_size=3,
        use_cache=False,
        cache_dir=str(tmp_path / "elsewhere"),
        barrier_timeout=10,
        device=None,
        method="pds",
        rm_ratio=0.2,
        seed=42,
        kmeans_restarts=1,
    )  # the last four: defaults spelled out
    second = DistillBuilder(cache_dir=str(tmp_path), source=source, distill=same)
    assert second.config_id == first.config_id
    second.download_and_prepare()
    assert len(runs) == 1 and second.as_dataset("train")["caption"] == first.as_dataset("train")["caption"]
    # A setting that changes the result is another build.
    assert (
        DistillBuilder(cache_dir=str(tmp_path), source=source, distill={**same, "seed": 43}).config_id
        != first.config_id
    )


def test_parquet_output(source, clip_folder, tmp_path):
    from datasets import load_dataset

    builder = DistillBuilder(
        cache_dir=str(tmp_path / "cache"),
        source=source,
        source_columns=["image", "caption"],
        distill=_settings(clip_folder, num_pairs=3),
    )
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
    builder = DistillBuilder(
        cache_dir=str(tmp_path), source=source, source_filter={"fold": "train"}, distill=_settings(clip_folder)
    )
    with pytest.raises(KeyError, match="source_filter names the column\\(s\\) \\['fold'\\]"):
        builder.download_and_prepare()
