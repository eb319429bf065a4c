"""The student's frozen image network: every accepted kind, timm wiring, and cache identities."""

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pds_hf.evaluation.student import (
    Student,
    encoder_cache_key,
    load_student,
    module_digest,
    tiny_student,
)


def images(n=3, size=(40, 30)):
    return [Image.new("RGB", size, (40 * i, 100, 200)) for i in range(n)]


class ShapeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 5)
        self.shapes = []

    def forward(self, pixel_values):
        self.shapes.append(tuple(pixel_values.shape))
        return self.linear(pixel_values.mean(dim=(2, 3)))


def test_module_gets_a_normalised_tensor_batch_and_is_frozen():
    module = ShapeRecorder()
    student = load_student(module, image_size=24, device="cpu")
    feats = student.encode_images(images(3))
    assert feats.shape == (3, 5) and feats.dtype == np.float32
    assert module.shapes == [(3, 3, 24, 24)]
    assert not any(p.requires_grad for p in module.parameters()) and not module.training
    assert student.name == "ShapeRecorder" and student.cache_key.startswith("module:ShapeRecorder:")


def test_module_with_a_custom_transform():
    module = ShapeRecorder()

    def transform(image):
        return torch.zeros(3, 8, 8)

    load_student(module, transform=transform, device="cpu").encode_images(images(2))
    assert module.shapes == [(2, 3, 8, 8)]


def test_callable_gets_pil_images():
    received = []

    def features(batch):
        received.append(batch)
        return [[float(np.asarray(image).mean())] for image in batch]

    student = load_student(features)
    assert student.encode_images(images(2)).shape == (2, 1)
    assert all(isinstance(image, Image.Image) for image in received[0])
    assert student.cache_key is None  # an anonymous function has no identity to cache under
    assert load_student(features, name="mean-colour").cache_key == "callable:mean-colour"


def test_encoder_as_student_uses_encode_images():
    class Encoder:
        name = "my-encoder"
        model = torch.nn.Linear(2, 2)

        def encode_images(self, batch):
            return np.ones((len(batch), 4))

        def encode_texts(self, texts):
            return np.ones((len(texts), 4))

    student = load_student(Encoder())
    assert student.encode_images(images(2)).shape == (2, 4)
    assert student.name == "my-encoder" and student.cache_key.startswith("encoder:my-encoder:")


def test_wrong_output_shape_is_an_error():
    student = load_student(lambda batch: np.zeros((len(batch) + 1, 3)), name="broken")
    with pytest.raises(ValueError, match="broken"):
        student.encode_images(images(2))


def test_student_and_unknown_kinds():
    student = tiny_student()
    assert load_student(student) is student
    with pytest.raises(TypeError, match="timm model name"):
        load_student(42)
    with pytest.raises(TypeError, match="only apply to a timm model name"):
        load_student(ShapeRecorder(), num_classes=0)


def test_tiny_student_is_seeded():
    first, again, other = tiny_student(0), tiny_student(0), tiny_student(1)
    batch = images(2)
    assert isinstance(first, Student) and first.encode_images(batch).shape == (2, 16)
    np.testing.assert_array_equal(first.encode_images(batch), again.encode_images(batch))
    assert first.cache_key == again.cache_key != other.cache_key


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="pip install timm"):
        load_student("nf_resnet50")


def test_timm_name_uses_pretrained_weights_and_timm_data_config(monkeypatch):
    calls = {}
    network = ShapeRecorder()

    def create_model(name, pretrained, **kwargs):
        calls["create"] = (name, pretrained, kwargs)
        return network

    def resolve_data_config(args, model=None):
        calls["resolved_for"] = model
        return {"input_size": (3, 12, 12), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

    def create_transform(**config):
        calls["transform_config"] = config
        return lambda image: torch.ones(config["input_size"])

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_data_config = resolve_data_config
    timm.data.create_transform = create_transform
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)

    student = load_student("nf_resnet50", num_classes=0, device="cpu")
    assert calls["create"] == ("nf_resnet50", True, {"num_classes": 0})
    assert calls["resolved_for"] is network
    assert calls["transform_config"]["input_size"] == (3, 12, 12)
    assert student.encode_images(images(2)).shape == (2, 5)
    assert network.shapes == [(2, 3, 12, 12)]
    assert student.name == "nf_resnet50" and '"timm": "nf_resnet50"' in student.cache_key


def test_module_digest_follows_the_weights():
    module = torch.nn.Linear(3, 2)
    before = module_digest(module)
    assert module_digest(module) == before
    with torch.no_grad():
        module.weight.add_(1.0)
    assert module_digest(module) != before


def test_encoder_cache_key_tells_same_named_models_apart():
    class Encoder:
        name = "pds-hf/tiny-random-clip"

        def __init__(self, seed):
            torch.manual_seed(seed)
            self.model = torch.nn.Linear(4, 4)

    assert encoder_cache_key(Encoder(0)) == encoder_cache_key(Encoder(0)) != encoder_cache_key(Encoder(1))

    class Anonymous:
        def encode_texts(self, texts):
            return np.zeros((len(texts), 2))

    assert encoder_cache_key(Anonymous()) is None
