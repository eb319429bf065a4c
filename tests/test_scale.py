"""The paths that make the steps scale give the same answers as the simple ones.

Sparse count table and sparse assignment against the dense Hungarian solver; k-means on rows in place
and on a subsample; block-wise similarity and prototype means. All in seconds.
"""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import random_array

import pds_hf.align as align
from pds_hf.align import align_clusters, count_table, max_weight_matching, sparse_count_table
from pds_hf.cluster import INIT_METHODS, greedy_kmeans_plus_plus, kmeans
from pds_hf.filter import normalize, pair_similarity
from pds_hf.prototypes import _group_means, prototypes_from_embeddings


def _dense_optimum(table):
    rows, cols = linear_sum_assignment(table, maximize=True)
    return rows, cols, table[rows, cols].sum()


def _positive_cells(table, rows, cols):
    gain = table[rows, cols] > 0
    return set(zip(rows[gain].tolist(), cols[gain].tolist(), strict=False))


def _random_table(rng, k, density, integer):
    table = random_array((k, k), density=density, rng=rng, format="csr")
    table.data = rng.integers(1, 6, size=table.nnz).astype(float) if integer else rng.random(table.nnz) + 1e-3
    return table


# -- sparse count table ---------------------------------------------------------------------------


def test_sparse_count_table_equals_dense(rng):
    image, text = rng.integers(0, 30, 5000), rng.integers(0, 30, 5000)
    weights = rng.random(5000) * (rng.random(5000) < 0.9)  # some pairs weigh nothing
    table = sparse_count_table(image, text, 30, weights=weights)
    np.testing.assert_allclose(table.toarray(), count_table(image, text, 30, weights=weights))
    assert (table.data > 0).all(), "only cells with a positive count are stored"
    assert sparse_count_table([], [], 4).nnz == 0


def test_sparse_count_table_memory_follows_pairs_not_clusters(rng):
    table = sparse_count_table(rng.integers(0, 10**6, 1000), rng.integers(0, 10**6, 1000), 10**6)
    assert table.shape == (10**6, 10**6) and table.nnz <= 1000


# -- sparse assignment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,density", [(1, 1.0), (7, 0.3), (50, 0.05), (50, 1.0), (300, 0.01), (1000, 0.003), (2000, 0.001)]
)
def test_sparse_matching_is_the_dense_optimum_with_distinct_weights(rng, k, density):
    # Distinct random weights: the set of positive cells in the optimum is unique, so the two
    # solvers must pick exactly the same cells (the zero cells filling in are arbitrary in both).
    table = _random_table(rng, k, density, integer=False)
    dense = table.toarray()
    rows, cols, total = _dense_optimum(dense)
    sparse_rows, sparse_cols = max_weight_matching(table)
    assert sparse_rows.tolist() == list(range(k))
    assert sorted(sparse_cols.tolist()) == list(range(k)), "a permutation of the text clusters"
    assert dense[sparse_rows, sparse_cols].sum() == pytest.approx(total, rel=1e-12)
    assert _positive_cells(dense, sparse_rows, sparse_cols) == _positive_cells(dense, rows, cols)


@pytest.mark.parametrize("k,density", [(20, 0.2), (200, 0.02), (800, 0.005), (1500, 0.002)])
def test_sparse_matching_total_equals_dense_with_tied_counts(rng, k, density):
    table = _random_table(rng, k, density, integer=True)
    dense = table.toarray()
    _, _, total = _dense_optimum(dense)
    rows, cols = max_weight_matching(table)
    assert dense[rows, cols].sum() == total


def test_sparse_matching_unique_dense_optimum_is_reproduced(rng):
    # A full table with distinct weights: the whole assignment is unique, zero cells included.
    k = 60
    dense = rng.random((k, k)) + 0.01
    rows, cols, _ = _dense_optimum(dense)
    from scipy.sparse import csr_array

    sparse_rows, sparse_cols = max_weight_matching(csr_array(dense))
    assert sparse_rows.tolist() == rows.tolist() and sparse_cols.tolist() == cols.tolist()


