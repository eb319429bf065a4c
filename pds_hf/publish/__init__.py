"""Publishing a distilled set: a Hub dataset repo with a dataset card, on the Hub or in a local folder.

One module per job, each importing only those before it (no cycles):

- :mod:`~pds_hf.publish.layout`: the file names (``data/train-*.parquet``, ``README.md``, ``preview.png``),
  :class:`PublishError` and the checks every path shares;
- :mod:`~pds_hf.publish.license`: which license the card declares (:func:`resolve_license`);
- :mod:`~pds_hf.publish.card`: the dataset card (:func:`dataset_card`) and the run record read back from it
  (:func:`metadata_from_card`);
- :mod:`~pds_hf.publish.preview`: ``preview.png`` (:func:`preview_grid`);
- :mod:`~pds_hf.publish.folder`: the repo written into a folder (:func:`save_to_folder`);
- :mod:`~pds_hf.publish.hub`: the checks before a push (:func:`prepare_push`) and the one-commit upload
  (:func:`push_to_hub`).

License: ``license=`` (CLI ``--license``) when given; else the license already declared by the card on the
repository (or in the folder being replaced); else the license declared by the source dataset's card
(``source=``, a Hub id or a local folder). ``push_to_hub`` refuses to upload when none of these is known;
``save_to_folder`` writes ``license: unknown`` and says so in the card.

Example:
    ```py
    >>> from pds_hf.publish import push_to_hub, save_to_folder
    >>> save_to_folder(small, "./flickr30k-pds-100", license="other", source="nlphuji/flickr30k")
    >>> push_to_hub(small, "me/flickr30k-pds-100", license="other", source="nlphuji/flickr30k")
    ```
"""

from .card import TEMPLATE_PATH, dataset_card, metadata_from_card
from .folder import save_to_folder
from .hub import PushTarget, prepare_push, push_to_hub
from .layout import DATA_DIR, PREVIEW, README, SPLIT, PublishError
from .license import LicenseChoice, resolve_license
from .preview import preview_grid

__all__ = [
    "DATA_DIR",
    "PREVIEW",
    "README",
    "SPLIT",
    "TEMPLATE_PATH",
    "LicenseChoice",
    "PublishError",
    "PushTarget",
    "dataset_card",
    "metadata_from_card",
    "prepare_push",
    "preview_grid",
    "push_to_hub",
    "resolve_license",
    "save_to_folder",
]
