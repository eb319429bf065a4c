"""Resumable stages: results on disk under explicit fingerprints, written atomically.

Every stage of a run writes its results into a folder named after a fingerprint of everything that
determines them (source dataset fingerprint, columns, model id and revision, parameters). A file
appears whole or not at all (written to a temporary name, then renamed), and a shard counts as done
only once its completion marker exists, so a killed run loses at most the shard it was writing;
starting it again with the same arguments skips the finished shards.

The cache lives in ``$PDS_HF_CACHE``, else ``$HF_HOME/pds_hf`` (``~/.cache/huggingface/pds_hf``). In a
multi-machine run it must be on a filesystem that every process sees.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1

# One version per stage, part of its fingerprint. Bump a stage's number whenever what it computes changes
# (a new k-means seeding, another filter), so that results saved by an older pds-hf are not read back as if
# they were this version's: that stage and every stage after it are recomputed.
STAGE_VERSIONS = {
    "encode": 2,  # 2: shard_size recorded in the stage, not in its key
    "embeddings": 1,
    # 2: greedy k-means++ seeding; 3: clusters on L2-normalised embeddings by default; 4: per-pair labels saved
    "select": 4,
    "synthesize": 1,
    "stream": 2,  # 2: embeddings saved in chunks of shard_size rows
}


def default_cache_dir() -> Path:
    """``$PDS_HF_CACHE``, else ``$HF_HOME/pds_hf``."""
    if os.environ.get("PDS_HF_CACHE"):
        return Path(os.environ["PDS_HF_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "pds_hf"


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    text = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def stage_key(stage: str, parent: str | None, *parts) -> str | None:
    """The fingerprint of ``stage`` (with its version) over its parent stage's key and its own settings.

    None (nothing cached) when the parent's identity is unknown, e.g. an encoder object without a
    ``fingerprint`` attribute.
    """
    return None if parent is None else fingerprint(stage, STAGE_VERSIONS[stage], parent, *parts)


def disk_full_error(path: Path, size: int | None, tmp: str) -> OSError:
    """The error for a full disk: which stage, which file, how many bytes it needed and how many are free."""
    written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
    needed = f"about {size} bytes" if size is not None else f"more than the {written} bytes written"
    free = shutil.disk_usage(path.parent).free
    return OSError(
        errno.ENOSPC,
        f"No space left on the device while writing {path.name} of stage "
        f"{path.parent.name!r} in {path.parent.parent}: it needed {needed} and {free} bytes "
        "are free. Free some space, or point the cache to a larger disk (cache_dir=... or "
        "PDS_HF_CACHE=...); finished files are kept, so the run resumes.",
    )


def _atomic_write(path: Path, write, size: int | None = None) -> None:
    """Write ``path`` whole or not at all; ``size`` (bytes, when known) is reported if the disk is full."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise disk_full_error(path, size, tmp) from err
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Stage:
    """One stage's folder of results: named array bundles, images and JSON, each with a marker."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r})"

    def __str__(self) -> str:
        """The folder, as log lines name it (``found in /.../encode-95005f...``)."""
        return str(self.path)

    def done(self, name: str) -> bool:
        return (self.path / f"{name}.done").exists()

    def mark_done(self, name: str) -> None:
        """Record that ``name`` is complete (an empty ``name.done`` file, written atomically), for a file the stage
        did not write through its own ``save_*`` methods (the embedding store writes its arrays itself)."""
        _atomic_write(self.path / f"{name}.done", lambda handle: handle.write(b""))

    def save_arrays(self, name: str, **arrays) -> None:
        _atomic_write(
            self.path / f"{name}.npz",
            lambda handle: np.savez(handle, **arrays),
            size=sum(np.asarray(value).nbytes for value in arrays.values()),
        )
        self.mark_done(name)

    def load_arrays(self, name: str, keys=None) -> dict:
        """The arrays saved as ``name``; only those named in ``keys`` (the others are not read) when given."""
        with np.load(self.path / f"{name}.npz", allow_pickle=False) as data:
            return {key: data[key] for key in (data.files if keys is None else keys)}

    def save_json(self, name: str, value) -> None:
        _atomic_write(self.path / f"{name}.json", lambda handle: handle.write(json.dumps(value).encode()))
        self.mark_done(name)

    def load_json(self, name: str):
        return json.loads((self.path / f"{name}.json").read_text())

    def save_image(self, name: str, image) -> None:
        _atomic_write(self.path / f"{name}.png", lambda handle: image.save(handle, format="PNG"))
        self.mark_done(name)

    def load_image(self, name: str):
        from PIL import Image

        with Image.open(self.path / f"{name}.png") as image:
            return image.copy()


class MemoryStage(Stage):
    """A stage kept in memory: used when caching is off or a model has no fingerprint."""

    def __init__(self):
        self.path = None
        self._items: dict[str, object] = {}

    def __repr__(self) -> str:
        return "MemoryStage()"

    def __str__(self) -> str:
        return "memory (not cached)"

    def done(self, name: str) -> bool:
        return name in self._items

    def save_arrays(self, name: str, **arrays) -> None:
        self._items[name] = dict(arrays)

    def load_arrays(self, name: str, keys=None) -> dict:
        items = self._items[name]
        return items if keys is None else {key: items[key] for key in keys}

    def save_json(self, name: str, value) -> None:
        self._items[name] = value

    def load_json(self, name: str):
        return self._items[name]

    def save_image(self, name: str, image) -> None:
        self._items[name] = image

    def load_image(self, name: str):
        return self._items[name]


def open_stage(cache_dir, stage: str, key: str | None, *, ranks=None, needs: str = "") -> Stage:
    """The on-disk :class:`Stage` ``<cache_dir>/<stage>-<key>``, or a :class:`MemoryStage` if
    ``cache_dir`` or ``key`` is None (nothing to resume from).

    With ``ranks`` of a run over several processes, which share their work through the cache, a stage in memory
    is an error that says what a disk stage takes: ``use_cache=True`` and ``needs`` (what makes ``key``).
    """
    if cache_dir is None or key is None:
        if ranks is not None and ranks.world > 1:
            raise ValueError(
                f"A run over {ranks.world} processes shares its work through the cache, which needs "
                f"use_cache=True{needs}, so that every process reads the same results."
            )
        return MemoryStage()
    return Stage(Path(cache_dir) / f"{stage}-{key}")


def log_found(stage: Stage, found: int, total: int, what: str) -> None:
    """Say what a stage takes from the cache: a finished result is reused, a partial one resumed.

    Args:
        stage: the stage that was looked in.
        found: how many of the ``total`` items were found done.
        total: the items this process owns.
        what: what an item is, in words (``"encoded image shards"``).

    Example:
        ```py
        >>> log_found(stage, 3, 3, "encoded image shards")  # Reusing the finished result: all 3 encoded ...
        >>> log_found(stage, 1, 3, "encoded image shards")  # Resuming: 1 of 3 encoded image shards found ...
        ```
    """
    if found and found == total:
        logger.info("Reusing the finished result: all %d %s found in %s.", total, what, stage)
    elif found:
        logger.info("Resuming: %d of %d %s found in %s.", found, total, what, stage)


def dtype_key(dtype: str) -> tuple:
    """The part of a stage key that says how embeddings are stored: nothing for float32, so that the keys of runs
    from before the option stay valid."""
    return () if dtype == "float32" else (dtype,)


class StageTimer:
    """Wall-clock seconds per stage, for the summary and the dataset card."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # seconds spent in stages nested inside each open stage

    @contextmanager
    def __call__(self, name: str):
        """Time ``name``. A stage opened inside another is counted in its own name only, not also in the outer
        one, so that the seconds add up to the wall time."""
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._inner.pop()
            if self._inner:
                self._inner[-1] += elapsed
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed - inner, 3)
            logger.debug("%s took %.2fs", name, elapsed - inner)
