"""Steps 2-6 on hand-checkable inputs: filter, k-means, alignment, prototypes, caption retrieval."""

import itertools

import numpy as np
import pytest

from pds_hf.align import align_clusters, count_table
from pds_hf.caption import nearest, retrieve_captions
from pds_hf.cluster import kmeans
from pds_hf.filter import filter_pairs, pair_similarity
from pds_hf.prototypes import prototypes_from_embeddings

# -- filter ---------------------------------------------------------------------------------------


def test_filter_removes_exactly_the_lowest_fraction(rng):
    sim = rng.permutation(100).astype(float)  # distinct scores 0..99
    kept = filter_pairs(sim, rm_ratio=0.2)
    assert kept.sum() == 80
    assert set(sim[~kept]) == set(range(20))


@pytest.mark.parametrize("n,ratio,removed", [(10, 0.25, 2), (7, 0.2, 1), (5, 0.0, 0), (10, 0.3, 3)])
def test_filter_count_is_floor(n, ratio, removed):
    kept = filter_pairs(np.arange(n, dtype=float)[::-1], ratio)
    assert (~kept).sum() == removed
    # the removed ones are the lowest scores, i.e. the last positions here
    assert not kept[n - removed :].any()


def test_filter_ties_remove_earlier_first():
    kept = filter_pairs(np.array([0.5, 0.1, 0.1, 0.9]), rm_ratio=0.25)
    assert kept.tolist() == [True, False, True, True]


def test_filter_weights_count_multiplicity():
    # The lowest pair stands for 3 identical pairs out of 10: removing 20% (2) must not remove it.
    kept = filter_pairs(
        np.array([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]), 0.2, weights=np.array([3, 1, 1, 1, 1, 1, 1, 1])
    )
    assert kept.all()
    kept = filter_pairs(
        np.array([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]), 0.3, weights=np.array([3, 1, 1, 1, 1, 1, 1, 1])
    )
    assert kept.tolist() == [False] + [True] * 7


def test_filter_rejects_bad_ratio():
    with pytest.raises(ValueError, match="rm_ratio"):
        filter_pairs(np.zeros(3), 1.0)


def test_pair_similarity_is_cosine_with_indices():
    images = np.array([[1.0, 0.0], [0.0, 2.0]])
    texts = np.array([[3.0, 0.0], [1.0, 1.0]])
    sim = pair_similarity(images, texts, pair_image=[0, 1, 1], pair_text=[0, 0, 1], chunk=2)
    np.testing.assert_allclose(sim, [1.0, 0.0, np.sqrt(0.5)], atol=1e-6)


# -- k-means --------------------------------------------------------------------------------------


def test_kmeans_separates_obvious_groups():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0], [-10.0, 5.0]], dtype=np.float32)
    fit = kmeans(x, 3, seed=0, restarts=3)
    labels = fit.labels
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len({labels[0], labels[2], labels[4]}) == 3


def test_kmeans_weights_pull_the_centre():
    x = np.array([[0.0], [1.0]], dtype=np.float32)
    fit = kmeans(x, 1, weights=np.array([3.0, 1.0]))
    np.testing.assert_allclose(fit.centroids, [[0.25]], atol=1e-6)
    assert fit.inertia == pytest.approx(3 * 0.25**2 + 0.75**2)


def test_kmeans_rejects_k_above_n():
    with pytest.raises(ValueError, match="k=3"):
        kmeans(np.zeros((2, 2), dtype=np.float32), 3)


# -- alignment ------------------------------------------------------------------------------------


def test_alignment_recovers_a_known_permutation(rng):
    k = 12
    perm = rng.permutation(k)
    image_labels = rng.integers(0, k, size=2000)
    text_labels = perm[image_labels]
    noisy = rng.random(2000) < 0.2  # 20% of pairs land in a random text cluster
    text_labels[noisy] = rng.integers(0, k, size=noisy.sum())
    rows, cols = align_clusters(count_table(image_labels, text_labels, k))
    assert rows.tolist() == list(range(k))
    assert cols.tolist() == perm.tolist()


def test_alignment_maximises_total_not_greedy():
    # Greedy (take the largest cell first: 10 at (0,0)) gives 10 + 1 = 11; the optimum is 9 + 9 = 18.
    counts = np.array([[10, 9], [9, 1]])
    rows, cols = align_clusters(counts)
    assert counts[rows, cols].sum() == 18


def test_count_table_weights():
    table = count_table([0, 1, 1], [1, 0, 0], 2, weights=[2.0, 1.0, 0.5])
    np.testing.assert_allclose(table, [[0, 2], [1.5, 0]])


