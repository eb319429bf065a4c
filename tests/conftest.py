# Shared fixtures: tiny random models and small datasets, built once per test session.
import io

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_encoder():
    from pds_hf.testing import tiny_clip_encoder

    return tiny_clip_encoder(seed=0)


@pytest.fixture(scope="session")
def tiny_pipe():
    from pds_hf.testing import tiny_unclip_pipeline

    return tiny_unclip_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_run(tiny_encoder, tiny_pipe):
    """``DistillConfig`` settings of a run with the tiny models on the CPU: 2 denoising steps, 32x32 images."""
    return dict(clip_model=tiny_encoder, unclip_model=tiny_pipe, num_inference_steps=2, image_size=32, device="cpu")


@pytest.fixture(scope="session")
def shapes_ds():
    """One row per image, two captions each (the nlphuji/flickr30k layout), 60 images."""
    from pds_hf.demo import demo_dataset

    return demo_dataset(60, side=32)


@pytest.fixture(scope="session")
def shapes_pairs_ds(shapes_ds):
    """The same pairs, one row per pair (image repeated for each caption)."""
    from datasets import Dataset, Features, Image, Value

    images, captions = [], []
    for row in shapes_ds:
        for caption in row["caption"]:
            images.append(row["image"])
            captions.append(caption)
    return Dataset.from_dict(
        {"image": images, "caption": captions}, features=Features({"image": Image(), "caption": Value("string")})
    )


def png_bytes(colour=(255, 0, 0), size=(8, 8)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session", autouse=True)
def pds_cache(tmp_path_factory):
    """Keep the stage cache of every run in this session out of the user's home."""
    import os

    path = tmp_path_factory.mktemp("pds-cache")
    old = os.environ.get("PDS_HF_CACHE")
    os.environ["PDS_HF_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PDS_HF_CACHE", None)
    else:
        os.environ["PDS_HF_CACHE"] = old


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def small_run():
    """``pds-hf distill`` flags of a small run on the CPU: 4 pairs of 32x32 images."""
    return ["--num-pairs", "4", "--image-size", "32", "--device", "cpu"]


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: the evaluation heads are tiny, so more threads only add waiting,
    badly so on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_evaluation_cache():
    """Evaluation's in-memory feature cache, empty when the test starts and emptied when it ends."""
    from pds_hf.evaluation import clear_memory_cache

    clear_memory_cache()
    yield
    clear_memory_cache()


# Hub test server wiring
# ----------------------
# Exposes the `hub` fixture (tests/hub_server.py): an in-process Hub-compatible server on 127.0.0.1 that
# huggingface_hub and datasets are pointed at for the duration of a test, with fresh caches under tmp_path.
# No environment variable has to be set before imports: the fixture patches huggingface_hub.constants,
# datasets.config and the environment itself, and restores them afterwards.
try:  # tests/ imported as a package (tests/__init__.py present)
    from .hub_server import hub  # noqa: F401
except ImportError:  # rootdir-relative import mode: tests/ itself is on sys.path
    from hub_server import hub  # noqa: F401
