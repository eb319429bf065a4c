"""pds-hf: learning-free multimodal dataset distillation (PDS) for Hugging Face datasets.

Example:
    ```py
    >>> import pds_hf
    >>> from datasets import load_dataset
    >>> ds = load_dataset("nlphuji/flickr30k", split="test")
    >>> small = ds.distill(num_pairs=100)      # CLIP encode -> cluster -> align -> unCLIP
    ```
"""

from . import members  # callable: pds_hf.members(small); and pds_hf.members.write_members
from .builder import DistillBuilder, DistillBuilderConfig
from .config import DistillConfig
from .evaluation import evaluate
from .processor import DistillProcessor, Selection, distill, metadata
from .prototypes import Prototypes, prototypes_from_embeddings
from .publish import push_to_hub, save_to_folder

__version__ = "0.1.0"

__all__ = [
    "DistillBuilder",
    "DistillBuilderConfig",
    "DistillConfig",
    "DistillProcessor",
    "Prototypes",
    "Selection",
    "distill",
    "evaluate",
    "members",
    "metadata",
    "prototypes_from_embeddings",
    "push_to_hub",
    "save_to_folder",
]


def _dataset_distill(self, config: DistillConfig | None = None, **overrides):
    """Distill this dataset with PDS; same as ``pds_hf.distill(self, config, **overrides)``."""
    return distill(self, config, **overrides)


_dataset_distill.__pds_hf__ = True


def _register() -> None:
    # Add .distill to Dataset, and to DatasetDict / IterableDataset so that calling it there explains what to do
    # (distill needs one split, all of it at once), without replacing an attribute anyone else defines.
    import logging

    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    for cls in (Dataset, DatasetDict, IterableDataset, IterableDatasetDict):
        existing = getattr(cls, "distill", None)
        if existing is None:
            cls.distill = _dataset_distill
        elif not getattr(existing, "__pds_hf__", False):
            logging.getLogger(__name__).warning(
                "datasets.%s already has a 'distill' attribute; left as is. Use pds_hf.distill(ds, ...).", cls.__name__
            )


_register()
