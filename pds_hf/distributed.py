"""Splitting work across processes and machines (Accelerate, torchrun), or none.

Launched with ``accelerate launch`` or ``torchrun``, ``WORLD_SIZE`` is set and Accelerate's
``PartialState`` gives this process's rank (NCCL on GPUs, gloo on CPUs). Work is split by index:
process ``r`` of ``w`` takes the shards ``s`` with ``s % w == r``. Results meet on disk (see
:mod:`pds_hf.cache`), so nothing is padded or duplicated when the work does not divide evenly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Ranks:
    """This process's place in the run.

    Attributes:
        rank: index of this process, 0 to ``world - 1``.
        world: number of processes.
        state: Accelerate's ``PartialState`` when distributed, else None.
    """

    rank: int = 0
    world: int = 1
    state: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether shard ``index`` is this process's work."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def device(self):
        """This process's accelerator when distributed (``cuda:<local rank>``), else None."""
        return None if self.state is None else self.state.device


def current_ranks() -> Ranks:
    """The :class:`Ranks` of this process: a single one unless a launcher set ``WORLD_SIZE`` > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    import torch
    from accelerate import PartialState

    # Without CUDA, Accelerate only sets up a process group when told the run is on CPU (gloo).
    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(rank=state.process_index, world=state.num_processes, state=state)
