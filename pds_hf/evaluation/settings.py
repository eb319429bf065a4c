"""How the student's heads are trained, as one object that the protocol and the training loop share.

Kept apart from :mod:`.train` so that reading or checking settings does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class TrainSettings:
    """The training schedule and the heads' shape; the defaults are the reference code's.

    :func:`~pds_hf.evaluation.train.train_heads`, :func:`~pds_hf.evaluation.protocol.evaluate` and
    :func:`~pds_hf.evaluation.protocol.evaluate_features` take one as ``settings=``, and each field as a keyword
    argument of the same name, which overrides ``settings``.

    Attributes:
        epochs: training epochs.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (a learned temperature is not decayed).
        batch_size: pairs per step (the last batch of an epoch may be smaller).
        lr_decay_epoch: from this epoch on (1-based) the learning rate is ``lr * lr_decay``; ``None`` keeps it
            constant.
        lr_decay: the decay factor.
        temperature: the InfoNCE temperature; fixed at 0.07 by default, as in the reference code.
        learn_temperature: train the temperature, starting at ``temperature`` and kept at most 100 in logit scale.
        train_image_head: also train a projection head on the image side (LoRS-style); by default only the text
            head trains, as in the reference code.
        embed_dim: size of the shared space when ``train_image_head`` (default: the image features' size).
        dropout: dropout inside the heads.
        eval_every: validation interval in epochs (the last epoch is always checked).

    Example:
        ```py
        >>> from pds_hf.evaluation import TrainSettings
        >>> quick = TrainSettings(epochs=10, eval_every=5)
        >>> quick.override(lr=0.1).to_dict()["lr"]
        0.1
        ```
    """

    epochs: int = 100
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    lr_decay_epoch: int | None = 51
    lr_decay: float = 0.1
    temperature: float = 0.07
    learn_temperature: bool = False
    train_image_head: bool = False
    embed_dim: int | None = None
    dropout: float = 0.1
    eval_every: int = 10

    @classmethod
    def names(cls) -> list[str]:
        """The fields' names, in order."""
        return [field.name for field in fields(cls)]

    def override(self, **changes) -> TrainSettings:
        """A copy with ``changes`` (field names as keywords); an unknown name raises ``TypeError``."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise TypeError(f"Unknown training setting(s) {sorted(unknown)}; known: {sorted(self.names())}.")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a plain dict, in order (as an evaluation report records them)."""
        return asdict(self)


def train_settings(settings: TrainSettings | None = None, **changes) -> TrainSettings:
    """``settings`` (the defaults when ``None``) with ``changes`` applied: how the functions that take both
    ``settings=`` and the fields as keywords combine them.

    Example:
        ```py
        >>> from pds_hf.evaluation.settings import train_settings
        >>> train_settings(epochs=5).epochs
        5
        ```
    """
    if settings is not None and not isinstance(settings, TrainSettings):
        raise TypeError(f"settings must be a TrainSettings, got {type(settings).__name__}.")
    return (settings or TrainSettings()).override(**changes)
