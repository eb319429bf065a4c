"""``python -m pds_hf``: the ``pds-hf`` command (see :mod:`pds_hf.cli`)."""

import sys

from .cli import main

sys.exit(main())
