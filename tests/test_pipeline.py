"""distill end to end on CPU with tiny random models: both layouts, all synthesis modes, bad input."""

import numpy as np
import pytest
from conftest import png_bytes
from datasets import Dataset, Features, Image, Value

import pds_hf
from pds_hf import DistillConfig


@pytest.fixture(scope="module")
def config(tiny_encoder, tiny_pipe):
    return DistillConfig(
        num_pairs=6, clip_model=tiny_encoder, unclip_model=tiny_pipe, num_inference_steps=2, image_size=32, device="cpu"
    )


def _check_output(small, num_pairs, dim=32):
    assert len(small) == num_pairs
    assert list(small.features) == [
        "image",
        "caption",
        "image_embedding",
        "text_embedding",
        "support",
        "image_cluster",
        "text_cluster",
        "source_row",
    ]
    assert small.features["text_embedding"].length == dim
    embeds = np.asarray(small["text_embedding"]), np.asarray(small["image_embedding"])
    assert all(e.shape == (num_pairs, dim) and np.isfinite(e).all() for e in embeds)


def test_image_layout_unclip_end_to_end(shapes_ds, config):
    small = pds_hf.distill(shapes_ds, config)
    _check_output(small, 6)
    assert all(img.size == (32, 32) and img.mode == "RGB" for img in small["image"])
    known = {c for row in shapes_ds["caption"] for c in row}
    assert set(small["caption"]) <= known, "captions are retrieved real captions"
    # Each pair's support is the size of its intersection: what step 5 gives on the same embeddings.
    table, images, texts = _encoded(shapes_ds, config)
    direct = pds_hf.prototypes_from_embeddings(
        images, texts, 6, seed=config.seed, image_index=table.pair_image, text_index=table.pair_text
    )
    assert list(small["support"]) == direct.support.tolist()
    assert sum(small["support"]) > 6 * 2, "the pairs average several real pairs each"
    assert sorted(set(small["image_cluster"])) == sorted(small["image_cluster"])  # distinct clusters
    meta = pds_hf.metadata(small)
    assert meta["config"]["num_pairs"] == 6 and meta["config"]["clip_model"] == "pds-hf/tiny-random-clip"
    assert meta["source"]["num_pairs"] == 120 and meta["source"]["num_images"] == 60
    assert meta["source"]["fingerprint"] == shapes_ds._fingerprint
    assert meta["kept_pairs"] == 96
    stages = {"read", "load encoder", "encode", "select", "members", "load unCLIP", "synthesize"}
    assert set(meta["stages_seconds"]) == stages


def test_both_layouts_give_the_same_prototypes(shapes_ds, shapes_pairs_ds, config):
    a = pds_hf.distill(shapes_ds, config, synthesis="none")
    b = pds_hf.distill(shapes_pairs_ds, config, synthesis="none")
    np.testing.assert_allclose(np.asarray(a["image_embedding"]), np.asarray(b["image_embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a["text_embedding"]), np.asarray(b["text_embedding"]), atol=1e-5)
    assert a["caption"] == b["caption"] and a["support"] == b["support"]
    assert pds_hf.metadata(b)["source"]["num_images"] == 60, "repeated images are encoded once"


def test_each_image_and_caption_encoded_once(shapes_pairs_ds, tiny_encoder, config):
    calls = {"images": 0, "texts": 0}

    class Counting:
        def encode_images(self, images):
            calls["images"] += len(images)
            return tiny_encoder.encode_images(images)

        def encode_texts(self, texts):
            calls["texts"] += len(texts)
            return tiny_encoder.encode_texts(texts)

    pds_hf.distill(shapes_pairs_ds, config, clip_model=Counting(), synthesis="none")
    assert calls["images"] == 60
    assert calls["texts"] == len(set(shapes_pairs_ds["caption"]))


def test_same_seed_same_output_and_batch_size_does_not_matter(shapes_ds, config):
    a = pds_hf.distill(shapes_ds, config, synthesis_batch_size=4)
    b = pds_hf.distill(shapes_ds, config, synthesis_batch_size=1, encode_batch_size=7)
    assert a["caption"] == b["caption"]
    for x, y in zip(a["image"], b["image"], strict=False):
        diff = np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int))
        assert diff.max() <= 2, "each pair has its own seeded generator"
    c = pds_hf.distill(shapes_ds, config, seed=43, synthesis="none")
    assert not np.allclose(np.asarray(a["image_embedding"]), np.asarray(c["image_embedding"]))


def test_retrieve_returns_real_images(shapes_ds, config):
    small = pds_hf.distill(shapes_ds, config, synthesis="retrieve", image_size=None)
    originals = {np.asarray(img).tobytes() for img in shapes_ds["image"]}
    assert all(np.asarray(img.convert("RGB")).tobytes() in originals for img in small["image"])


def test_none_has_no_images(shapes_ds, config):
    small = pds_hf.distill(shapes_ds, config, synthesis="none")
    assert small["image"] == [None] * 6
    _check_output(small, 6)


def test_dataset_distill_method_is_registered_and_idempotent(shapes_ds, config, monkeypatch, caplog):
    import importlib

    from datasets import Dataset as D

    monkeypatch.delattr(D, "distill")
    importlib.reload(pds_hf)  # importing pds_hf adds the method
    assert D.distill.__module__ == "pds_hf"
    with caplog.at_level("WARNING", logger="pds_hf"):
        importlib.reload(pds_hf)  # importing it again keeps it, and does not take it for someone else's
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pds_hf")] == []
    small = shapes_ds.distill(config, synthesis="none", num_pairs=3)
    direct = pds_hf.distill(shapes_ds, config, synthesis="none", num_pairs=3)
    assert small["caption"] == direct["caption"]
    np.testing.assert_array_equal(np.asarray(small["image_embedding"]), np.asarray(direct["image_embedding"]))


def test_registration_never_overwrites_an_existing_attribute(monkeypatch):
    from datasets import Dataset as D

    sentinel = object()
    monkeypatch.setattr(D, "distill", sentinel, raising=False)
    pds_hf._register()
    assert D.distill is sentinel


def test_empty_drop_policy_in_pipeline(shapes_ds, config):
    small = pds_hf.distill(shapes_ds, config, synthesis="none", num_pairs=40, empty="drop", rm_ratio=0.0)
    assert len(small) <= 40 and (np.asarray(small["support"]) > 0).all()
    assert len(small) == 40 - pds_hf.metadata(small)["empty_intersections"]


def test_normalize_reaches_the_clustering_the_cache_key_and_the_card(shapes_ds, config):
    from pds_hf.publish import dataset_card

    unit = pds_hf.distill(shapes_ds, config, synthesis="none", num_pairs=8)
    raw = pds_hf.distill(shapes_ds, config, synthesis="none", num_pairs=8, normalize=False)
    assert pds_hf.metadata(unit)["config"]["normalize"] is True, "the default"
    assert pds_hf.metadata(raw)["config"]["normalize"] is False
    # Not served from the other run's cached selection: each matches clustering its own space.
    table, images, texts = _encoded(shapes_ds, config)
    for small, normalize in ((raw, False), (unit, True)):
        direct = pds_hf.prototypes_from_embeddings(
            images,
            texts,
            8,
            normalize=normalize,
            seed=config.seed,
            image_index=table.pair_image,
            text_index=table.pair_text,
        )
        np.testing.assert_allclose(np.asarray(small["text_embedding"]), direct.text_embeds, atol=1e-5)
    assert not np.allclose(np.asarray(raw["text_embedding"]), np.asarray(unit["text_embedding"]))
    assert "(each scaled to unit length)" in str(dataset_card(unit))
    assert "(each scaled to unit length)" not in str(dataset_card(raw))


def _encoded(ds, config):
    """The pair table of ``ds`` and its distinct images' and captions' embeddings, as distill makes them."""
    from pds_hf.encode import encode_table
    from pds_hf.inputs import read_pairs

    return encode_table(config.clip_model, ds, read_pairs(ds))


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_baselines_return_real_pairs(shapes_ds, config, method):
    small = pds_hf.distill(shapes_ds, config, method=method, num_pairs=5)
    _check_output(small, 5)
    known = {c for row in shapes_ds["caption"] for c in row}
    assert set(small["caption"]) <= known
    assert small["support"] == [1] * 5


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_num_pairs_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="num_pairs must be a positive integer"):
        DistillConfig(num_pairs=bad)


