"""Coreset baselines: right count, distinct real pairs, and the greedy rules on hand-checked examples."""

import numpy as np
import pytest

from pds_hf.baselines import BASELINES, herding, kcenter, select_pairs

LINE = [[0.0], [1.0], [2.0], [3.0], [10.0]]


@pytest.fixture
def embeds():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(300, 16)).astype(np.float32) * 5 + 2
    text = rng.normal(size=(300, 8)).astype(np.float32)
    return image, text


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("num_pairs", [1, 17, 300])
def test_requested_number_of_distinct_real_pairs(method, num_pairs, embeds):
    image, text = embeds
    chosen = select_pairs(method, image, text, num_pairs, seed=3)
    assert chosen.dtype == np.int64 and chosen.shape == (num_pairs,)
    assert len(set(chosen.tolist())) == num_pairs
    assert chosen.min() >= 0 and chosen.max() < len(image)
    # Each rule's first choice, on the image and text embeddings each scaled to unit length and joined.
    both = np.concatenate(
        [image / np.linalg.norm(image, axis=1, keepdims=True), text / np.linalg.norm(text, axis=1, keepdims=True)],
        axis=1,
    )
    if method == "herding":
        assert chosen[0] == np.linalg.norm(both - both.mean(axis=0), axis=1).argmin()
    if method == "kcenter" and num_pairs > 1:
        assert chosen[1] == np.linalg.norm(both - both[chosen[0]], axis=1).argmax()


def test_random_is_seeded(embeds):
    image, text = embeds
    first = select_pairs("random", image, text, 20, seed=1)
    assert np.array_equal(first, select_pairs("random", image, text, 20, seed=1))
    assert not np.array_equal(first, select_pairs("random", image, text, 20, seed=2))


def test_herding_by_hand():
    # Mean 3.2. Step 1: 3 is nearest. Step 2: sum nearest 6.4 -> 3 + 2. Step 3: sum nearest 9.6 -> 5 + 1.
    assert herding(LINE, 3).tolist() == [3, 2, 1]


def test_herding_first_pick_is_the_point_nearest_the_mean():
    points = np.array([[5.0, 5.0], [0.0, 0.0], [1.1, 0.9], [2.0, 2.0]])  # mean (2.025, 1.975)
    assert herding(points, 1).tolist() == [3]


def test_herding_running_mean_tracks_the_data_mean_better_than_random():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 4)) + np.array([3.0, -1.0, 0.0, 2.0])
    chosen = herding(data, 20)
    herding_error = np.linalg.norm(data[chosen].mean(axis=0) - data.mean(axis=0))
    random_errors = [
        np.linalg.norm(data[rng.choice(500, 20, replace=False)].mean(axis=0) - data.mean(axis=0)) for _ in range(20)
    ]
    assert herding_error < 0.1 * np.mean(random_errors)


def test_kcenter_by_hand():
    # From 0: farthest is 10; then 3 (distance 3); then 1 and 2 tie at distance 1 -> lowest index.
    assert kcenter(LINE, 4, first=0).tolist() == [0, 4, 3, 1]


def test_kcenter_first_point_is_seeded_and_covering_radius_beats_random():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(400, 3))
    first = kcenter(data, 10, seed=1)
    assert np.array_equal(first, kcenter(data, 10, seed=1))
    assert first[0] == np.random.default_rng(1).integers(400)

    def radius(chosen):
        return np.linalg.norm(data[:, None, :] - data[chosen][None], axis=2).min(axis=1).max()

    assert radius(first) < min(radius(rng.choice(400, 10, replace=False)) for _ in range(10))


def test_kcenter_never_repeats_duplicates():
    assert sorted(kcenter(np.zeros((5, 2)), 5, first=2).tolist()) == [0, 1, 2, 3, 4]
    assert sorted(herding(np.zeros((5, 2)), 5).tolist()) == [0, 1, 2, 3, 4]


def test_modalities_are_normalised_and_chosen_as_asked():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    assert np.array_equal(select_pairs("herding", image, text, 5, modality="image"), herding(unit(image), 5))
    assert np.array_equal(
        select_pairs("kcenter", image, text, 5, modality="text", seed=4), kcenter(unit(text), 5, seed=4)
    )
    both = np.concatenate([unit(image), unit(text)], axis=1)
    assert np.array_equal(select_pairs("herding", image, text, 5), herding(both, 5))
    # Scaling one modality changes nothing: each side is normalised first.
    assert np.array_equal(select_pairs("kcenter", image * 100, text, 5), select_pairs("kcenter", image, text, 5))


def test_zero_rows_stay_zero_and_bad_rows_are_named():
    # The package's one normaliser leaves an all-zero embedding at zero (no 0/0), so such a pair
    # can still be chosen; the one NaN check names the pairs to drop.
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(40, 6)), rng.normal(size=(40, 4))
    image[[5, 9]] = 0.0
    both = np.concatenate(
        [
            image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-30),
            text / np.linalg.norm(text, axis=1, keepdims=True),
        ],
        axis=1,
    )
    assert np.array_equal(select_pairs("kcenter", image, text, 40, seed=2), kcenter(both, 40, seed=2))
    image[[7, 30]] = np.inf
    with pytest.raises(ValueError, match=r"image_embeds holds NaN or inf at pair\(s\) \[7, 30\]"):
        select_pairs("herding", image, text, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="coreset"), "Unknown baseline"),
        (dict(modality="audio"), "Unknown modality"),
        (dict(num_pairs=0), "between 1 and"),
        (dict(num_pairs=11), "between 1 and"),
        (dict(num_pairs=2.5), "between 1 and"),
        (dict(text_embeds=np.zeros((9, 3))), "one of each per pair"),
        (dict(image_embeds=np.full((10, 3), np.nan)), "NaN"),
        (dict(image_embeds=np.zeros(10)), r"\(N, d\)"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    args = dict(method="random", image_embeds=np.zeros((10, 3)), text_embeds=np.zeros((10, 3)), num_pairs=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        select_pairs(
            args.pop("method"), args.pop("image_embeds"), args.pop("text_embeds"), args.pop("num_pairs"), **args
        )
