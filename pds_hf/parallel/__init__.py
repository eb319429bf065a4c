"""Steps 2-6 across processes: each process works on its slice of the pairs (issue 20).

:func:`choose_on_slices` is called by every process of a run launched with ``accelerate launch`` or ``torchrun``
and returns on each the one-process result; :class:`Comm` holds the collectives (gloo) and counts the bytes sent.
"""

from .comm import Comm
from .select import (
    aligned_bounds,
    bounds,
    choose_on_slices,
    kept_on_slices,
    pair_slice,
    sortable_keys,
)

__all__ = [
    "Comm",
    "aligned_bounds",
    "bounds",
    "choose_on_slices",
    "kept_on_slices",
    "pair_slice",
    "sortable_keys",
]
