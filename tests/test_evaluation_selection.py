"""Epoch selection uses the validation set and never the test set."""

import numpy as np
import pytest

import pds_hf.evaluation.train as train_module
from pds_hf.evaluation import evaluate_features
from pds_hf.evaluation.features import RetrievalSet

SETTINGS = dict(epochs=20, eval_every=5, batch_size=64, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a fixture of conftest.py


def world(seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(8, 24)), rng.normal(size=(8, 16))

    def pairs(n, captions_per_image=1, name="test"):
        z = rng.normal(size=(n, 8))
        owner = np.repeat(np.arange(n), captions_per_image)
        return RetrievalSet(
            z @ a + 0.5 * rng.normal(size=(n, 24)),
            z[owner] @ b + 0.5 * rng.normal(size=(len(owner), 16)),
            owner,
            name=name,
        )

    train = pairs(120)
    return train.image_feats, train.text_feats, pairs(30, name="validation"), pairs(50, 2, name="test")


def test_the_selector_only_ever_scores_the_validation_set(monkeypatch):
    train_image, train_text, validation, test = world()
    calls = []
    original = train_module.retrieval_metrics

    def spy(similarity, caption_to_image, **kwargs):
        calls.append("test" if len(caption_to_image) == test.num_captions else "validation")
        return original(similarity, caption_to_image, **kwargs)

    monkeypatch.setattr(train_module, "retrieval_metrics", spy)
    report = evaluate_features(train_image, train_text, test, validation=validation, runs=2, **SETTINGS)
    # Per run: validation at epochs 5, 10, 15, 20, then the test set once, after selection.
    assert calls == ["validation"] * 4 + ["test"] + ["validation"] * 4 + ["test"]
    assert [[epoch for epoch, _ in history] for history in report.validation_histories] == [[5, 10, 15, 20]] * 2


def test_selected_epoch_is_the_best_on_validation_and_its_test_numbers_are_reported():
    train_image, train_text, validation, test = world()
    report = evaluate_features(train_image, train_text, test, validation=validation, runs=2, seed=3, **SETTINGS)
    for run, (history, epoch) in enumerate(zip(report.validation_histories, report.selected_epochs, strict=True)):
        means = [metrics["mean"] for _, metrics in history]
        assert epoch == history[int(np.argmax(means))][0]
        # Training is deterministic: retraining for exactly `epoch` epochs gives the reported test numbers.
        replay = evaluate_features(
            train_image, train_text, test, validation=None, runs=1, seed=3 + run, **{**SETTINGS, "epochs": epoch}
        )
        assert replay.runs[0] == report.runs[run]


def test_selection_does_not_depend_on_the_test_set():
    train_image, train_text, validation, test = world()
    # The same test images with their captions shuffled among images: a selector looking at the test set
    # would see very different recalls at each epoch.
    scrambled = RetrievalSet(
        test.image_feats,
        test.text_feats,
        np.random.default_rng(7).permutation(test.caption_to_image),
        name="scrambled test",
    )
    honest = evaluate_features(train_image, train_text, test, validation=validation, runs=3, **SETTINGS)
    other = evaluate_features(train_image, train_text, scrambled, validation=validation, runs=3, **SETTINGS)
    assert honest.selected_epochs == other.selected_epochs
    assert honest.validation_histories == other.validation_histories
    assert honest.mean["mean"] > other.mean["mean"] + 30


def test_without_validation_the_last_epoch_is_reported_and_said():
    train_image, train_text, _, test = world()
    report = evaluate_features(train_image, train_text, test, validation=None, runs=2, **SETTINGS)
    assert report.selected_epochs == [20, 20]
    assert report.validation_histories == [[], []]
    assert "no validation split" in report.to_markdown() and "last epoch (20)" in report.to_markdown()


def test_validating_on_the_test_set_is_refused():
    train_image, train_text, _, test = world()
    copy = RetrievalSet(test.image_feats.copy(), test.text_feats.copy(), test.caption_to_image.copy(), name="val")
    for validation in (test, copy):
        with pytest.raises(ValueError, match="validation set is the test set"):
            evaluate_features(train_image, train_text, test, validation=validation, runs=1, **SETTINGS)


def test_mismatched_feature_sizes_name_the_fix():
    train_image, train_text, validation, test = world()
    with pytest.raises(ValueError, match="encoder the set was distilled with"):
        evaluate_features(train_image, train_text[:, :8], test, validation=validation, runs=1, **SETTINGS)
    with pytest.raises(TypeError, match="Unknown training setting"):
        evaluate_features(train_image, train_text, test, runs=1, learning_rate=0.1)
