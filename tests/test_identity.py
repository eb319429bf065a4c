"""What a cached or derived result is keyed on: exactly the settings that make it.

Each test here failed on the code before the identity fixes (issue "trust what is cached and derived"), or ties an
output to values computed here, independently of the code under test.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pds_hf
from pds_hf import DistillConfig, DistillProcessor


class Counting:
    """An encoder that counts the images and captions it encodes; cached under its inner encoder's fingerprint."""

    def __init__(self, inner):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.name = "counting-encoder"
        self.images = self.texts = 0

    def encode_images(self, images):
        self.images += len(images)
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        self.texts += len(texts)
        return self.inner.encode_texts(texts)


@pytest.fixture(scope="module")
def other_encoder():
    from pds_hf.testing import tiny_clip_encoder

    return tiny_clip_encoder(seed=1)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from pds_hf.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _settings(**changes):
    return dict(dict(num_pairs=6, synthesis="retrieve", image_size=32, device="cpu", use_cache=False), **changes)


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# 1. replace() and the loaded encoder
# ---------------------------------------------------------------------------------------------------------------


def test_replace_with_another_encoder_uses_it(shapes_ds, tiny_encoder, other_encoder):
    first = DistillProcessor(**_settings(clip_model=tiny_encoder))
    a = first(shapes_ds)
    b = first.replace(clip_model=other_encoder)(shapes_ds)
    fresh = DistillProcessor(**_settings(clip_model=other_encoder))(shapes_ds)
    np.testing.assert_array_equal(np.asarray(b["text_embedding"]), np.asarray(fresh["text_embedding"]))
    assert b["caption"] == fresh["caption"]
    assert not np.allclose(np.asarray(a["text_embedding"]), np.asarray(b["text_embedding"]))


@pytest.mark.parametrize(
    "change", [{"clip_revision": "v2"}, {"half_precision": False}, {"clip_processor": "openai/clip-vit-base-patch32"}]
)
def test_replace_loads_a_new_encoder_when_its_settings_change(clip_folder, change, monkeypatch):
    loads = []

    def fake_load(spec, **kwargs):
        loads.append((spec, kwargs))
        return object()

    monkeypatch.setattr("pds_hf.processor.load_encoder", fake_load)
    processor = DistillProcessor(**_settings(clip_model=clip_folder))
    first = processor.load_encoder()
    assert processor.replace(num_pairs=3, seed=7).load_encoder() is first  # nothing the encoder depends on
    assert processor.replace(**change).load_encoder() is not first
    assert len(loads) == 2


# ---------------------------------------------------------------------------------------------------------------
# 2. ds.map(processor.encode): one fingerprint in every process, none of the machine settings
# ---------------------------------------------------------------------------------------------------------------


def test_encode_hash_holds_what_changes_the_embeddings_only():
    from datasets.fingerprint import Hasher

    processor = DistillProcessor(clip_model="org/clip")
    same = Hasher.hash(processor.encode)
    for machine in (
        {"device": "cuda:3"},
        {"encode_batch_size": 7},
        {"encode_workers": 0},
        {"cache_dir": "/x"},
        {"barrier_timeout": 5},
        {"num_pairs": 9},
    ):
        assert Hasher.hash(processor.replace(**machine).encode) == same, machine
    for result in (
        {"clip_model": "org/other"},
        {"clip_revision": "abc"},
        {"half_precision": True},
        {"image_column": "img"},
        {"caption_column": "text"},
        {"text_embedding_column": "t"},
    ):
        assert Hasher.hash(processor.replace(**result).encode) != same, result


def test_unpickling_keeps_torch_threads_in_a_process_that_was_not_forked():
    import torch

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("torch runs one thread here already")
    clone = pickle.loads(pickle.dumps(DistillProcessor(num_pairs=3)))
    assert clone.config.num_pairs == 3 and torch.get_num_threads() == threads


_TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import datasets, torch
    import pds_hf
    from pds_hf.encode import TransformersEncoder

    calls = []
    original = TransformersEncoder.encode_images
    def counting(self, images):
        calls.append(len(images))
        return original(self, images)
    TransformersEncoder.encode_images = counting
    threads = torch.get_num_threads()
    ds = datasets.load_from_disk(sys.argv[1])
    processor = pds_hf.DistillProcessor(clip_model=sys.argv[2], device="cpu", encode_batch_size=int(sys.argv[3]))
    encoded = ds.map(processor.encode, batched=True, batch_size=16)
    print(json.dumps({"files": [f["filename"] for f in encoded.cache_files], "encoded": sum(calls),
                      "fingerprint": encoded._fingerprint, "threads": [threads, torch.get_num_threads()]}))
