"""Resuming after a crash, and the same distilled set from 1 or 2 processes."""

import json
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
def config(tiny_run, tmp_path):
    return DistillConfig(
        **tiny_run,
        num_pairs=6,
        shard_size=20,
        encode_batch_size=20,
        synthesis_batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )


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
    for a, b in zip(result["image"], reference["image"], strict=False):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2


def test_changing_a_parameter_changes_the_fingerprint(shapes_ds, tiny_encoder, config):
    pds_hf.distill(shapes_ds, config, synthesis="none")
    counting = CountingEncoder(tiny_encoder)
    counting.fingerprint = "another-model"
    pds_hf.distill(shapes_ds, config, clip_model=counting, synthesis="none")
    assert counting.images == 60
    stages = {
        p.name.split("-")[0] for p in (config.cache_dir and __import__("pathlib").Path(config.cache_dir)).iterdir()
    }
    assert stages == {"encode", "select"}


def test_models_without_fingerprint_are_not_cached(shapes_ds, tiny_encoder, config):
    class Plain:
        def encode_images(self, images):
            return tiny_encoder.encode_images(images)

        def encode_texts(self, texts):
            return tiny_encoder.encode_texts(texts)

    pds_hf.distill(shapes_ds, config, clip_model=Plain(), synthesis="none")
    assert not os.path.exists(config.cache_dir)


# Runs the CLI with StableUnCLIPImg2ImgPipeline.__call__ wrapped to record, per process, the seed of each
# image it decodes (seed + pair index), in rank-<RANK>.jsonl under $PDS_TEST_CALLS.
SPY_CLI = """
import json, os, sys

from diffusers import StableUnCLIPImg2ImgPipeline

decode = StableUnCLIPImg2ImgPipeline.__call__


def recording(self, *args, **kwargs):
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(os.environ["PDS_TEST_CALLS"], f"rank-{rank}.jsonl"), "a") as log:
        log.write(json.dumps([generator.initial_seed() for generator in kwargs["generator"]]) + "\\n")
    return decode(self, *args, **kwargs)


StableUnCLIPImg2ImgPipeline.__call__ = recording
from pds_hf.cli import main

sys.exit(main())
"""


def _run_cli(args, cache, calls, launcher=()):
    calls.mkdir()
    spy = calls / "spy_cli.py"
    spy.write_text(SPY_CLI)
    env = dict(os.environ, PDS_HF_CACHE=str(cache), OMP_NUM_THREADS="1", PDS_TEST_CALLS=str(calls))
    cmd = [
        *(launcher or [sys.executable]),
        str(spy),
        "distill",
        "--demo",
        "--num-pairs",
        "8",
        "--steps",
        "2",
        "--seed",
        "42",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _decoded_by_rank(calls):
    """{rank: sorted pair indices it decoded}, from the spy's records."""
    out = {}
    for path in calls.glob("rank-*.jsonl"):
        seeds = [seed for line in path.read_text().splitlines() for seed in json.loads(line)]
        out[int(path.stem.split("-")[1])] = sorted(seed - 42 for seed in seeds)
    return out


def test_two_processes_give_the_same_distilled_set(tmp_path):
    """accelerate launch with 2 CPU processes (gloo) == 1 process."""
    one = _run_cli(["--output", str(tmp_path / "one")], tmp_path / "cache-one", tmp_path / "calls-one")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "on 1 process(es)" in one.stdout
    assert _decoded_by_rank(tmp_path / "calls-one") == {0: list(range(8))}
    # `accelerate launch --cpu` starts a single process (multi-CPU needs mpirun); --multi_gpu starts N
    # processes with torchrun, and pds_hf picks the gloo backend when there is no GPU.
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    two = _run_cli(["--output", str(tmp_path / "two")], tmp_path / "cache-two", tmp_path / "calls-two", launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stdout
    # Each process decoded the images it owns, and only those: even indices on rank 0, odd on rank 1.
    assert _decoded_by_rank(tmp_path / "calls-two") == {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}

    a = load_dataset(str(tmp_path / "one"), split="train")
    b = load_dataset(str(tmp_path / "two"), split="train")
    assert len(a) == len(b) == 8
    assert a["caption"] == b["caption"]
    np.testing.assert_allclose(np.asarray(a["image_embedding"]), np.asarray(b["image_embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a["text_embedding"]), np.asarray(b["text_embedding"]), atol=1e-5)
    for x, y in zip(a["image"], b["image"], strict=False):
        assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 2


def test_a_finished_run_says_it_reuses_its_results(shapes_ds, tiny_run, tmp_path, caplog):
    import logging

    settings = dict(tiny_run, num_pairs=4, cache_dir=str(tmp_path))
    pds_hf.distill(shapes_ds, **settings)
    with caplog.at_level(logging.INFO, logger="pds_hf"):
        pds_hf.distill(shapes_ds, **settings)
    assert "Resuming" not in caplog.text
    assert "Reusing the finished result: all 1 encoded image shards" in caplog.text
    assert "Reusing the finished result: all 4 synthesized images" in caplog.text
