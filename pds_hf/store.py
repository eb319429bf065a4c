"""Embeddings on disk: the image and caption embeddings of a run, written once and read back as memory maps.

The encode stage (and the merge of a stream's shards) saves its results in shards. Clustering needs them as two
arrays, one row per distinct image and per distinct caption. On a disk stage (a :class:`~pds_hf.cache.Stage`
with a path) they are written once into ``image_embeds.npy`` and ``text_embeds.npy`` inside the stage folder,
a shard at a time (peak memory: one shard), under temporary names that are renamed when complete, then marked
done. Every later run with the same fingerprint opens them with ``np.load(..., mmap_mode="r")``: steps 2-6 read
them a block at a time and the operating system pages them in and out. On a
:class:`~pds_hf.cache.MemoryStage` (caching off) they are ordinary in-memory arrays, as before.

``float16`` storage (``DistillConfig.embedding_dtype``) halves the disk and the page cache; see
benchmarks/perf/RESULTS.md for its effect on the prototypes.
"""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np

EMBEDDING_DTYPES = ("float32", "float16")

# The arrays of the store, in the order :func:`open_embeddings` and :func:`write_embeddings` return them, and the
# name of the marker that says they are complete.
_NAMES = ("image_embeds", "text_embeds")
_MARKER = "embeddings"


def _names(dtype: str) -> tuple[tuple[str, ...], str]:
    """The store's file names and marker for ``dtype``: one store per dtype in the same stage folder, so that the
    stage's key need not hold the dtype (the encoded shards are float32 either way) and a float16 run of an
    encoded source only writes its own store. float32 keeps the names it always had."""
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}.")
    if dtype == "float32":
        return _NAMES, _MARKER
    return tuple(f"{name}.{dtype}" for name in _NAMES), f"{_MARKER}-{dtype}"


def open_embeddings(stage, dtype: str = "float32"):
    """The stored ``(image_embeds, text_embeds)`` of ``stage`` in ``dtype`` as read-only memory maps, or None when
    not written (or when ``stage`` is in memory)."""
    names, marker = _names(dtype)
    if stage.path is None or not stage.done(marker):
        return None
    return tuple(np.load(stage.path / f"{name}.npy", mmap_mode="r") for name in names)


def write_embeddings(stage, shapes, fill, *, dtype: str = "float32"):
    """Write the image and caption embeddings of ``stage`` once, then return them (memory maps on disk).

    Args:
        stage: a :class:`~pds_hf.cache.Stage` (files in its folder) or a :class:`~pds_hf.cache.MemoryStage` (in
            memory, nothing kept).
        shapes: ``((Ni, d), (Nt, d))``, the shapes of the image and caption embeddings.
        fill: called once with the two empty arrays; writes every row, a shard at a time (values are cast to
            ``dtype`` on assignment). An exception leaves no file and no marker behind.
        dtype: ``"float32"`` or ``"float16"``: how the values are stored.

    Returns:
        ``(image_embeds, text_embeds)``: ``np.memmap`` opened read-only on a disk stage, else ``np.ndarray``.

    Raises:
        OSError: the disk is full (the message names the stage, the file and the bytes it needed).

    Example:
        ```py
        >>> from pds_hf.cache import open_stage
        >>> from pds_hf.store import write_embeddings
        >>> stage = open_stage("/tmp/cache", "encode", "0123abcd")
        >>> def fill(images, texts):
        ...     images[:] = 1.0
        ...     texts[:] = 2.0
        >>> image_embeds, text_embeds = write_embeddings(stage, ((4, 8), (20, 8)), fill, dtype="float16")
        >>> image_embeds.dtype, type(image_embeds).__name__
        (dtype('float16'), 'memmap')
        ```
    """
    names, marker = _names(dtype)
    shapes = [tuple(int(n) for n in shape) for shape in shapes]
    if stage.path is None:
        targets = [np.empty(shape, dtype=dtype) for shape in shapes]
        fill(*targets)
        return tuple(targets)
    stage.path.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        targets = []
        for name, shape in zip(names, shapes, strict=False):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.npy.", suffix=".tmp", dir=stage.path)
            os.close(fd)
            temps.append(tmp)
            targets.append(_allocate(stage, name, tmp, shape, dtype))
        fill(*targets)
        for target in targets:
            target.flush()
        del targets
        for name, tmp in zip(names, temps, strict=False):
            os.replace(tmp, stage.path / f"{name}.npy")
        temps = []
        stage.mark_done(marker)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return open_embeddings(stage, dtype)


def _allocate(stage, name: str, tmp: str, shape, dtype: str):
    """A writable ``.npy`` memory map at ``tmp`` whose blocks are reserved on the disk now, so that a full disk is
    an error here (naming the stage and the size) rather than a crash while writing through the map."""
    from .cache import disk_full_error

    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate") and target.size:
        with open(tmp, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(tmp))
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise disk_full_error(stage.path / f"{name}.npy", os.path.getsize(tmp), tmp) from err
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
    return target
