"""DistillProcessor: encode as a map function, distilling from given embedding columns, save/load, bad input."""

import json
import logging

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, DatasetDict, Features, Image, IterableDatasetDict, List, Value

import pds_hf
from pds_hf import DistillConfig, DistillProcessor
from pds_hf.encode import encode_table
from pds_hf.inputs import read_pairs


class Counting:
    """An encoder that counts its calls (and can be told to refuse them)."""

    def __init__(self, inner, refuse=False):
        self.inner, self.refuse = inner, refuse
        self.calls = 0
        self.name = "counting-encoder"

    def encode_images(self, images):
        assert not self.refuse, "the encoder was called"
        self.calls += 1
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        assert not self.refuse, "the encoder was called"
        self.calls += 1
        return self.inner.encode_texts(texts)


@pytest.fixture(scope="module")
def config(tiny_encoder):
    return DistillConfig(
        num_pairs=6, clip_model=tiny_encoder, synthesis="retrieve", image_size=32, device="cpu", use_cache=False
    )


@pytest.fixture(scope="module")
def encoded(shapes_ds, config):
    return shapes_ds.map(DistillProcessor(config).encode, batched=True, batch_size=16)


@pytest.mark.parametrize("layout", ["image", "pair"])
def test_map_encode_equals_the_internal_encoder(layout, shapes_ds, shapes_pairs_ds, tiny_encoder, config):
    ds = shapes_ds if layout == "image" else shapes_pairs_ds
    encoded = ds.map(DistillProcessor(config).encode, batched=True, batch_size=16)
    table = read_pairs(ds)
    table, image_embeds, text_embeds = encode_table(tiny_encoder, ds, table, batch_size=16)

    got_images = np.asarray(encoded["image_embedding"], dtype=np.float32)
    np.testing.assert_allclose(got_images[table.image_rows], image_embeds, atol=1e-5)
    if layout == "image":
        per_caption = np.concatenate([np.asarray(row, dtype=np.float32) for row in encoded["text_embedding"]])
        assert per_caption.shape == (table.num_pairs, 32)
        assert all(len(e) == len(c) for e, c in zip(encoded["text_embedding"], shapes_ds["caption"], strict=False))
    else:
        per_caption = np.asarray(encoded["text_embedding"], dtype=np.float32)
    np.testing.assert_allclose(per_caption, text_embeds[table.pair_text], atol=1e-5)


def test_map_encode_names_a_bad_caption_before_encoding(shapes_ds, config):
    class Refusing:
        def encode_images(self, images):
            raise AssertionError("the encoder was called")

        encode_texts = encode_images

    batch = shapes_ds[:3]
    batch["caption"][1] = [batch["caption"][1][0], " "]
    with pytest.raises(
        ValueError,
        match=r"Column 'caption' has 1 bad caption\(s\): item 1 of this batch, "
        r"caption 1 is empty \(' '\)",
    ):
        DistillProcessor(config, clip_model=Refusing()).encode(batch)
    batch["caption"] = [row[0] for row in batch["caption"][:2]] + [None]
    with pytest.raises(ValueError, match=r"has 1 bad caption\(s\): item 2 of this batch is NoneType, not a string"):
        DistillProcessor(config, clip_model=Refusing()).encode(batch)


def test_processor_equals_distill(shapes_ds, config):
    a = DistillProcessor(config)(shapes_ds)
    b = pds_hf.distill(shapes_ds, config)
    for column in ("caption", "support", "image_cluster", "text_cluster"):
        assert a[column] == b[column]
    np.testing.assert_array_equal(np.asarray(a["text_embedding"]), np.asarray(b["text_embedding"]))
    assert [np.asarray(i).tobytes() for i in a["image"]] == [np.asarray(i).tobytes() for i in b["image"]]
    assert pds_hf.metadata(a)["config"] == pds_hf.metadata(b)["config"]