""")


def test_a_second_process_opens_the_first_ones_map_cache(shapes_ds, clip_folder, tmp_path):
    import json

    source = tmp_path / "source"
    shapes_ds.save_to_disk(str(source))
    script = tmp_path / "encode.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")

    def run(batch_size):
        done = subprocess.run(
            [sys.executable, str(script), str(source), clip_folder, str(batch_size)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run(64)
    # Another process, and another machine setting (the encoder's batch size): the same cache file, no encoding.
    second = run(8)
    assert first["encoded"] == len(shapes_ds) and second["encoded"] == 0
    assert second["files"] == first["files"] and second["fingerprint"] == first["fingerprint"]
    assert first["files"][0].startswith(str(source))  # the map's cache file sits beside the source's arrow files
    assert second["threads"][0] == second["threads"][1]


# ---------------------------------------------------------------------------------------------------------------
# 4. float16 storage re-encodes nothing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["map-style", "streamed"])
def test_a_float16_rerun_encodes_nothing(shapes_ds, tiny_encoder, tmp_path, streamed):
    counting = Counting(tiny_encoder)

    def run(dtype):
        ds = shapes_ds.to_iterable_dataset(num_shards=2) if streamed else shapes_ds
        return DistillProcessor(
            **_settings(clip_model=counting, use_cache=True, cache_dir=str(tmp_path), embedding_dtype=dtype)
        )(ds)

    full = run("float32")
    assert counting.images == len(shapes_ds)
    encoded = counting.images, counting.texts
    half = run("float16")
    assert (counting.images, counting.texts) == encoded  # nothing encoded again
    assert half["caption"] == full["caption"]
    stored = sorted(p.name for p in tmp_path.glob("*/image_embeds*.npy"))
    assert stored == ["image_embeds.float16.npy", "image_embeds.npy"]
    # And the selection is not the float32 one read back: the prototypes come from float16 embeddings.
    assert not np.array_equal(np.asarray(half["image_embedding"]), np.asarray(full["image_embedding"]))


def test_another_shard_size_encodes_nothing_and_keeps_the_stages_shards(shapes_ds, tiny_encoder, tmp_path):
    counting = Counting(tiny_encoder)

    def run(shard_size):
        settings = _settings(clip_model=counting, use_cache=True, cache_dir=str(tmp_path), shard_size=shard_size)
        return DistillProcessor(**settings)(shapes_ds)

    first = run(16)
    encoded = counting.images, counting.texts
    assert counting.images == len(shapes_ds)
    second = run(7)
    assert (counting.images, counting.texts) == encoded  # nothing encoded again
    assert second["caption"] == first["caption"] and second._fingerprint == first._fingerprint
    assert len(list(tmp_path.glob("encode-*"))) == 1
    # The stage keeps the cut of its first run: shards of 16 images, ceil(N / 16) of them, none of 7.
    shards = sorted(tmp_path.glob("encode-*/images-*.npz"))
    assert len(shards) == -(-len(shapes_ds) // 16)


# ---------------------------------------------------------------------------------------------------------------
# 5. The distilled set's fingerprint is derived from what made it
# ---------------------------------------------------------------------------------------------------------------


def test_output_fingerprint_is_derived_from_source_and_settings(shapes_ds, tiny_encoder, tmp_path):
    def run(**changes):
        return DistillProcessor(
            **_settings(clip_model=tiny_encoder, use_cache=True, cache_dir=str(tmp_path), **changes)
        )(shapes_ds)

    first, second = run(), run()
    assert first._fingerprint == second._fingerprint
    assert run(encode_batch_size=5, encode_workers=0)._fingerprint == first._fingerprint
    assert (
        shapes_ds.distill(**_settings(clip_model=tiny_encoder, use_cache=True, cache_dir=str(tmp_path)))._fingerprint
        == first._fingerprint
    )
    changed = {
        run(num_pairs=5)._fingerprint,
        run(seed=1)._fingerprint,
        run(synthesis="none")._fingerprint,
        DistillProcessor(**_settings(clip_model=tiny_encoder, use_cache=True, cache_dir=str(tmp_path)))(
            shapes_ds.select(range(50))
        )._fingerprint,
    }
    assert first._fingerprint not in changed and len(changed) == 4
    # so that a map over the distilled set has one fingerprint too (datasets derives it from ours)
    upper = [s.map(lambda row: {"caption": row["caption"].upper()})._fingerprint for s in (first, second)]
    assert upper[0] == upper[1]


# ---------------------------------------------------------------------------------------------------------------
# 6. One rule for map-style and streamed sources: when are images needed?
# ---------------------------------------------------------------------------------------------------------------


def _outcome(run):
    try:
        small = run()
    except (KeyError, ValueError, TypeError) as err:
        return type(err).__name__, str(err).split(";")[0].replace("stream", "dataset")
    return "ok", small["caption"], [None if i is None else np.asarray(i).tobytes() for i in small["image"]]


@pytest.fixture(scope="module")
def no_images(shapes_ds, tiny_encoder):
    encoded = shapes_ds.map(DistillProcessor(clip_model=tiny_encoder).encode, batched=True, batch_size=32)
    return encoded.remove_columns("image")


@pytest.mark.parametrize("method", ["pds", "random", "herding", "kcenter"])
@pytest.mark.parametrize("synthesis", ["none", "retrieve", "retrieve-scored"])
def test_given_embeddings_without_images_same_rule_both_kinds(no_images, method, synthesis):
    processor = DistillProcessor(
        **_settings(clip_model="nobody/not-loaded", method=method, synthesis=synthesis, num_pairs=4)
    )
    mapped = _outcome(lambda: processor(no_images))
    streamed = _outcome(lambda: processor(no_images.to_iterable_dataset(num_shards=2)))
    assert mapped == streamed
    needs = synthesis != "none" and (method != "pds" or synthesis != "unclip")
    assert (mapped[0] != "ok") == needs


# ---------------------------------------------------------------------------------------------------------------
# The core, against values computed here
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["image", "pair"])
def test_each_caption_is_the_real_caption_nearest_its_text_prototype(layout, shapes_ds, shapes_pairs_ds, tiny_encoder):
    ds = shapes_ds if layout == "image" else shapes_pairs_ds
    encoded = ds.map(DistillProcessor(clip_model=tiny_encoder).encode, batched=True, batch_size=32)
    processor = DistillProcessor(**_settings(clip_model=tiny_encoder, image_size=None))
    small = processor(encoded)
    selection = processor.select(encoded)

    # Every real caption and its embedding, read from the columns here.
    if layout == "image":
        captions = [c for row in encoded["caption"] for c in row]
        vectors = np.concatenate([np.asarray(row, dtype=np.float64) for row in encoded["text_embedding"]])
        image_vectors = np.asarray(encoded["image_embedding"], dtype=np.float64)
    else:
        captions = list(encoded["caption"])
        vectors = np.asarray(encoded["text_embedding"], dtype=np.float64)
        image_vectors = np.asarray(encoded["image_embedding"], dtype=np.float64)
    text_prototypes = np.asarray(small["text_embedding"], dtype=np.float64)
    nearest = np.argmax(_unit(text_prototypes) @ _unit(vectors).T, axis=1)
    assert small["caption"] == [captions[i] for i in nearest]
    assert selection.captions == small["caption"]
    # The image prototypes would pick other captions: the test tells the two apart.
    by_image = np.argmax(_unit(np.asarray(small["image_embedding"], dtype=np.float64)) @ _unit(vectors).T, axis=1)
    assert [captions[i] for i in by_image] != small["caption"]

    # synthesis="retrieve": each image is the real image nearest (cosine) its image prototype.
    image_prototypes = np.asarray(small["image_embedding"], dtype=np.float64)
    rows = np.argmax(_unit(image_prototypes) @ _unit(image_vectors).T, axis=1)
    want = [np.asarray(encoded[int(r)]["image"].convert("RGB")).tobytes() for r in rows]
    assert [np.asarray(i).tobytes() for i in small["image"]] == want

    # Supports: at most the pairs kept after the filter, at least one each where no centroid stood in.
    kept = pds_hf.metadata(small)["kept_pairs"]
    assert kept == len(captions) - int(np.floor(0.2 * len(captions)))
    assert 0 < sum(small["support"]) <= kept


def test_with_rank_puts_each_process_on_its_gpu(monkeypatch):
    import torch

    devices = []

    def fake_load(spec, **kwargs):
        devices.append(kwargs["device"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr("pds_hf.processor.load_encoder", fake_load)
    processor = DistillProcessor(clip_model="org/clip")
    batch = {"image": [], "caption": []}
    for rank in (1, 6):
        with pytest.raises(RuntimeError, match="stop here"):
            processor.encode(batch, rank=rank)
    assert devices == ["cuda:1", "cuda:2"]


def test_result_dict_leaves_out_the_machine_settings():
    from pds_hf.config import MACHINE_FIELDS

    a = DistillConfig(num_pairs=5).result_dict()
    b = DistillConfig(
        num_pairs=5,
        device="cuda",
        encode_batch_size=3,
        encode_workers=2,
        cache_dir="/c",
        synthesis_batch_size=2,
        use_cache=False,
        barrier_timeout=3,
    ).result_dict()
    assert a == b and not set(MACHINE_FIELDS) & set(a)
    assert DistillConfig(num_pairs=6).result_dict() != a