def test_sparse_matching_degenerate_tables():
    from scipy.sparse import csr_array

    rows, cols = max_weight_matching(csr_array((4, 4)))  # nothing counted: any permutation, in order
    assert rows.tolist() == [0, 1, 2, 3] and cols.tolist() == [0, 1, 2, 3]
    # Greedy (10 first) would give 11; the optimum is 18. Rows 2 and 3 are empty, column 2 too.
    table = np.zeros((4, 4))
    table[:2, :2] = [[10, 9], [9, 1]]
    table[0, 3] = 0.5
    rows, cols = max_weight_matching(csr_array(table))
    assert table[rows, cols].sum() == 18
    assert sorted(cols.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="non-negative"):
        max_weight_matching(csr_array(np.array([[-1.0, 0.0], [0.0, 1.0]])))


@pytest.fixture
def solver_calls(monkeypatch):
    """Counts the calls to the sparse solver made through ``align_clusters``."""
    calls = []

    def counting(counts):
        calls.append(counts.shape)
        return max_weight_matching(counts)

    monkeypatch.setattr(align, "max_weight_matching", counting)
    return calls


def test_align_clusters_densifies_small_sparse_tables_and_solves_large_ones_sparse(rng, monkeypatch, solver_calls):
    image = rng.integers(0, 40, 3000)
    text = (image * 7 + (rng.random(3000) < 0.3) * rng.integers(0, 40, 3000)) % 40
    weights = rng.random(3000) + 0.5  # real-valued counts: the heaviest set of positive cells is unique
    dense = count_table(image, text, 40, weights=weights)
    sparse = sparse_count_table(image, text, 40, weights=weights)
    rows, cols, total = _dense_optimum(dense)

    small = align_clusters(sparse)  # 40 <= DENSE_MAX_CLUSTERS: densified, the Hungarian solver
    assert solver_calls == []
    assert small[0].tolist() == rows.tolist() and small[1].tolist() == cols.tolist()

    monkeypatch.setattr(align, "DENSE_MAX_CLUSTERS", 10)
    large = align_clusters(sparse)  # 40 > 10: the sparse solver
    assert solver_calls == [(40, 40)]
    assert dense[large].sum() == pytest.approx(total, rel=1e-12)
    assert _positive_cells(dense, *large) == _positive_cells(dense, rows, cols)


def test_prototypes_on_the_sparse_path_match_the_dense_optimum(rng, monkeypatch, solver_calls):
    images = rng.normal(size=(600, 8)).astype(np.float32)
    texts = (images + 0.5 * rng.normal(size=(600, 8))).astype(np.float32)
    # Whole multiplicities drawn from a wide range: cell totals differ, so the counted cells of the
    # optimal matching are one set, whichever solver finds it.
    weights = rng.integers(1, 10**6, 600)

    def matched(run):
        """Each prototype by its (image cluster, text cluster) match: support and both means."""
        return {
            (int(i), int(j)): (s, a, b)
            for i, j, s, a, b in zip(
                run.image_cluster, run.text_cluster, run.support, run.image_embeds, run.text_embeds, strict=False
            )
        }

    dense_run = prototypes_from_embeddings(images, texts, 40, rm_ratio=0.1, empty="drop", weights=weights)
    assert solver_calls == []
    monkeypatch.setattr(align, "DENSE_MAX_CLUSTERS", 5)
    sparse_run = prototypes_from_embeddings(images, texts, 40, rm_ratio=0.1, empty="drop", weights=weights)
    assert solver_calls == [(40, 40)]

    dense, sparse = matched(dense_run), matched(sparse_run)
    assert len(dense) > 20, "most matches share pairs: the comparison covers them"
    assert sparse.keys() == dense.keys(), "the same clusters matched to each other"
    for key, (support, image_mean, text_mean) in dense.items():
        assert sparse[key][0] == pytest.approx(support, rel=1e-9)
        np.testing.assert_allclose(sparse[key][1], image_mean, atol=1e-6)
        np.testing.assert_allclose(sparse[key][2], text_mean, atol=1e-6)


# -- k-means --------------------------------------------------------------------------------------