@pytest.mark.parametrize("layout", ["image", "pair"])
def test_given_columns_are_used_and_the_encoder_never_called(layout, shapes_ds, shapes_pairs_ds, tiny_encoder, config):
    ds = shapes_ds if layout == "image" else shapes_pairs_ds
    counting = Counting(tiny_encoder)
    processor = DistillProcessor(config, clip_model=counting)
    encoded = ds.map(processor.encode, batched=True, batch_size=32)
    assert counting.calls > 0
    counting.refuse = True
    from_columns = processor(encoded)
    from_scratch = DistillProcessor(config)(ds)
    assert from_columns["caption"] == from_scratch["caption"]
    assert from_columns["support"] == from_scratch["support"]
    np.testing.assert_allclose(
        np.asarray(from_columns["image_embedding"]), np.asarray(from_scratch["image_embedding"]), atol=1e-5
    )
    assert pds_hf.metadata(from_columns)["embeddings"]["given"] is True
    assert "encode" not in pds_hf.metadata(from_columns)["stages_seconds"]


def test_given_columns_never_load_an_encoder_by_id(encoded, config):
    # The id does not exist: loading it would fail, so success shows it was never loaded.
    small = DistillProcessor(config, clip_model="nobody/no-such-clip")(encoded)
    assert len(small) == 6


def test_select_then_synthesize_equals_the_whole_run(encoded, shapes_ds, config):
    processor = DistillProcessor(config)
    selection = processor.select(encoded)
    assert len(selection) == 6 and selection.image_embeds.shape == (6, 32)
    whole = processor(encoded)
    assert selection.captions == whole["caption"]
    images = processor.synthesize(selection, encoded)
    assert [np.asarray(i).tobytes() for i in images] == [np.asarray(i).tobytes() for i in whole["image"]]
    with pytest.raises(ValueError, match="pass it"):
        processor.synthesize(selection)


def test_embeddings_without_images_with_unclip_or_none(encoded, config):
    no_images = encoded.remove_columns("image")
    small = DistillProcessor(config, synthesis="none")(no_images)
    assert len(small) == 6 and small["image"] == [None] * 6
    with pytest.raises(KeyError, match="no image column 'image'"):
        DistillProcessor(config, synthesis="retrieve")(no_images)


def test_embed_records_the_encoder_and_a_different_one_warns(shapes_ds, config, tiny_encoder, caplog, tmp_path):
    processor = DistillProcessor(config)
    embedded = processor.embed(shapes_ds)
    # the record survives parquet
    embedded.to_parquet(str(tmp_path / "e.parquet"))
    back = Dataset.from_parquet(str(tmp_path / "e.parquet"))
    other = Counting(tiny_encoder, refuse=True)
    other.name = "openai/clip-vit-base-patch32"
    with caplog.at_level(logging.WARNING, logger="pds_hf"):
        small = DistillProcessor(config, clip_model=other)(back)
    assert "pds-hf/tiny-random-clip" in caplog.text and "openai/clip-vit-base-patch32" in caplog.text
    assert pds_hf.metadata(small)["models"]["encoder"] == "pds-hf/tiny-random-clip"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pds_hf"):
        DistillProcessor(config)(back)
    assert "was encoded with" not in caplog.text


def test_map_with_rank_and_two_processes(shapes_ds, config, encoded):
    two = shapes_ds.map(DistillProcessor(config).encode, batched=True, batch_size=16, with_rank=True, num_proc=2)
    np.testing.assert_allclose(np.asarray(two["image_embedding"]), np.asarray(encoded["image_embedding"]), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Bad embedding columns: named column and row, before any clustering
# ---------------------------------------------------------------------------------------------------------------


def _pairs(image_vectors, text_vectors, n=None):
    n = n or len(image_vectors)
    colours = [(i * 7 % 256, i * 13 % 256, i * 29 % 256) for i in range(n)]
    return Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes(c), "path": None} for c in colours],
            "caption": [f"caption {i}" for i in range(n)],
            "image_embedding": image_vectors,
            "text_embedding": text_vectors,
        },
        features=Features(
            {
                "image": Image(),
                "caption": Value("string"),
                "image_embedding": List(Value("float32")),
                "text_embedding": List(Value("float32")),
            }
        ),
    )


def _refusing(config, tiny_encoder):
    return DistillProcessor(config, clip_model=Counting(tiny_encoder, refuse=True), num_pairs=2, rm_ratio=0.0)


