"""``python -m pds_hf``: the ``pds-hf`` command (see :mod:`pds_hf.cli`)."""

from .cli import console

console()