def test_kmeans_rows_equals_clustering_the_copy(rng):
    x = rng.normal(size=(500, 6)).astype(np.float32)
    rows = np.sort(rng.choice(500, 300, replace=False))
    w = rng.random(300) + 0.5
    a = kmeans(x, 5, weights=w, rows=rows, chunk=64)
    b = kmeans(x[rows], 5, weights=w)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-6)


def test_kmeans_subsample_fits_on_a_sample_and_assigns_every_point(rng):
    centres = rng.normal(size=(4, 5)) * 20
    x = (centres[np.arange(4000) % 4] + rng.normal(size=(4000, 5))).astype(np.float32)
    fit = kmeans(x, 4, max_points_per_centroid=250, seed=1)  # fits on 1000 of the 4000
    assert fit.labels.shape == (4000,)
    # Every point is labelled with its nearest centre and the inertia covers all points.
    dist = ((x[:, None, :] - fit.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(fit.labels, dist.argmin(1))
    assert fit.inertia == pytest.approx(dist.min(1).sum(), rel=1e-4)
    full = kmeans(x, 4, max_points_per_centroid=None, seed=1)
    assert fit.inertia <= 1.01 * full.inertia
    with pytest.raises(ValueError, match="max_points_per_centroid"):
        kmeans(x, 4, max_points_per_centroid=0)


def test_greedy_kmeans_plus_plus_seeds_spread_rows(rng):
    centres = rng.normal(size=(6, 3)) * 50
    x = (centres[np.arange(600) % 6] + rng.normal(size=(600, 3))).astype(np.float32)
    seeds = greedy_kmeans_plus_plus(x, 6, seed=0)
    assert all((x == s).all(axis=1).any() for s in seeds), "each seed is a data point"
    nearest_blob = ((seeds[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    assert sorted(nearest_blob.tolist()) == list(range(6)), "one seed per well-separated blob"
    # Points of weight 0 are never drawn; identical points do not break the draw.
    w = np.where(np.arange(600) % 6 == 0, 0.0, 1.0)
    seeds = greedy_kmeans_plus_plus(x, 5, weights=w, seed=1)
    assert not ((seeds[:, None, :] == x[w == 0][None]).all(-1)).any()
    assert greedy_kmeans_plus_plus(np.ones((10, 2), dtype=np.float32), 3).shape == (3, 2)


@pytest.mark.parametrize("init", INIT_METHODS)
def test_every_init_method_clusters_obvious_groups(init, rng):
    centres = rng.normal(size=(3, 4)) * 30
    x = (centres[np.arange(300) % 3] + rng.normal(size=(300, 4))).astype(np.float32)
    labels = kmeans(x, 3, init=init, restarts=2).labels
    assert len(set(map(tuple, np.stack([np.arange(300) % 3, labels], 1).tolist()))) == 3


# -- block-wise similarity and means -------------------------------------------------------------


def test_pair_similarity_blocks_equal_normalising_whole_tables(rng):
    images = rng.normal(size=(300, 16)).astype(np.float32) * 7
    texts = rng.normal(size=(500, 16)).astype(np.float32)
    pi, pt = rng.integers(0, 300, 2000), rng.integers(0, 500, 2000)
    whole = np.einsum("ij,ij->i", normalize(images)[pi], normalize(texts)[pt])
    np.testing.assert_array_equal(pair_similarity(images, texts, pi, pt, chunk=97), whole)


def test_group_means_blocks_equal_direct_means(rng):
    embeds = rng.normal(size=(50, 4)).astype(np.float32)
    pair_index = rng.integers(0, 50, 700)
    group = rng.integers(-1, 6, 700)
    weights = rng.random(700)
    means, totals = _group_means(embeds, pair_index, group, weights, 7, chunk=33)
    for g in range(6):
        member = group == g
        np.testing.assert_allclose(totals[g], weights[member].sum())
        np.testing.assert_allclose(
            means[g], np.average(embeds[pair_index[member]], axis=0, weights=weights[member]), rtol=1e-10
        )
    assert totals[6] == 0 and np.isnan(means[6]).all()
