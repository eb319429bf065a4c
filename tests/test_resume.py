"""Resuming after a crash, and the same distilled set from 1 or 2 processes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_dataset

import pds_hf
from pds_hf import DistillConfig


class Interrupted(RuntimeError):
    pass


class CountingEncoder:
    """Wraps an encoder: counts what it encodes and can fail on a given call, like a killed job."""

    def __init__(self, inner, fail_on_image_call=None):
        self.inner, self.fail_on = inner, fail_on_image_call
        self.fingerprint = "counting-" + inner.fingerprint  # same identity as the model it wraps
        self.images = self.texts = self.image_calls = 0

    def encode_images(self, images):
        self.image_calls += 1
        if self.image_calls == self.fail_on:
            raise Interrupted("killed")
        self.images += len(images)
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        self.texts += len(texts)
        return self.inner.encode_texts(texts)


class CountingPipe:
    """Wraps an unCLIP pipeline the same way (attributes pass through)."""

    def __init__(self, inner, fail_on_call=None):
        self.inner, self.fail_on, self.calls, self.images = inner, fail_on_call, 0, 0
        self.fingerprint = "counting-" + inner.fingerprint

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to(self, device):
        self.inner.to(device)
        return self

    def __call__(self, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise Interrupted("killed")
        self.images += len(kwargs["prompt"])
        return self.inner(**kwargs)


@pytest.fixture
def config(tiny_encoder, tiny_pipe, tmp_path):
    return DistillConfig(num_pairs=6, clip_model=tiny_encoder, unclip_model=tiny_pipe, num_inference_steps=2,
                         image_size=32, device="cpu", shard_size=20, encode_batch_size=20, synthesis_batch_size=2,
                         cache_dir=str(tmp_path / "cache"))


def test_interrupted_encoding_resumes_without_reencoding_the_first_shard(shapes_ds, tiny_encoder, config):
    reference = pds_hf.distill(shapes_ds, config, use_cache=False, synthesis="none")

    crashing = CountingEncoder(tiny_encoder, fail_on_image_call=2)  # dies during the second shard
    with pytest.raises(Interrupted):
        pds_hf.distill(shapes_ds, config, clip_model=crashing, synthesis="none")
    assert crashing.images == 20

    resumed = CountingEncoder(tiny_encoder)
    result = pds_hf.distill(shapes_ds, config, clip_model=resumed, synthesis="none")
    assert resumed.images == 60 - 20, "the finished shard is read back, not encoded again"
    np.testing.assert_array_equal(np.asarray(result["image_embedding"]), np.asarray(reference["image_embedding"]))
    assert result["caption"] == reference["caption"]

    again = CountingEncoder(tiny_encoder)
    pds_hf.distill(shapes_ds, config, clip_model=again, synthesis="none")
    assert again.images == again.texts == 0, "a finished run is not recomputed"


def test_interrupted_synthesis_resumes_with_the_same_images(shapes_ds, tiny_pipe, config):
    reference = pds_hf.distill(shapes_ds, config, use_cache=False)

    crashing = CountingPipe(tiny_pipe, fail_on_call=3)  # 2 batches of 2 images saved, then killed
    with pytest.raises(Interrupted):
        pds_hf.distill(shapes_ds, config, unclip_model=crashing)
    resumed = CountingPipe(tiny_pipe)
    result = pds_hf.distill(shapes_ds, config, unclip_model=resumed)
    assert resumed.images == 6 - 4
    for a, b in zip(result["image"], reference["image"]):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2


def test_changing_a_parameter_changes_the_fingerprint(shapes_ds, tiny_encoder, config):
    pds_hf.distill(shapes_ds, config, synthesis="none")
    counting = CountingEncoder(tiny_encoder)
    counting.fingerprint = "another-model"
    pds_hf.distill(shapes_ds, config, clip_model=counting, synthesis="none")
    assert counting.images == 60
    stages = {p.name.split("-")[0] for p in (config.cache_dir and __import__("pathlib").Path(config.cache_dir)).iterdir()}
    assert stages == {"encode", "select"}


def test_models_without_fingerprint_are_not_cached(shapes_ds, tiny_encoder, config):
    class Plain:
        def encode_images(self, images):
            return tiny_encoder.encode_images(images)

        def encode_texts(self, texts):
            return tiny_encoder.encode_texts(texts)

    pds_hf.distill(shapes_ds, config, clip_model=Plain(), synthesis="none")
    assert not os.path.exists(config.cache_dir)


def _run_cli(args, cache, launcher=()):
    env = dict(os.environ, PDS_HF_CACHE=str(cache), OMP_NUM_THREADS="1")
    cmd = [*launcher, "-m", "pds_hf.cli", "distill", "--demo", "--num-pairs", "8", "--steps", "2", *args]
    if not launcher:
        cmd = [sys.executable, *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_give_the_same_distilled_set(tmp_path):
    """accelerate launch with 2 CPU processes (gloo) == 1 process."""
    one = _run_cli(["--output", str(tmp_path / "one")], tmp_path / "cache-one")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "on 1 process(es)" in one.stdout
    # `accelerate launch --cpu` starts a single process (multi-CPU needs mpirun); --multi_gpu starts N
    # processes with torchrun, and pds_hf picks the gloo backend when there is no GPU.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = _run_cli(["--output", str(tmp_path / "two")], tmp_path / "cache-two", launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout

    a = load_dataset(str(tmp_path / "one"), split="train")
    b = load_dataset(str(tmp_path / "two"), split="train")
    assert len(a) == len(b) == 8
    assert a["caption"] == b["caption"]
    np.testing.assert_allclose(np.asarray(a["image_embedding"]), np.asarray(b["image_embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a["text_embedding"]), np.asarray(b["text_embedding"]), atol=1e-5)
    for x, y in zip(a["image"], b["image"]):
        assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 2
    # Both processes did synthesis work: each saved the images it owns (even and odd indices).
    images = sorted(p.name for p in (tmp_path / "cache-two").glob("synthesize-*/image-*.png"))
    assert len(images) == 8