# -- prototypes -----------------------------------------------------------------------------------


def _blobs(rng, k=8, per=40, d=6, noise=0.05):
    centres = rng.normal(size=(k, d)) * 5
    labels = np.repeat(np.arange(k), per)
    images = centres[labels] + noise * rng.normal(size=(k * per, d))
    texts = centres[labels] + noise * rng.normal(size=(k * per, d)) + 0.3
    return images.astype(np.float32), texts.astype(np.float32), labels


def _best_matching_by_brute_force(image_labels, text_labels, k):
    """The text cluster of each image cluster in the matching with the most shared pairs, found by
    counting the pairs by hand and trying all ``k!`` matchings; the best must be unique."""
    table = np.zeros((k, k), dtype=np.int64)
    for i, j in zip(image_labels.tolist(), text_labels.tolist(), strict=False):
        table[i, j] += 1
    matchings = np.array(list(itertools.permutations(range(k))))
    totals = table[np.arange(k), matchings].sum(axis=1)
    best = np.flatnonzero(totals == totals.max())
    assert len(best) == 1, "the test needs one best matching"
    return dict(enumerate(matchings[best[0]].tolist()))


def test_prototypes_equal_intersection_means(rng):
    images, texts, _ = _blobs(rng)
    # Swap some captions between blobs so that intersections differ from clusters.
    texts[::7] = texts[::7][::-1]
    protos = prototypes_from_embeddings(images, texts, 8, rm_ratio=0.1, seed=3)
    kept = protos.kept
    by_image = _best_matching_by_brute_force(protos.image_labels[kept], protos.text_labels[kept], 8)
    assert len(protos) == 8
    for m in range(8):
        i, j = int(protos.image_cluster[m]), int(protos.text_cluster[m])
        assert by_image[i] == j
        members = kept & (protos.image_labels == i) & (protos.text_labels == j)
        assert protos.support[m] == members.sum() > 0
        np.testing.assert_allclose(protos.image_embeds[m], images[members].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(protos.text_embeds[m], texts[members].mean(axis=0), atol=1e-5)
    assert (np.diff(protos.similarity) <= 1e-7).all(), "ordered by image-text cosine, descending"
    assert (protos.image_labels[~kept] == -1).all() and (protos.text_labels[~kept] == -1).all()
    assert kept.sum() == 320 - 32


def test_prototypes_same_seed_same_output(rng):
    images, texts, _ = _blobs(rng, k=10, per=30, noise=1.0)
    a = prototypes_from_embeddings(images, texts, 10, seed=7)
    b = prototypes_from_embeddings(images, texts, 10, seed=7)
    np.testing.assert_array_equal(a.image_embeds, b.image_embeds)
    np.testing.assert_array_equal(a.text_labels, b.text_labels)


@pytest.mark.parametrize("policy", ["centroid", "drop"])
def test_empty_intersections_never_nan(policy):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(200, 4)).astype(np.float32)
    texts = rng.normal(size=(200, 4)).astype(np.float32)  # unrelated: many empty intersections at k=50
    protos = prototypes_from_embeddings(images, texts, 50, rm_ratio=0.0, empty=policy, normalize=False)
    assert protos.num_empty > 0
    assert np.isfinite(protos.image_embeds).all() and np.isfinite(protos.text_embeds).all()
    if policy == "centroid":
        assert len(protos) == 50
        empty = protos.support == 0
        assert empty.sum() == protos.num_empty
        np.testing.assert_allclose(protos.image_embeds[empty], protos.image_centroids[protos.image_cluster[empty]])
        np.testing.assert_allclose(protos.text_embeds[empty], protos.text_centroids[protos.text_cluster[empty]])
    else:
        assert len(protos) == 50 - protos.num_empty
        assert (protos.support > 0).all()