def test_num_pairs_above_filtered_pairs_fails_before_encoding(shapes_ds, config):
    class Exploding:
        def encode_images(self, images):
            raise AssertionError("must not encode")

        encode_texts = encode_images

    with pytest.raises(ValueError, match=r"num_pairs=97 .*120 usable pairs, 96 after removing rm_ratio=0.2"):
        pds_hf.distill(shapes_ds, config, clip_model=Exploding(), num_pairs=97)


def test_missing_column_fails_before_loading_models(shapes_ds):
    with pytest.raises(KeyError, match="caption_column"):
        pds_hf.distill(shapes_ds.rename_column("caption", "sentences"), num_pairs=3)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_from_user_encoder_is_reported_with_rows(shapes_ds, tiny_encoder, config, value):
    class Broken:
        def encode_images(self, images):
            out = tiny_encoder.encode_images(images)
            out[2, 0] = value
            return out

        def encode_texts(self, texts):
            return tiny_encoder.encode_texts(texts)

    with pytest.raises(
        ValueError, match=r"NaN or inf image embeddings for 1 input\(s\), first at dataset row\(s\) \[2\]"
    ):
        pds_hf.distill(shapes_ds, config, clip_model=Broken(), synthesis="none")


def test_encoder_dimension_must_match_unclip(shapes_ds, config):
    from pds_hf.testing import tiny_unclip_pipeline

    with pytest.raises(ValueError, match="expects 16"):
        pds_hf.distill(shapes_ds, config, unclip_model=tiny_unclip_pipeline(embedding_dim=16))


def test_truncated_image_is_skipped_at_decode_time(config, caplog):
    good = [png_bytes((i * 20, 0, 255 - i * 20), (16, 16)) for i in range(12)]
    truncated = good[0][:-30]  # PNG header intact, data cut: opens, fails to decode
    ds = Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in good + [truncated]],
            "caption": [f"colour {i}" for i in range(13)],
        },
        features=Features({"image": Image(), "caption": Value("string")}),
    )
    with caplog.at_level("WARNING"):
        small = pds_hf.distill(ds, config, synthesis="none", num_pairs=3)
    assert len(small) == 3
    assert "failed to decode, at row(s) [12]" in caplog.text
    assert pds_hf.metadata(small)["source"]["num_pairs"] == 12
    with pytest.raises(ValueError, match=r"row\(s\) \[12\]"):
        pds_hf.distill(ds, config, synthesis="none", num_pairs=3, on_bad_image="error")


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="synthesis must be one of"):
        DistillConfig(synthesis="karlo")
    with pytest.raises(TypeError):
        DistillConfig().replace(num_pair=3)