def test_bad_embedding_columns(config, tiny_encoder, rng):
    good = rng.normal(size=(12, 8)).astype(np.float32).tolist()
    processor = _refusing(config, tiny_encoder)
    assert len(processor(_pairs(good, good))) == 2

    short = [list(v) for v in good]
    short[5] = short[5][:7]
    with pytest.raises(ValueError, match=r"'image_embedding' mixes vector sizes: 7 at row 5"):
        processor(_pairs(short, good))
    with pytest.raises(ValueError, match=r"'text_embedding' mixes vector sizes: 7 at row 5"):
        processor(_pairs(good, short))

    nan = [list(v) for v in good]
    nan[9][3] = float("nan")
    with pytest.raises(ValueError, match=r"'text_embedding' holds NaN or inf at row\(s\) \[9\]"):
        processor(_pairs(good, nan))

    wide = rng.normal(size=(12, 16)).astype(np.float32).tolist()
    with pytest.raises(ValueError, match="8-d vectors but 'text_embedding' holds 16-d"):
        processor(_pairs(good, wide))

    with pytest.raises(KeyError, match="'image_embedding' but not 'text_embedding'"):
        processor(_pairs(good, good).remove_columns("text_embedding"))

    nulls = [list(v) for v in good]
    nulls[4] = None
    with pytest.raises(ValueError, match="'image_embedding' is empty \\(null\\) at row 4"):
        processor(_pairs(nulls, good))


def test_per_caption_vectors_must_match_the_captions(encoded, config, tiny_encoder):
    def drop_one(row):
        row["text_embedding"] = row["text_embedding"][:1]
        return row

    bad = encoded.map(lambda row, i: drop_one(row) if i == 7 else row, with_indices=True)
    with pytest.raises(ValueError, match=r"'text_embedding' has 1 vector\(s\) at row 7 but the row has 2 caption"):
        _refusing(config, tiny_encoder)(bad)


# ---------------------------------------------------------------------------------------------------------------
# Checks before any model is loaded (issue 13, defect 3) and the helpful .distill elsewhere (defect 7)
# ---------------------------------------------------------------------------------------------------------------


def test_num_pairs_above_distinct_images_fails_before_encoding(shapes_pairs_ds, config, tiny_encoder):
    # 120 pairs, 60 distinct images: 70 clusters of images cannot exist.
    processor = DistillProcessor(config, clip_model=Counting(tiny_encoder, refuse=True), num_pairs=70, rm_ratio=0.0)
    with pytest.raises(ValueError, match="only 60 distinct images"):
        processor(shapes_pairs_ds)


def test_num_pairs_above_distinct_captions_fails_before_encoding(config, tiny_encoder):
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": png_bytes((i, 0, 0)), "path": None} for i in range(20)],
            "caption": ["a red square"] * 10 + ["A red square"] * 10,
        },
        features=Features({"image": Image(), "caption": Value("string")}),
    )
    processor = DistillProcessor(config, clip_model=Counting(tiny_encoder, refuse=True), num_pairs=5, rm_ratio=0.0)
    with pytest.raises(ValueError, match="only 2 distinct captions"):
        processor(ds)


def test_distill_on_a_datasetdict_or_a_stream_explains(shapes_ds, config):
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train'\]"):
        DatasetDict({"train": shapes_ds}).distill(num_pairs=2)
    with pytest.raises(TypeError, match=r"IterableDatasetDict with splits \['train'\].*streaming=True"):
        IterableDatasetDict({"train": shapes_ds.to_iterable_dataset()}).distill(config)
    # A stream distils (tests/test_stream.py): to the same set as the map-style dataset.
    streamed = shapes_ds.to_iterable_dataset().distill(config)
    assert streamed["caption"] == DistillProcessor(config)(shapes_ds)["caption"]
    assert pds_hf.metadata(streamed)["streaming"] is True


def test_stage_versions_are_part_of_the_cache_key(shapes_ds, tiny_encoder, tmp_path, monkeypatch):
    from pds_hf import cache

    config = DistillConfig(
        num_pairs=4, clip_model=tiny_encoder, synthesis="none", device="cpu", cache_dir=str(tmp_path)
    )
    DistillProcessor(config)(shapes_ds)
    before = sorted(p.name for p in tmp_path.iterdir())
    DistillProcessor(config)(shapes_ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # same version: the saved selection is reused
    monkeypatch.setitem(cache.STAGE_VERSIONS, "select", cache.STAGE_VERSIONS["select"] + 1)
    DistillProcessor(config)(shapes_ds)
    after = sorted(p.name for p in tmp_path.iterdir())
    new = set(after) - set(before)
    assert len(new) == 1 and new.pop().startswith("select-"), "a new select version must not read the old results"


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ---------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path, caplog):
    processor = DistillProcessor(
        num_pairs=37,
        rm_ratio=0.1,
        clip_model="org/clip",
        clip_revision="abc",
        synthesis="retrieve",
        device="cuda:3",
        seed=7,
    )
    path = processor.save_pretrained(tmp_path / "recipe")
    saved = json.loads(path.read_text())
    assert saved["config"]["num_pairs"] == 37 and saved["loaded_objects"] == []
    back = DistillProcessor.from_pretrained(tmp_path / "recipe")
    expected = processor.config.replace(device=None)  # the device describes one machine, not the recipe
    assert back.config == expected
    assert DistillProcessor.from_pretrained(tmp_path / "recipe", num_pairs=5).config.num_pairs == 5

    saved["config"]["from_the_future"] = 1
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="pds_hf"):
        assert DistillProcessor.from_pretrained(tmp_path / "recipe").config.num_pairs == 37
    assert "from_the_future" in caplog.text


