"""The student's heads: architecture, loss going down, and learning what the pairs teach."""

import numpy as np
import pytest
import torch

from pds_hf.evaluation.features import RetrievalSet
from pds_hf.evaluation.settings import TrainSettings
from pds_hf.evaluation.train import ContrastiveHeads, ProjectionHead, score, train_heads

HIDDEN, IMAGE_DIM, TEXT_DIM, NOISE = 8, 24, 16, 0.3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a fixture of conftest.py


def hidden_variable_world(seed=0):
    """Image and text features that share a hidden variable z: x = zA + noise, t = zB + noise.

    Returns ``make_pairs(n)`` for training pairs and a test set of 50 images with 2 captions each (each
    caption with its own noise), all from the same A and B.
    """
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(HIDDEN, IMAGE_DIM)), rng.normal(size=(HIDDEN, TEXT_DIM))

    def make_pairs(n):
        z = rng.normal(size=(n, HIDDEN))
        return z @ a + NOISE * rng.normal(size=(n, IMAGE_DIM)), z @ b + NOISE * rng.normal(size=(n, TEXT_DIM))

    z = rng.normal(size=(50, HIDDEN))
    owner = np.repeat(np.arange(50), 2)
    test = RetrievalSet(
        z @ a + NOISE * rng.normal(size=(50, IMAGE_DIM)), z[owner] @ b + NOISE * rng.normal(size=(100, TEXT_DIM)), owner
    )
    return make_pairs, test


def test_projection_head_shape_residual_and_layer_norm():
    head = ProjectionHead(7, 5, dropout=0.0)
    out = head(torch.randn(3, 7))
    assert out.shape == (3, 5)
    # LayerNorm output: zero mean, unit variance per row (default affine init).
    assert torch.allclose(out.mean(dim=1), torch.zeros(3), atol=1e-5)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.bias.zero_()
    x = torch.randn(3, 7)
    # With the second Linear zeroed only the residual path is left.
    assert torch.allclose(head(x), head.layer_norm(head.projection(x)), atol=1e-6)


def test_text_head_maps_into_the_image_space_and_only_it_trains_by_default():
    heads = ContrastiveHeads(IMAGE_DIM, TEXT_DIM)
    assert heads.image_head is None
    assert heads.text_head.projection.out_features == IMAGE_DIM
    assert [name for name, _ in heads.named_parameters() if "logit_scale" in name] == []
    assert heads.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="train_image_head"):
        ContrastiveHeads(IMAGE_DIM, TEXT_DIM, embed_dim=12)
    both = ContrastiveHeads(IMAGE_DIM, TEXT_DIM, embed_dim=12, train_image_head=True, learn_temperature=True)
    assert both.image_head is not None and isinstance(both.logit_scale, torch.nn.Parameter)


def test_training_reduces_the_loss():
    make_pairs, _ = hidden_variable_world()
    image_feats, text_feats = make_pairs(200)
    result = train_heads(image_feats, text_feats, epochs=10, batch_size=64, seed=0, device="cpu")
    assert len(result.losses) == 10
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.selected_epoch == 10 and result.validation_history == []


def test_true_pairs_beat_shuffled_pairs_by_a_wide_margin():
    make_pairs, test = hidden_variable_world()
    image_feats, text_feats = make_pairs(200)
    shuffled = text_feats[np.random.default_rng(1).permutation(len(text_feats))]
    good = score(train_heads(image_feats, text_feats, epochs=10, batch_size=64, seed=0, device="cpu").heads, test)
    bad = score(train_heads(image_feats, shuffled, epochs=10, batch_size=64, seed=0, device="cpu").heads, test)
    # Chance mean recall here is about 11 (R@1/5/10 of 2/10/20 over 50 images, 100 captions).
    assert good["mean"] > 80
    assert bad["mean"] < 40
    assert good["mean"] - bad["mean"] > 40


@pytest.mark.parametrize(
    "options",
    [
        dict(train_image_head=True),
        dict(learn_temperature=True),
        dict(train_image_head=True, embed_dim=8, learn_temperature=True),
    ],
)
def test_options_train_too(options):
    make_pairs, test = hidden_variable_world()
    image_feats, text_feats = make_pairs(200)
    result = train_heads(image_feats, text_feats, epochs=10, batch_size=64, seed=0, device="cpu", **options)
    assert result.losses[-1] < result.losses[0]
    assert score(result.heads, test)["mean"] > 50
    assert result.heads.logit_scale.item() <= np.log(100) + 1e-6


def test_same_seed_same_result_other_seed_other_result():
    make_pairs, _ = hidden_variable_world()
    image_feats, text_feats = make_pairs(100)
    first = train_heads(image_feats, text_feats, epochs=3, seed=5, device="cpu").losses
    again = train_heads(image_feats, text_feats, epochs=3, seed=5, device="cpu").losses
    other = train_heads(image_feats, text_feats, epochs=3, seed=6, device="cpu").losses
    assert first == again and first != other


@pytest.mark.parametrize(
    "how",
    [
        dict(epochs=6, lr=0.2, lr_decay_epoch=4, batch_size=128),
        dict(settings=TrainSettings(epochs=6, lr=0.2, lr_decay_epoch=4, batch_size=128)),
        # Keywords override the settings object.
        dict(settings=TrainSettings(epochs=2, lr=0.5, lr_decay_epoch=4, batch_size=128), epochs=6, lr=0.2),
    ],
    ids=["keywords", "settings", "settings-and-keywords"],
)
def test_learning_rate_decays_at_the_given_epoch(monkeypatch, how):
    seen = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    make_pairs, _ = hidden_variable_world()
    image_feats, text_feats = make_pairs(20)
    train_heads(image_feats, text_feats, device="cpu", **how)
    assert seen == pytest.approx([0.2, 0.2, 0.2, 0.02, 0.02, 0.02])


def test_unknown_training_settings_are_named():
    with pytest.raises(TypeError, match=r"Unknown training setting\(s\) \['epoch'\]"):
        train_heads(np.zeros((2, 4)), np.zeros((2, 4)), epoch=3)
    with pytest.raises(TypeError, match="settings must be a TrainSettings, got dict"):
        train_heads(np.zeros((2, 4)), np.zeros((2, 4)), settings={"epochs": 3})


@pytest.mark.parametrize(
    "image_feats, text_feats, message",
    [
        (np.zeros((3, 4)), np.zeros((2, 4)), "one of each per training pair"),
        (np.zeros((0, 4)), np.zeros((0, 4)), "No training pairs"),
        (np.full((2, 4), np.nan), np.zeros((2, 4)), "NaN"),
    ],
)
def test_bad_training_features_are_refused(image_feats, text_feats, message):
    with pytest.raises(ValueError, match=message):
        train_heads(image_feats, text_feats, epochs=1)
