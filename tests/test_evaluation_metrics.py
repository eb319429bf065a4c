import numpy as np
import pytest
import torch

from pds_hf.evaluation.metrics import METRIC_NAMES, retrieval_metrics, retrieval_ranks


def test_perfect_retrieval_scores_100():
    result = retrieval_metrics(np.eye(20), np.arange(20))
    assert list(result) == list(METRIC_NAMES)
    assert all(value == 100.0 for value in result.values())


def test_reversed_retrieval_scores_0_at_k_below_the_candidates():
    # The right answer always scores lowest: rank 19 of 20.
    result = retrieval_metrics(-np.eye(20), np.arange(20))
    assert all(value == 0.0 for value in result.values())


def test_ranks_count_wrong_candidates_above():
    sim = np.array(
        [
            [0.1, 0.5, 0.4],  # image 0: its caption 0 is last
            [0.2, 0.8, 0.3],  # image 1: its caption 1 is first
            [0.3, 0.7, 0.6],  # image 2: its caption 2 is behind caption 1
        ]
    )
    caption_ranks, image_ranks = retrieval_ranks(sim, [0, 1, 2])
    # Caption 0: images 1 and 2 score 0.2, 0.3 > 0.1. Captions 1 and 2: their image scores highest.
    assert caption_ranks.tolist() == [2, 0, 0]
    assert image_ranks.tolist() == [2, 0, 1]
    result = retrieval_metrics(sim, [0, 1, 2], ks=(1, 2))
    assert result["IR@1"] == pytest.approx(200 / 3)
    assert result["TR@1"] == pytest.approx(100 / 3)
    assert result["TR@2"] == pytest.approx(200 / 3)


def test_ties_count_against_the_model():
    # All scores equal: every wrong candidate ties with the right one and is ranked above it.
    sim = np.zeros((4, 8))
    owner = np.repeat(np.arange(4), 2)
    caption_ranks, image_ranks = retrieval_ranks(sim, owner)
    assert caption_ranks.tolist() == [3] * 8  # the 3 other images
    assert image_ranks.tolist() == [6] * 4  # the 6 captions of other images
    result = retrieval_metrics(sim, owner, ks=(1, 5, 10))
    assert result["IR@1"] == 0.0 and result["TR@1"] == 0.0
    assert result["IR@5"] == 100.0  # 3 wrong images < 5
    assert result["TR@5"] == 0.0 and result["TR@10"] == 100.0


def test_a_single_tie_with_a_wrong_candidate_loses_rank_1():
    sim = np.array([[1.0, 1.0], [0.0, 0.5]])
    caption_ranks, image_ranks = retrieval_ranks(sim, [0, 1])
    # Caption 1 scores 1.0 with the wrong image 0 and 0.5 with its own: rank 1. Image 0 ties caption 0
    # (right) with caption 1 (wrong): rank 1.
    assert caption_ranks.tolist() == [0, 1]
    assert image_ranks.tolist() == [1, 0]


def test_any_caption_of_an_image_counts_for_text_retrieval():
    # 2 images x 3 captions. Image 0 ranks its caption 2 first but its captions 0 and 1 last.
    sim = np.array(
        [
            [0.0, 0.1, 0.9, 0.5, 0.4, 0.3],
            [0.1, 0.0, 0.2, 0.9, 0.8, 0.7],
        ]
    )
    owner = [0, 0, 0, 1, 1, 1]
    caption_ranks, image_ranks = retrieval_ranks(sim, owner)
    assert image_ranks.tolist() == [0, 0]
    assert caption_ranks.tolist() == [1, 0, 0, 0, 0, 0]
    result = retrieval_metrics(sim, owner, ks=(1,))
    assert result == {"IR@1": pytest.approx(500 / 6), "TR@1": 100.0, "mean": pytest.approx((500 / 6 + 100) / 2)}


def test_other_captions_of_the_same_image_do_not_push_the_best_one_down():
    # Image 0's own captions 0 and 1 both beat everything else; its best one has rank 0.
    sim = np.array([[0.9, 0.9, 0.1], [0.0, 0.0, 0.5]])
    _, image_ranks = retrieval_ranks(sim, [0, 0, 1])
    assert image_ranks.tolist() == [0, 0]


def test_accepts_torch_tensors():
    assert retrieval_metrics(torch.eye(5), torch.arange(5))["mean"] == 100.0


def test_mean_is_the_average_of_the_six_recalls():
    rng = np.random.default_rng(0)
    result = retrieval_metrics(rng.normal(size=(30, 60)), np.repeat(np.arange(30), 2))
    assert result["mean"] == pytest.approx(np.mean([result[name] for name in METRIC_NAMES[:-1]]))


@pytest.mark.parametrize(
    "sim, owner, message",
    [
        (np.zeros((2, 3)), [0, 1], "shape"),
        (np.zeros((2, 2)), [0, 2], "outside"),
        (np.zeros((2, 2)), [0, 0], "no caption"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1], "NaN"),
        (np.zeros(3), [0, 1, 2], "matrix"),
    ],
)
def test_bad_inputs_are_refused(sim, owner, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sim, owner)
