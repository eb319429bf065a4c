"""The assignment pass each process makes over its slice: faiss on the CPU, torch where a GPU is (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest

from pds_hf.cluster import assign, assign_torch, centre_index


def brute_force(centres, points, normalize):
    """Nearest centre by explicit float64 distances (independent of faiss and torch)."""
    points = np.asarray(points, dtype=np.float64)
    if normalize:
        points = points / np.linalg.norm(points, axis=1, keepdims=True)
    distances = ((points[:, None, :] - np.asarray(centres, dtype=np.float64)[None]) ** 2).sum(axis=2)
    return distances.argmin(axis=1), distances.min(axis=1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("normalize", [True, False])
def test_torch_and_faiss_assign_each_row_to_its_nearest_centre(dtype, normalize):
    rng = np.random.default_rng(3)
    x = (3 * rng.normal(size=(500, 8))).astype(dtype)
    centres = rng.normal(size=(7, 8)).astype(np.float32)
    if normalize:
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = rng.permutation(500)[:300]
    want, want_distance = brute_force(centres, x[rows], normalize)
    for labels, distances in (
        assign(centre_index(centres), x, rows, normalize=normalize, chunk=64),
        assign_torch(centres, x, rows, normalize=normalize, chunk=64, device="cpu"),
    ):
        np.testing.assert_array_equal(labels, want)
        np.testing.assert_allclose(distances, want_distance, rtol=1e-4, atol=1e-4)
