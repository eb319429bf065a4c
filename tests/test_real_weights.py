"""pds-hf against the real models of the paper, for whoever has their weights.

Deselected by default (``weights`` marker). Run where the Hub is reachable, or with both models in the
Hugging Face cache (then ``HF_HUB_OFFLINE=1`` works too)::

    python -m pytest -m "weights and not gpu"   # no GPU: slow, both models in float32 on the CPU
    python -m pytest -m weights                 # with a CUDA GPU: adds the fp16 run

A model that cannot be loaded fails the tests with its id in the message; it never skips them.
The images are made in code (:func:`pds_hf.demo.demo_dataset`): coloured shapes on plain backgrounds.
"""

import numpy as np
import pytest
import torch

import pds_hf
from pds_hf import DistillConfig
from pds_hf.demo import demo_dataset
from pds_hf.encode import load_encoder
from pds_hf.synthesize import load_unclip, synthesize_unclip

pytestmark = pytest.mark.weights

CLIP_ID = "openai/clip-vit-large-patch14"
UNCLIP_ID = "stabilityai/stable-diffusion-2-1-unclip-small"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Rows of demo_dataset (colour = i % 6, shape = i // 6 % 4): what each shows.
SHOWN = {
    0: "a red circle",
    6: "a red square",
    8: "a blue square",
    12: "a red triangle",
    13: "a green triangle",
    21: "a yellow cross",
}


def _load(model_id, loader):
    try:
        return loader()
    except Exception as err:  # any failure to load is the same news to the user: name the model
        reason = " ".join(f"{type(err).__name__}: {err}".split())
    pytest.fail(
        f"could not load {model_id} ({reason}). The `weights` tests need the real weights: run them "
        f"where huggingface.co is reachable, or download {model_id} into the Hugging Face cache first.",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def clip():
    return _load(CLIP_ID, lambda: load_encoder(CLIP_ID, device=DEVICE))


@pytest.fixture(scope="module")
def unclip():
    return _load(UNCLIP_ID, lambda: load_unclip(UNCLIP_ID, device=DEVICE, dtype=torch.float32))


@pytest.fixture(scope="module")
def shapes():
    return demo_dataset(24, side=224)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cosine(a, b):
    return _unit(np.asarray(a, dtype=np.float64)) @ _unit(np.asarray(b, dtype=np.float64)).T


@pytest.mark.parametrize("rows", [[0, 8, 13, 21], [0, 6, 12]], ids=["colour-and-shape", "shape-only"])
def test_clip_puts_each_shape_nearest_its_own_caption(clip, shapes, rows):
    images = [shapes[i]["image"] for i in rows]
    captions = [SHOWN[i] for i in rows]
    similarity = _cosine(clip.encode_images(images), clip.encode_texts(captions))
    assert similarity.argmax(axis=1).tolist() == list(range(len(rows))), (captions, similarity.round(3))


def test_unclip_decodes_an_embedding_into_an_image_clip_puts_near_its_source(clip, unclip, shapes):
    rows = [0, 8, 13]
    real = [shapes[i]["image"] for i in rows]
    real_embeds = clip.encode_images(real)
    decoded = synthesize_unclip(
        unclip, real_embeds, [""] * len(rows), num_inference_steps=12, batch_size=1, show_progress=False
    )
    similarity = _cosine(clip.encode_images(decoded), real_embeds)
    assert similarity.argmax(axis=1).tolist() == [0, 1, 2], similarity.round(3)


def _check_distilled(small, clip, shapes, num_pairs):
    assert len(small) == num_pairs
    assert small.features["image_embedding"].length == 768
    assert all(image.size == (224, 224) and image.mode == "RGB" for image in small["image"])
    known = {caption for row in shapes["caption"] for caption in row}
    assert set(small["caption"]) <= known
    # Each decoded image is nearest (by CLIP) to the image prototype it was decoded from, for most rows
    # (one in num_pairs by chance).
    similarity = _cosine(clip.encode_images(list(small["image"])), np.asarray(small["image_embedding"]))
    hits = int((similarity.argmax(axis=1) == np.arange(num_pairs)).sum())
    assert hits >= num_pairs - 1, similarity.round(3)


def test_distill_end_to_end_with_both_models(clip, unclip, shapes):
    config = DistillConfig(
        num_pairs=4,
        clip_model=clip,
        unclip_model=unclip,
        num_inference_steps=12,
        synthesis_batch_size=2,
        device=DEVICE,
        use_cache=False,
    )
    _check_distilled(pds_hf.distill(shapes, config), clip, shapes, 4)


@pytest.mark.gpu
def test_distill_end_to_end_fp16_on_gpu(clip, unclip, shapes):
    # Requesting clip and unclip first makes a missing model fail here with its id; the run itself
    # loads both by id, in float16 on the GPU, as the paper runs them.
    if not torch.cuda.is_available():
        pytest.fail(
            "the `gpu` tests need a CUDA GPU (torch.cuda.is_available() is False); "
            "run -m 'weights and not gpu' on this machine.",
            pytrace=False,
        )
    config = DistillConfig(
        num_pairs=6,
        clip_model=CLIP_ID,
        unclip_model=UNCLIP_ID,
        num_inference_steps=25,
        device="cuda",
        half_precision=True,
        use_cache=False,
    )
    small = pds_hf.distill(shapes, config)
    meta = pds_hf.metadata(small)
    assert meta["models"]["encoder"] == CLIP_ID and meta["models"]["unclip"] == UNCLIP_ID
    _check_distilled(small, clip, shapes, 6)