def test_normalize_makes_clustering_blind_to_row_norms(rng):
    # Contrastive encoders leave each embedding's length free. Scaling rows changes no cosine, so
    # with normalize=True the clusters, the filter and the matching must not move; the prototypes
    # stay means of the raw (scaled) embeddings.
    images, texts, _ = _blobs(rng, k=10, per=30, noise=1.0)
    scale_i = rng.uniform(0.2, 5.0, size=(len(images), 1)).astype(np.float32)
    scale_t = rng.uniform(0.2, 5.0, size=(len(texts), 1)).astype(np.float32)
    plain = prototypes_from_embeddings(images, texts, 10, normalize=True, seed=5)
    scaled = prototypes_from_embeddings(images * scale_i, texts * scale_t, 10, normalize=True, seed=5)
    np.testing.assert_array_equal(plain.kept, scaled.kept)
    np.testing.assert_array_equal(plain.image_labels, scaled.image_labels)
    np.testing.assert_array_equal(plain.text_labels, scaled.text_labels)
    for m in np.flatnonzero(scaled.support > 0):
        members = (
            scaled.kept
            & (scaled.image_labels == scaled.image_cluster[m])
            & (scaled.text_labels == scaled.text_cluster[m])
        )
        np.testing.assert_allclose(
            scaled.image_embeds[m], (images * scale_i)[members].mean(axis=0), rtol=1e-4, atol=1e-4
        )
    # On the raw embeddings the same scaling does move the clusters (what normalize=True is for).
    raw = prototypes_from_embeddings(images * scale_i, texts * scale_t, 10, seed=5, normalize=False)
    assert not np.array_equal(raw.image_labels, scaled.image_labels)


def test_normalize_fallback_is_the_raw_cluster_mean():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(200, 4)).astype(np.float32) * rng.uniform(0.5, 3, size=(200, 1)).astype(np.float32)
    texts = rng.normal(size=(200, 4)).astype(np.float32)  # unrelated: empty intersections at k=120
    protos = prototypes_from_embeddings(images, texts, 120, rm_ratio=0.0, normalize=True)
    empty = protos.support == 0
    assert empty.sum() == protos.num_empty > 0
    for m in np.flatnonzero(empty):
        in_image = protos.image_labels == protos.image_cluster[m]
        in_text = protos.text_labels == protos.text_cluster[m]
        np.testing.assert_allclose(protos.image_embeds[m], images[in_image].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(protos.text_embeds[m], texts[in_text].mean(axis=0), atol=1e-5)
    norms = np.linalg.norm(protos.image_centroids, axis=1)
    assert norms.max() <= 1.0 + 1e-5, "the k-means centres themselves live in the unit-norm space"


def test_dedup_index_matches_duplicated_rows():
    # Each image appears with several captions: giving each image once (image_index) must give the
    # same result as repeating its embedding per pair, when the clusters are unambiguous.
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 8)) * 10
    distinct = (centres[np.arange(25) % 5] + 0.01 * rng.normal(size=(25, 8))).astype(np.float32)
    pair_image = np.repeat(np.arange(25), 3)
    texts = (distinct[pair_image] + 0.01 * rng.normal(size=(75, 8))).astype(np.float32)
    a = prototypes_from_embeddings(distinct, texts, 5, image_index=pair_image, rm_ratio=0.2)
    b = prototypes_from_embeddings(distinct[pair_image], texts, 5, rm_ratio=0.2)
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_allclose(np.sort(a.image_embeds, axis=0), np.sort(b.image_embeds, axis=0), atol=1e-5)
    np.testing.assert_array_equal(np.sort(a.support), np.sort(b.support))
    assert a.support.sum() == b.support.sum() == 60


def test_prototypes_reject_bad_arguments(rng):
    images = rng.normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="num_pairs"):
        prototypes_from_embeddings(images, images, 0)
    with pytest.raises(ValueError, match="after filtering"):
        prototypes_from_embeddings(images, images, 17, rm_ratio=0.2)
    bad = images.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"text_embeds has NaN.*\[4\]"):
        prototypes_from_embeddings(images, bad, 3)
    with pytest.raises(ValueError, match="empty"):
        prototypes_from_embeddings(images, images, 3, empty="nan")
    with pytest.raises(ValueError, match="distinct images"):
        prototypes_from_embeddings(images[:2], images, 3, image_index=np.arange(20) % 2)


# -- caption retrieval ----------------------------------------------------------------------------


def test_retrieve_captions_is_cosine_nearest():
    texts = np.array([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0]])
    protos = np.array([[0.1, 0.9], [5.0, 0.1]])
    captions, index = retrieve_captions(protos, texts, ["x", "diag", "y"])
    assert index.tolist() == [2, 0]
    assert captions == ["y", "x"]
    assert nearest(np.array([[1.0, 1.0]]), texts).tolist() == [1]


def test_fewer_distinct_directions_than_clusters_is_refused_naming_how_many():
    # 3 directions, each repeated (and scaled: one direction once normalised) 20 times; 5 clusters asked for.
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(3, 8)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=(60, 1)).astype(np.float32)
    images = directions[np.arange(60) % 3] * scale
    texts = rng.normal(size=(60, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"could form only 3 of num_pairs=5 image clusters.*at most 3"):
        prototypes_from_embeddings(images, texts, 5, rm_ratio=0.0)