def test_loaded_models_are_named_and_must_be_passed_again(tmp_path, tiny_encoder, caplog):
    DistillProcessor(clip_model=tiny_encoder).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "distill_config.json").read_text())["loaded_objects"] == ["clip_model"]
    with caplog.at_level(logging.WARNING, logger="pds_hf"):
        back = DistillProcessor.from_pretrained(tmp_path)
    assert back.config.clip_model == DistillConfig().clip_model and "Pass clip_model=" in caplog.text
    assert DistillProcessor.from_pretrained(tmp_path, clip_model=tiny_encoder).config.clip_model is tiny_encoder


def test_from_pretrained_of_a_published_folder_repeats_the_recipe(
    shapes_ds, shapes_pairs_ds, config, tmp_path, tiny_encoder
):
    small = DistillProcessor(config, num_pairs=5, seed=3)(shapes_ds)
    pds_hf.save_to_folder(small, tmp_path / "published")
    again = DistillProcessor.from_pretrained(tmp_path / "published", clip_model=tiny_encoder)
    assert again.config.num_pairs == 5 and again.config.seed == 3 and again.config.synthesis == "retrieve"
    assert again(shapes_ds)["caption"] == small["caption"]
    assert len(again(shapes_pairs_ds)) == 5  # and on other data


def test_from_pretrained_of_nothing_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill_config.json.*README.md"):
        DistillProcessor.from_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("# a card without a run record\n")
    with pytest.raises(FileNotFoundError, match="no pds-hf run record"):
        DistillProcessor.from_pretrained(tmp_path)


def test_from_pretrained_of_a_hub_dataset(hub, shapes_ds, config, tiny_encoder):
    small = DistillProcessor(config, num_pairs=4)(shapes_ds)
    pds_hf.push_to_hub(small, "pds-org/shapes-pds-4", token=hub.token, license="cc0-1.0")
    again = DistillProcessor.from_pretrained("pds-org/shapes-pds-4", clip_model=tiny_encoder)
    assert again.config.num_pairs == 4 and again.config.synthesis == "retrieve"


def test_retrieve_scored_takes_the_teachers_pick_among_the_nearest(shapes_ds, encoded, config, tmp_path):
    from pds_hf.encode import encode_table
    from pds_hf.synthesize import retrieve_scored_images

    processor = DistillProcessor(config, synthesis="retrieve-scored", num_pairs=8)
    selection = processor.select(encoded)
    table, image_embeds, _ = encode_table(config.clip_model, shapes_ds, read_pairs(shapes_ds), batch_size=16)
    expected = retrieve_scored_images(image_embeds, selection.image_embeds, selection.text_embeds)
    np.testing.assert_array_equal(selection.image_index, expected)
    nearest_only = DistillProcessor(config, num_pairs=8).select(encoded).image_index
    assert not np.array_equal(expected, nearest_only), "the teacher's pick should differ from the nearest somewhere"

    small = processor(encoded)
    real = {
        np.asarray(image.resize((32, 32))).tobytes() for image in shapes_ds.select(table.image_rows[expected])["image"]
    }
    assert {np.asarray(image).tobytes() for image in small["image"]} <= real
    pds_hf.save_to_folder(small, tmp_path / "scored")
    assert "best matches the text prototype" in (tmp_path / "scored" / "README.md").read_text()
    stream = shapes_ds.to_iterable_dataset(num_shards=3)
    assert DistillProcessor(config, synthesis="retrieve-scored", num_pairs=8)(stream)["caption"] == small["caption"]
