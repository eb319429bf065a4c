"""Steps 2-6 on memory-mapped embeddings: the same results as on arrays in memory, read a block at a
time (blocks forced small here), without a whole copy of a table; and the degenerate inputs that
used to give NaN prototypes or a fractional ``support``."""

import tracemalloc

import numpy as np
import pytest

from pds_hf.caption import nearest, retrieve_captions
from pds_hf.cluster import GREEDY_MAX_CLUSTERS, kmeans, resolve_init
from pds_hf.filter import nonfinite_rows, normalize, pair_similarity
from pds_hf.prototypes import prototypes_from_embeddings


def _pairs(rng, n=600, d=16, groups=6):
    centres = rng.normal(size=(groups, d)) * 3
    which = rng.integers(0, groups, size=n)
    images = centres[which] + rng.normal(size=(n, d))
    texts = centres[which] + rng.normal(size=(n, d)) + 0.5
    return images.astype(np.float32), texts.astype(np.float32)


def _memmap(tmp_path, name, array, dtype):
    path = tmp_path / f"{name}.npy"
    np.save(path, array.astype(dtype))
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_prototypes_on_memory_maps_equal_in_memory(tmp_path, rng, dtype):
    images, texts = _pairs(rng)
    # The in-memory run sees exactly the stored values (float16 rounding included).
    images, texts = images.astype(dtype).astype(np.float32), texts.astype(dtype).astype(np.float32)
    mapped_images, mapped_texts = _memmap(tmp_path, "i", images, dtype), _memmap(tmp_path, "t", texts, dtype)
    settings = dict(rm_ratio=0.2, seed=3, kmeans_max_points_per_centroid=40)
    whole = prototypes_from_embeddings(images, texts, 6, **settings)
    blocks = prototypes_from_embeddings(mapped_images, mapped_texts, 6, chunk=37, **settings)
    np.testing.assert_array_equal(blocks.kept, whole.kept)
    np.testing.assert_allclose(blocks.pair_similarity, whole.pair_similarity, atol=1e-6)
    np.testing.assert_array_equal(blocks.image_labels, whole.image_labels)
    np.testing.assert_array_equal(blocks.text_labels, whole.text_labels)
    np.testing.assert_allclose(blocks.image_embeds, whole.image_embeds, atol=1e-5)
    np.testing.assert_allclose(blocks.text_embeds, whole.text_embeds, atol=1e-5)
    np.testing.assert_array_equal(blocks.support, whole.support)
    _, caption_whole = retrieve_captions(whole.text_embeds, texts, [str(i) for i in range(len(texts))])
    _, caption_blocks = retrieve_captions(
        blocks.text_embeds, mapped_texts, [str(i) for i in range(len(texts))], chunk=50
    )
    np.testing.assert_array_equal(caption_blocks, caption_whole)


def test_prototypes_with_image_index_on_memory_maps(tmp_path, rng):
    images, _ = _pairs(rng, n=300)
    pair_image = np.repeat(np.arange(300), 2)  # each image with two captions
    texts = (images[pair_image] + rng.normal(size=(600, images.shape[1]))).astype(np.float32)
    whole = prototypes_from_embeddings(images, texts, 5, image_index=pair_image, seed=1)
    mapped_images, mapped_texts = _memmap(tmp_path, "i", images, "float32"), _memmap(tmp_path, "t", texts, "float32")
    blocks = prototypes_from_embeddings(mapped_images, mapped_texts, 5, image_index=pair_image, seed=1, chunk=64)
    np.testing.assert_array_equal(blocks.kept, whole.kept)
    np.testing.assert_array_equal(blocks.image_labels, whole.image_labels)
    np.testing.assert_allclose(blocks.image_embeds, whole.image_embeds, atol=1e-5)
    np.testing.assert_array_equal(blocks.support, whole.support)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_nearest_in_blocks_is_the_brute_force_argmax(tmp_path, rng, dtype, chunk):
    candidates = rng.normal(size=(300, 8)).astype(dtype)
    candidates[50] = candidates[10]  # a tie: the first one wins
    queries = np.concatenate([rng.normal(size=(20, 8)), candidates[[10, 299, 0]]]).astype(np.float32)
    expected = np.argmax(normalize(queries) @ normalize(candidates).T, axis=1)
    found = nearest(queries, _memmap(tmp_path, "c", candidates, dtype), chunk=chunk)
    np.testing.assert_array_equal(found, expected)
    assert found[-3] == 10


def test_kmeans_on_a_float16_memory_map_equals_the_array(tmp_path, rng):
    x = (rng.normal(size=(500, 12)) + 4 * rng.integers(0, 5, size=(500, 1))).astype(np.float16)
    mapped = _memmap(tmp_path, "x", x, "float16")
    for normalize_rows in (False, True):
        a = kmeans(x.astype(np.float32), 5, normalize=normalize_rows, max_points_per_centroid=30)
        b = kmeans(mapped, 5, normalize=normalize_rows, max_points_per_centroid=30, chunk=33)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-5, atol=1e-5)


