"""pds-hf: learning-free multimodal dataset distillation (PDS) for Hugging Face datasets.

Example:
    ```py
    >>> import pds_hf
    >>> from datasets import load_dataset
    >>> ds = load_dataset("nlphuji/flickr30k", split="test")
    >>> small = ds.distill(num_pairs=100)      # CLIP encode -> cluster -> align -> unCLIP
    ```
"""

from .config import DistillConfig
from .evaluation import evaluate
from .pipeline import distill, metadata
from .prototypes import Prototypes, prototypes_from_embeddings
from .publish import push_to_hub, save_to_folder

__version__ = "0.1.0"

__all__ = ["DistillConfig", "Prototypes", "distill", "evaluate", "metadata", "prototypes_from_embeddings",
           "push_to_hub", "save_to_folder"]


def _dataset_distill(self, config: DistillConfig | None = None, **overrides):
    """Distill this dataset with PDS; same as ``pds_hf.distill(self, config, **overrides)``."""
    return distill(self, config, **overrides)


_dataset_distill.__pds_hf__ = True


def _register() -> None:
    # Add Dataset.distill without ever replacing an attribute that datasets (or anyone) already defines.
    from datasets import Dataset

    existing = getattr(Dataset, "distill", None)
    if existing is None:
        Dataset.distill = _dataset_distill
    elif not getattr(existing, "__pds_hf__", False):
        import logging

        logging.getLogger(__name__).warning(
            "datasets.Dataset already has a 'distill' attribute; left as is. Use pds_hf.distill(ds, ...).")


_register()
