"""What reaches the unCLIP pipeline: prompts, negative prompt, guidance, noise level, embeddings, seeds.

A spy wraps the tiny pipeline from ``pds_hf.testing`` and records every ``__call__`` before handing it on,
so these tests see exactly the arguments a real Stable unCLIP pipeline would get.
"""

import numpy as np
import pytest

import pds_hf
from pds_hf import DistillConfig
from pds_hf.synthesize import synthesize_unclip


class SpyPipe:
    """An unCLIP pipeline that records the arguments of each call (other attributes pass through)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to(self, *args, **kwargs):
        self.inner.to(*args, **kwargs)
        return self

    def __call__(self, **kwargs):
        record = dict(kwargs)
        record["image_embeds"] = kwargs["image_embeds"].detach().cpu().numpy().copy()
        record["seeds"] = [generator.initial_seed() for generator in kwargs["generator"]]
        self.calls.append(record)
        return self.inner(**kwargs)

    def joined(self, name):
        """One argument over all calls, batches joined in call order."""
        return [value for call in self.calls for value in call[name]]


@pytest.fixture
def protos():
    return np.random.default_rng(3).normal(size=(5, 32)).astype(np.float32)


PROMPTS = ["a red circle", "a blue square", "a green triangle", "a small star", "a big dot"]


def test_synthesize_unclip_passes_each_argument_per_pair(tiny_pipe, protos):
    spy = SpyPipe(tiny_pipe)
    images = synthesize_unclip(
        spy,
        protos,
        PROMPTS,
        negative_prompt="blurry",
        num_inference_steps=2,
        guidance_scale=3.5,
        noise_level=17,
        seed=100,
        batch_size=2,
        image_size=None,
        indices=[3, 5, 7, 9, 11],
        show_progress=False,
    )
    assert len(images) == 5
    assert [len(call["prompt"]) for call in spy.calls] == [2, 2, 1]
    assert spy.joined("prompt") == PROMPTS
    assert spy.joined("negative_prompt") == ["blurry"] * 5
    np.testing.assert_array_equal(np.concatenate([call["image_embeds"] for call in spy.calls]), protos)
    assert spy.joined("seeds") == [103, 105, 107, 109, 111], "seed + global index of each pair"
    for call in spy.calls:
        assert call["guidance_scale"] == 3.5 and call["noise_level"] == 17 and call["num_inference_steps"] == 2


def test_no_negative_prompt_means_the_empty_one(tiny_pipe, protos):
    spy = SpyPipe(tiny_pipe)
    args = dict(num_inference_steps=2, image_size=None, show_progress=False, batch_size=3)
    none = synthesize_unclip(spy, protos[:3], PROMPTS[:3], negative_prompt=None, **args)
    assert [call["negative_prompt"] for call in spy.calls] == [None], "no list of None reaches the tokenizer"
    empty = synthesize_unclip(tiny_pipe, protos[:3], PROMPTS[:3], negative_prompt="", **args)
    for a, b in zip(none, empty, strict=False):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_distill_sends_the_prototypes_and_captions_it_returns(shapes_ds, tiny_pipe, tiny_run):
    spy = SpyPipe(tiny_pipe)
    config = DistillConfig(
        **dict(tiny_run, unclip_model=spy),
        num_pairs=6,
        guidance_scale=2.5,
        noise_level=30,
        negative_prompt="text, watermark, blurry",
        seed=7,
        synthesis="unclip",
        synthesis_batch_size=4,
        use_cache=False,
    )
    small = pds_hf.distill(shapes_ds, config)
    assert [len(call["prompt"]) for call in spy.calls] == [4, 2]
    assert spy.joined("prompt") == small["caption"]
    np.testing.assert_array_equal(
        np.concatenate([call["image_embeds"] for call in spy.calls]),
        np.asarray(small["image_embedding"], dtype=np.float32),
    )
    assert spy.joined("seeds") == [7, 8, 9, 10, 11, 12]
    assert spy.joined("negative_prompt") == ["text, watermark, blurry"] * 6
    for call in spy.calls:
        assert call["guidance_scale"] == 2.5 and call["noise_level"] == 30 and call["num_inference_steps"] == 2

    spy.calls.clear()
    pds_hf.distill(shapes_ds, config, negative_prompt=None, num_pairs=3)
    assert [call["negative_prompt"] for call in spy.calls] == [None]
