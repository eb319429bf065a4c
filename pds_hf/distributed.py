"""Splitting work across processes and machines (Accelerate, torchrun), or none.

Launched with ``accelerate launch`` or ``torchrun``, ``WORLD_SIZE`` is set and Accelerate's
``PartialState`` gives this process's rank (NCCL on GPUs, gloo on CPUs). Work is split by index:
process ``r`` of ``w`` takes the shards ``s`` with ``s % w == r``. Results meet on disk (see
:mod:`pds_hf.cache`), so nothing is padded or duplicated when the work does not divide evenly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BARRIER_TIMEOUT = 7200.0
# The gloo group each barrier timeout waits on, made once per run by every process together.
_BARRIER_GROUPS: dict = {}


@dataclass
class Ranks:
    """This process's place in the run.

    Attributes:
        rank: index of this process, 0 to ``world - 1``.
        world: number of processes.
        state: Accelerate's ``PartialState`` when distributed, else None.
        timeout: seconds :meth:`barrier` waits for the other processes before failing.
    """

    rank: int = 0
    world: int = 1
    state: object = None
    timeout: float = BARRIER_TIMEOUT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether shard ``index`` is this process's work."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        """Wait until every process gets here, for at most :attr:`timeout` seconds.

        The wait runs on a gloo group of its own (NCCL has no barrier that reports who is late), made
        with that timeout; a single process returns at once.

        Raises:
            TimeoutError: when a process has not arrived in time, saying which setting to raise.
        """
        if self.state is None:
            return
        from datetime import timedelta

        import torch.distributed as dist

        timeout = timedelta(seconds=self.timeout)
        try:
            if self.timeout not in _BARRIER_GROUPS:  # every process gets here (together): a group can be made
                _BARRIER_GROUPS[self.timeout] = dist.new_group(backend="gloo", timeout=timeout)
            dist.monitored_barrier(group=_BARRIER_GROUPS[self.timeout], timeout=timeout)
        except RuntimeError as err:
            raise TimeoutError(
                f"Process {self.rank} of {self.world} waited more than {self.timeout:g} s for the other processes "
                f"({err}). If another process is still working (clustering many pairs on the main process takes "
                "long), raise DistillConfig.barrier_timeout (--barrier-timeout); otherwise look for a process that "
                "failed."
            ) from err

    @property
    def device(self):
        """This process's accelerator when distributed (``cuda:<local rank>``), else None."""
        return None if self.state is None else self.state.device


def current_ranks(timeout: float = BARRIER_TIMEOUT) -> Ranks:
    """The :class:`Ranks` of this process: a single one unless a launcher set ``WORLD_SIZE`` > 1.

    Args:
        timeout: seconds a :meth:`Ranks.barrier` waits for the other processes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(timeout=timeout)
    import torch
    from accelerate import PartialState

    # Without CUDA, Accelerate only sets up a process group when told the run is on CPU (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(rank=state.process_index, world=state.num_processes, state=state, timeout=timeout)
