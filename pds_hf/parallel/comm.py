"""The few collectives steps 2-6 need across processes, on NumPy arrays, with the bytes counted.

Every call is made by every process of the run, in the same order (as ``torch.distributed`` requires). The
collectives run on a gloo group of their own, made with a timeout, so that no process waits for ever on one
that failed: CPU tensors work on it whatever the run's own backend (NCCL on GPUs), and the arrays here are
small (per-cluster sums, a sample of k-means points, one row per greedy step).

:attr:`Comm.bytes_sent` counts what this process hands to the collectives (the payload, not the transport's
copies: a ring all-reduce of ``B`` bytes moves about ``2 B (W - 1) / W`` on the wire), so that a benchmark can
say how much one run sends.
"""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np

# One gloo group per timeout, made once per run by every process together (as Ranks.barrier's).
GROUPS: dict = {}


class Comm:
    """Collectives over the processes of ``ranks``, on NumPy arrays.

    Args:
        ranks: a :class:`pds_hf.distributed.Ranks`; with ``world == 1`` every collective returns its input.
        timeout: seconds a collective waits for the other processes before failing.

    Attributes:
        bytes_sent: payload bytes this process has handed to collectives so far.
        calls: number of collectives made.
        marks: ``(step, seconds since the Comm was made, bytes_sent)`` at the end of each step of
            :func:`pds_hf.parallel.choose_on_slices` (for benchmarks).

    Example:
        ```py
        >>> comm = Comm(current_ranks())
        >>> comm.sum(np.array([1.0, 2.0]))  # on 2 processes: array([2., 4.])
        ```
    """

    def __init__(self, ranks, timeout: float = 600.0):
        self.rank, self.world = int(ranks.rank), int(ranks.world)
        self.timeout = float(timeout)
        self.bytes_sent = 0
        self.calls = 0
        self.group = None
        self.started = time.perf_counter()
        self.marks: list[tuple[str, float, int]] = []
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise RuntimeError(
                    f"{self.world} processes but torch.distributed is not set up: launch with `accelerate launch` "
                    "or `torchrun` (or call torch.distributed.init_process_group) before selecting on slices."
                )
            if self.timeout not in GROUPS:
                GROUPS[self.timeout] = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout))
            self.group = GROUPS[self.timeout]

    def mark(self, step: str) -> None:
        """Note that ``step`` ended now (time and bytes sent so far, in :attr:`marks`)."""
        self.marks.append((step, time.perf_counter() - self.started, self.bytes_sent))

    def _count(self, *arrays, nbytes: int = 0) -> None:
        self.calls += 1
        self.bytes_sent += nbytes + sum(int(np.asarray(a).nbytes) for a in arrays)

    def _all_reduce(self, array, op: str) -> np.ndarray:
        """``array`` reduced element-wise over the processes with ``torch.distributed.ReduceOp.<op>``."""
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return array.copy()
        import torch
        import torch.distributed as dist

        self._count(array)
        tensor = torch.from_numpy(array.copy())
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op), group=self.group)
        return tensor.numpy()

    def sum(self, array) -> np.ndarray:
        """Element-wise sum of ``array`` over the processes (float64 / int64 stay exact for whole numbers)."""
        return self._all_reduce(array, "SUM")

    def max(self, array) -> np.ndarray:
        """Element-wise maximum of ``array`` over the processes."""
        return self._all_reduce(array, "MAX")

    def broadcast(self, array, src: int = 0) -> np.ndarray:
        """``array`` as process ``src`` holds it; the others pass an array of the same shape and dtype."""
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return array
        import torch
        import torch.distributed as dist

        if self.rank == src:
            self._count(array)
        else:
            self.calls += 1
        tensor = torch.from_numpy(array.copy())
        dist.broadcast(tensor, src=src, group=self.group)
        return tensor.numpy()

    def all_gather(self, array) -> list[np.ndarray]:
        """Each process's ``array`` (any length along the first axis, the rest of the shape and the dtype the
        same on every process), in rank order, on every process."""
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return [array]

        lengths = self.max_lengths(len(array))
        longest = int(lengths.max())
        padded = np.zeros((longest,) + array.shape[1:], dtype=array.dtype)
        padded[: len(array)] = array
        return [part[: int(n)] for part, n in zip(self.all_gather_same(padded), lengths, strict=True)]

    def all_gather_same(self, array) -> list[np.ndarray]:
        """Each process's ``array`` (the same shape and dtype on every process), in rank order, on every process."""
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return [array]
        import torch
        import torch.distributed as dist

        self._count(array)
        tensor = torch.from_numpy(array.copy())
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(out, tensor, group=self.group)
        return [part.numpy() for part in out]

    def gather(self, array, dst: int = 0) -> list[np.ndarray] | None:
        """Each process's ``array`` (lengths may differ), in rank order, on process ``dst`` only (None elsewhere).

        The parts on ``dst`` are views of one receive buffer (``world x longest`` rows): no further copy.
        """
        array = np.ascontiguousarray(array)
        if self.world == 1:
            return [array]
        import torch
        import torch.distributed as dist

        lengths = self.max_lengths(len(array))
        longest = int(lengths.max())
        if len(array) < longest:
            padded = np.zeros((longest,) + array.shape[1:], dtype=array.dtype)
            padded[: len(array)] = array
        else:
            padded = array
        if self.rank != dst:
            self._count(padded)
        else:
            self.calls += 1
        tensor = torch.from_numpy(padded)
        received = np.empty((self.world,) + padded.shape, dtype=padded.dtype) if self.rank == dst else None
        out = [torch.from_numpy(part) for part in received] if self.rank == dst else None
        dist.gather(tensor, gather_list=out, dst=dst, group=self.group)
        if self.rank != dst:
            return None
        return [part[: int(n)] for part, n in zip(received, lengths, strict=True)]

    def exchange(self, parts: list) -> list[np.ndarray]:
        """All-to-all: ``parts[q]`` goes to process ``q``; returns what each process sent to this one, in rank
        order. The parts share their dtype and trailing shape; lengths may differ."""
        parts = [np.ascontiguousarray(p) for p in parts]
        if self.world == 1:
            return parts
        import torch
        import torch.distributed as dist

        send_lengths = np.array([len(p) for p in parts], dtype=np.int64)
        receive_lengths = np.empty(self.world, dtype=np.int64)
        lengths = torch.from_numpy(receive_lengths)
        dist.all_to_all_single(lengths, torch.from_numpy(send_lengths.copy()), group=self.group)
        self._count(send_lengths)
        tail = parts[0].shape[1:]
        send = np.concatenate(parts) if parts else np.zeros((0,) + tail)
        self._count(nbytes=send.nbytes - parts[self.rank].nbytes)  # what stays here is not sent
        receive = np.empty((int(receive_lengths.sum()),) + tail, dtype=send.dtype)
        out = torch.from_numpy(receive)
        dist.all_to_all_single(
            out,
            torch.from_numpy(send),
            output_split_sizes=receive_lengths.tolist(),
            input_split_sizes=send_lengths.tolist(),
            group=self.group,
        )
        bounds = np.concatenate([[0], np.cumsum(receive_lengths)])
        return [receive[bounds[q] : bounds[q + 1]] for q in range(self.world)]

    def max_lengths(self, length: int) -> np.ndarray:
        """Every process's ``length``, in rank order (one small all-gather)."""
        if self.world == 1:
            return np.array([length], dtype=np.int64)
        import torch
        import torch.distributed as dist

        mine = torch.tensor([int(length)], dtype=torch.int64)
        out = [torch.empty(1, dtype=torch.int64) for _ in range(self.world)]
        self._count(mine.numpy())
        dist.all_gather(out, mine, group=self.group)
        return np.array([int(t) for t in out], dtype=np.int64)

    def best(self, score, index, *, largest: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the best ``(score, index)`` over the processes: the highest (``largest``) or lowest score,
        ties to the lower index. ``score`` and ``index`` are ``(M,)`` arrays of this process's candidates."""
        score = np.asarray(score, dtype=np.float64)
        index = np.asarray(index, dtype=np.int64)
        if self.world == 1:
            return score, index
        # One message: the indices (below 2**53) travel exactly as float64 beside the scores.
        parts = np.stack(self.all_gather_same(np.stack([score, index.astype(np.float64)])))
        scores, indices = parts[:, 0], parts[:, 1].astype(np.int64)
        key = -scores if largest else scores
        # lexsort: last key first; the best score, then the lower index.
        order = np.lexsort((indices, key), axis=0)[0]
        columns = np.arange(scores.shape[1])
        return scores[order, columns], indices[order, columns]
