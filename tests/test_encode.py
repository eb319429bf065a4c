"""Step 1: the pluggable encoder (CLIP, SigLIP, any object) and its output checks."""

import numpy as np
import pytest
from PIL import Image

from pds_hf.encode import TransformersEncoder, check_embeddings, load_encoder


def test_loaded_clip_model_with_processor(shapes_ds):
    import pds_hf
    from pds_hf.testing import tiny_clip_model

    model, processor = tiny_clip_model(seed=1)
    small = pds_hf.distill(
        shapes_ds, num_pairs=3, clip_model=model, clip_processor=processor, synthesis="none", device="cpu"
    )
    assert len(small) == 3
    assert pds_hf.metadata(small)["models"]["encoder"] == "CLIPModel"


def test_features_are_projected_and_not_normalised():
    from pds_hf.testing import tiny_clip_model

    model, processor = tiny_clip_model()
    encoder = TransformersEncoder(model, processor)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    out = encoder.encode_images([image])
    expected = model.get_image_features(**processor(images=[image], return_tensors="pt"))
    expected = getattr(expected, "pooler_output", expected)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-5)
    assert not np.isclose(np.linalg.norm(out), 1.0)


def test_siglip_text_is_padded_to_max_length():
    # SigLIP pools the last position, so a caption's embedding must not depend on its batch-mates.
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    from pds_hf.testing import model_sizes, tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    tokenizer.model_max_length = 24
    config = SiglipConfig(
        text_config=model_sizes(vocab_size=len(tokenizer), max_position_embeddings=24),
        vision_config=model_sizes(image_size=32, patch_size=8),
    )
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    encoder = TransformersEncoder(SiglipModel(config), processor)
    alone = encoder.encode_texts(["a cat"])
    together = encoder.encode_texts(["a cat", "a much longer caption about a dog"])
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)
    assert encoder.encode_images([Image.new("RGB", (50, 20))]).shape == (1, 32)


def test_load_encoder_accepts_objects_and_rejects_others():
    class Mine:
        def encode_images(self, images):
            return np.zeros((len(images), 4))

        def encode_texts(self, texts):
            return np.zeros((len(texts), 4))

    mine = Mine()
    assert load_encoder(mine) is mine
    with pytest.raises(TypeError, match="get_image_features"):
        load_encoder(object())


def test_model_without_processor_says_how_to_fix():
    from pds_hf.testing import tiny_clip_model

    model, _ = tiny_clip_model()
    with pytest.raises(ValueError, match="pass processor="):
        TransformersEncoder(model)


def test_check_embeddings_shape_and_values():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_embeddings(np.zeros(3), what="image", expected_rows=3)
    with pytest.raises(ValueError, match=r"dataset row\(s\) \[7\]"):
        check_embeddings(np.array([[0.0], [np.inf]]), what="text", expected_rows=2, row_ids=[3, 7])
    with pytest.raises(ValueError, match=r"input shard 2 row\(s\) \[7\]"):
        check_embeddings(
            np.array([[0.0], [np.inf]]), what="text", expected_rows=2, row_ids=[3, 7], rows_of="input shard 2"
        )
    with pytest.raises(ValueError, match=r"shape \(2, 0\); expected \(2, d\) with d > 0"):
        check_embeddings(np.zeros((2, 0)), what="image", expected_rows=2)