def test_pair_similarity_and_nan_check_read_memory_maps_in_blocks(tmp_path, rng):
    images, texts = _pairs(rng, n=200)
    images[[3, 150]] = np.nan
    mapped = _memmap(tmp_path, "i", images, "float16")
    assert nonfinite_rows(mapped, chunk=7).tolist() == [3, 150]
    index = rng.integers(0, 200, size=500)
    sim = pair_similarity(mapped, texts, index, index, chunk=9)
    expected = np.einsum("ij,ij->i", normalize(images.astype(np.float16)[index]), normalize(texts[index]))
    np.testing.assert_allclose(sim, expected, atol=1e-6, equal_nan=True)


def _peak_numpy_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_steps_2_to_6_never_copy_a_whole_table(tmp_path, rng):
    # NumPy reports its buffers to tracemalloc. Each float16 table is 8 MB on disk (a float32 copy of
    # it would be 16 MB); what a step may hold is a few blocks of 100 rows and a few numbers per pair.
    n, d = 4000, 1024
    images = rng.normal(size=(n, d)).astype(np.float16)
    texts = (images + rng.normal(size=(n, d))).astype(np.float16)
    mapped_images, mapped_texts = _memmap(tmp_path, "i", images, "float16"), _memmap(tmp_path, "t", texts, "float16")
    run = dict(chunk=100, kmeans_max_points_per_centroid=50)
    prototypes_from_embeddings(mapped_images[:300], mapped_texts[:300], 4, **run)  # imports and caches first
    protos = []
    peak = _peak_numpy_bytes(lambda: protos.append(prototypes_from_embeddings(mapped_images, mapped_texts, 4, **run)))
    assert peak < texts.nbytes / 3, f"steps 2-5 held {peak / 2**20:.1f} MB of NumPy buffers"
    peak = _peak_numpy_bytes(lambda: nearest(protos[0].text_embeds, mapped_texts, chunk=100))
    assert peak < texts.nbytes / 3, f"nearest held {peak / 2**20:.1f} MB of NumPy buffers"


# -- degenerate inputs ----------------------------------------------------------------------------


def test_fewer_distinct_caption_vectors_than_num_pairs_is_a_clear_error(rng):
    # 100 captions that encode to 5 distinct vectors (as captions differing only in case do with
    # CLIP): 10 clusters cannot be filled, and the fallback mean of an empty one used to be 0/0.
    images = rng.normal(size=(100, 8)).astype(np.float32)
    texts = np.repeat(rng.normal(size=(5, 8)).astype(np.float32), 20, axis=0)
    with pytest.raises(ValueError, match=r"num_pairs=10 is more than the 5 distinct caption embeddings.*at most 5"):
        prototypes_from_embeddings(images, texts, 10, rm_ratio=0.0, normalize=True, empty="centroid")
    protos = prototypes_from_embeddings(images, texts, 5, rm_ratio=0.0, normalize=True, empty="centroid")
    assert np.isfinite(protos.text_embeds).all() and len(protos) == 5


def test_rows_that_are_multiples_of_each_other_are_one_direction(rng):
    images = rng.normal(size=(100, 8)).astype(np.float32)
    directions = np.repeat(rng.normal(size=(5, 8)).astype(np.float32), 20, axis=0)
    texts = directions * rng.uniform(0.5, 2.0, size=(100, 1)).astype(np.float32)  # 100 distinct rows
    with pytest.raises(ValueError, match=r"caption clusters.*directions.*Lower num_pairs"):
        prototypes_from_embeddings(images, texts, 10, rm_ratio=0.0, normalize=True, empty="centroid")


def test_support_is_int64_counts_without_rounding(rng):
    images, texts = _pairs(rng, n=200)
    weights = rng.integers(1, 4, size=200)
    protos = prototypes_from_embeddings(images, texts, 6, weights=weights, rm_ratio=0.0)
    assert protos.support.dtype == np.int64
    for m in range(len(protos)):
        members = (protos.image_labels == protos.image_cluster[m]) & (protos.text_labels == protos.text_cluster[m])
        assert protos.support[m] == weights[members].sum()
    with pytest.raises(ValueError, match=r"whole numbers.*pair\(s\) \[1\]"):
        prototypes_from_embeddings(images, texts, 6, weights=np.r_[1.0, 0.5, np.ones(198)])


def test_auto_init_switches_to_afk_mc2_above_the_greedy_limit():
    assert resolve_init("auto", GREEDY_MAX_CLUSTERS) == "k-means++"
    assert resolve_init("auto", GREEDY_MAX_CLUSTERS + 1) == "afk-mc2"
    assert resolve_init("random", 10**6) == "random"
    with pytest.raises(ValueError, match="init must be one of"):
        resolve_init("kmeans++", 10)
