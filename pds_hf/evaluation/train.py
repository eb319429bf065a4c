"""Training the student's projection heads on frozen features, as in the paper's protocol.

The student is CLIP-like: a frozen pretrained image network, frozen text features (from the encoder
the set was distilled with), and a trainable :class:`ProjectionHead` on the text side that maps text
features into the image network's feature space. Both sides are L2-normalised and compared by cosine
similarity times a logit scale ``1 / temperature``; the loss is the symmetric InfoNCE (cross-entropy
over the batch in both directions).

Defaults follow the reference code: text head only, temperature fixed at 0.07 (``learn_temperature``
makes it a trained parameter, initialised at ``temperature``, kept at most 100 as in CLIP, and not
weight-decayed), SGD lr 0.2, momentum 0.9, weight decay 5e-4, batch 128, 100 epochs, lr x0.1 from
epoch 51, dropout 0.1 inside the head. ``train_image_head=True`` also trains a head on the image side
(as LoRS allows); both heads then project to ``embed_dim``.

Epochs are counted from 1. When a validation set is given, the heads are scored on it every
``eval_every`` epochs and after the last one, and the state with the best mean recall is kept (the
earliest on a tie). Nothing here ever sees a test set.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..filter import nonfinite_rows
from .metrics import retrieval_metrics
from .settings import TrainSettings, train_settings

MAX_LOGIT_SCALE = math.log(100.0)


class ProjectionHead(torch.nn.Module):
    """Linear -> GELU -> Linear -> dropout, plus a residual from the first Linear, then LayerNorm.

    Args:
        in_dim: input feature size.
        out_dim: output size.
        dropout: dropout after the second Linear (active in training only).

    Example:
        ```py
        >>> import torch
        >>> from pds_hf.evaluation.train import ProjectionHead
        >>> ProjectionHead(768, 1000)(torch.zeros(4, 768)).shape
        torch.Size([4, 1000])
        ```
    """

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float = 0.1):
        super().__init__()
        self.projection = torch.nn.Linear(in_dim, out_dim)
        self.gelu = torch.nn.GELU()
        self.fc = torch.nn.Linear(out_dim, out_dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.layer_norm = torch.nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.layer_norm(projected + self.dropout(self.fc(self.gelu(projected))))


class ContrastiveHeads(torch.nn.Module):
    """The trainable part of the student: a text head, optionally an image head, and the logit scale.

    Args:
        image_dim: size of the frozen image features.
        text_dim: size of the frozen text features.
        embed_dim: size of the shared space. Without an image head it must be ``image_dim`` (the text
            head maps into the image features' space); defaults to ``image_dim``.
        train_image_head: also project the image features with a trained head.
        temperature: initial (or, if not learned, fixed) softmax temperature.
        learn_temperature: train ``log(1 / temperature)`` as a parameter.
        dropout: dropout inside each head.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        embed_dim: int | None = None,
        train_image_head: bool = False,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        embed_dim = embed_dim or image_dim
        if not train_image_head and embed_dim != image_dim:
            raise ValueError(
                f"embed_dim={embed_dim} differs from the image features' size {image_dim}; without an image head "
                "the text head maps into the image features' space. Pass train_image_head=True or drop embed_dim."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.text_head = ProjectionHead(text_dim, embed_dim, dropout=dropout)
        self.image_head = ProjectionHead(image_dim, embed_dim, dropout=dropout) if train_image_head else None
        scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.logit_scale = torch.nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def embed_images(self, image_feats: torch.Tensor) -> torch.Tensor:
        if self.image_head is not None:
            image_feats = self.image_head(image_feats)
        return F.normalize(image_feats, dim=-1)

    def embed_texts(self, text_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(text_feats), dim=-1)

    def loss(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: pair ``i`` of the batch is the positive for row ``i`` and column ``i``."""
        logits = self.logit_scale.exp() * self.embed_images(image_feats) @ self.embed_texts(text_feats).T
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    @torch.no_grad()
    def similarity(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """``(num_images, num_captions)`` cosine similarities in the shared space (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            return self.embed_images(image_feats) @ self.embed_texts(text_feats).T
        finally:
            self.train(was_training)


@dataclass
class TrainResult:
    """What :func:`train_heads` returns.

    Attributes:
        heads: the heads at the selected epoch (eval mode).
        selected_epoch: the epoch whose state ``heads`` holds (1-based).
        losses: mean training loss of each epoch.
        validation_history: ``(epoch, metrics)`` for each validation check; empty without validation.
    """

    heads: ContrastiveHeads
    selected_epoch: int
    losses: list[float] = field(default_factory=list)
    validation_history: list[tuple[int, dict]] = field(default_factory=list)


def _tensor(array, device) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float32), device=device)


def score(heads: ContrastiveHeads, retrieval, *, device=None) -> dict[str, float]:
    """Retrieval metrics of ``heads`` on a :class:`~pds_hf.evaluation.features.RetrievalSet`."""
    device = device or next(heads.parameters()).device
    sim = heads.similarity(_tensor(retrieval.image_feats, device), _tensor(retrieval.text_feats, device))
    return retrieval_metrics(sim, retrieval.caption_to_image)


def _check_train_features(image_feats: np.ndarray, text_feats: np.ndarray) -> None:
    if image_feats.ndim != 2 or text_feats.ndim != 2:
        raise ValueError(f"Training features must be 2-D; got image {image_feats.shape}, text {text_feats.shape}.")
    if len(image_feats) != len(text_feats):
        raise ValueError(
            f"{len(image_feats)} image features but {len(text_feats)} text features: "
            "give one of each per training pair."
        )
    if len(image_feats) == 0:
        raise ValueError("No training pairs.")
    for what, array in (("image", image_feats), ("text", text_feats)):
        bad = nonfinite_rows(array)
        if bad.size:
            raise ValueError(f"The training {what} features hold NaN or inf at pair(s) {bad[:5].tolist()}.")


def train_heads(
    image_feats,
    text_feats,
    *,
    validation=None,
    settings: TrainSettings | None = None,
    seed: int = 0,
    device=None,
    **changes,
) -> TrainResult:
    """Train the student's heads on ``(image_feats[i], text_feats[i])`` pairs, selecting the epoch on
    ``validation``.

    Args:
        image_feats: ``(N, d_image)`` frozen image features of the training pairs.
        text_feats: ``(N, d_text)`` frozen text features of the training pairs.
        validation: a :class:`~pds_hf.evaluation.features.RetrievalSet` to select the epoch on, or
            ``None`` to keep the last epoch.
        settings: the schedule and the heads' shape, a :class:`~pds_hf.evaluation.settings.TrainSettings`
            (``None``: the defaults).
        seed: seeds the head initialisation, the batch order and dropout.
        device: where to train; CUDA when available.
        **changes: any field of :class:`~pds_hf.evaluation.settings.TrainSettings` (``epochs``, ``lr``,
            ``momentum``, ``weight_decay``, ``batch_size``, ``lr_decay_epoch``, ``lr_decay``, ``temperature``,
            ``learn_temperature``, ``train_image_head``, ``embed_dim``, ``dropout``, ``eval_every``), overriding
            ``settings``.

    Returns:
        A :class:`TrainResult`.

    Example:
        ```py
        >>> import numpy as np
        >>> from pds_hf.evaluation.train import train_heads
        >>> rng = np.random.default_rng(0)
        >>> result = train_heads(rng.normal(size=(100, 64)), rng.normal(size=(100, 32)), epochs=5)
        >>> result.selected_epoch, len(result.losses)
        (5, 5)
        ```
    """
    s = train_settings(settings, **changes)
    image_feats = np.asarray(image_feats, dtype=np.float32)
    text_feats = np.asarray(text_feats, dtype=np.float32)
    _check_train_features(image_feats, text_feats)
    if s.epochs < 1 or s.batch_size < 1 or s.eval_every < 1:
        raise ValueError(
            f"epochs, batch_size and eval_every must be >= 1; got {s.epochs}, {s.batch_size}, {s.eval_every}."
        )
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        heads = ContrastiveHeads(
            image_feats.shape[1],
            text_feats.shape[1],
            embed_dim=s.embed_dim,
            train_image_head=s.train_image_head,
            temperature=s.temperature,
            learn_temperature=s.learn_temperature,
            dropout=s.dropout,
        ).to(device)
        groups = [{"params": [p for name, p in heads.named_parameters() if name != "logit_scale"]}]
        if s.learn_temperature:
            groups.append({"params": [heads.logit_scale], "weight_decay": 0.0})
        optimizer = torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        images, texts = _tensor(image_feats, device), _tensor(text_feats, device)
        order = torch.Generator().manual_seed(seed)

        result = TrainResult(heads=heads, selected_epoch=s.epochs)
        best_mean, best_state = -math.inf, None
        for epoch in range(1, s.epochs + 1):
            decayed = s.lr_decay_epoch is not None and epoch >= s.lr_decay_epoch
            for group in optimizer.param_groups:
                group["lr"] = s.lr * s.lr_decay if decayed else s.lr
            heads.train()
            total = 0.0
            for batch in torch.randperm(len(images), generator=order).split(s.batch_size):
                batch = batch.to(device)
                loss = heads.loss(images[batch], texts[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if s.learn_temperature:
                    with torch.no_grad():
                        heads.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                total += loss.item() * len(batch)
            result.losses.append(total / len(images))

            if validation is not None and (epoch % s.eval_every == 0 or epoch == s.epochs):
                metrics = score(heads, validation, device=device)
                result.validation_history.append((epoch, metrics))
                if metrics["mean"] > best_mean:
                    best_mean, best_state = metrics["mean"], copy.deepcopy(heads.state_dict())
                    result.selected_epoch = epoch
    if best_state is not None:
        heads.load_state_dict(best_state)
    heads.eval()
    return result
