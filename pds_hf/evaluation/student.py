"""The student's image network: a frozen, pretrained model that turns images into feature vectors.

:func:`load_student` accepts

- a timm model name (``"nf_resnet50"``, ``"vit_tiny_patch16_224"``): created with pretrained weights
  and preprocessed with timm's own data config for that model (needs ``pip install timm``);
- a ``torch.nn.Module``: called on a ``(batch, 3, H, W)`` float tensor made by ``transform`` (by
  default: resize, centre crop to ``image_size``, ImageNet mean/std normalisation);
- an object with ``encode_images(list_of_PIL) -> (n, d)`` (an encoder from :mod:`pds_hf.encode`);
- any other callable: called on a *list of RGB PIL images*, returning ``(n, d)`` features;
- a :class:`Student` (returned as is).

The network never trains: only the projection heads of :mod:`pds_hf.evaluation.train` do, so each
image's features are computed once and cached (see :mod:`pds_hf.evaluation.features`).
"""

from __future__ import annotations

import hashlib
import json
import weakref

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def module_digest(module: torch.nn.Module) -> str:
    """A hash of a module's weights and buffers, for keying cached features on disk.

    The hash is remembered per module and recomputed only when a tensor is replaced or changed in
    place, so asking again is cheap even for a large model.
    """
    tensors = list(module.state_dict(keep_vars=True).items())
    stamp = tuple((name, t.data_ptr(), t._version) for name, t in tensors)
    known = _DIGESTS.get(module)
    if known is not None and known[0] == stamp:
        return known[1]
    hasher = hashlib.sha1()
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = hasher.hexdigest()
    _DIGESTS[module] = (stamp, digest)
    return digest


def encoder_cache_key(encoder, *, name: str | None = None) -> str | None:
    """Cache identity of an encoder (``encode_images``/``encode_texts`` object), or ``None`` if unknown.

    An encoder that carries a ``fingerprint`` string (set by ``TransformersEncoder.from_pretrained``: model
    id, revision and dtype) is identified by it; one over a torch model by its name and a hash of its
    weights (tiny random test models share a name but not weights); another object only by an explicit
    ``name``.
    """
    from ..encode import encoder_name

    fingerprint = getattr(encoder, "fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:
        return f"encoder:{fingerprint}"
    label = name or encoder_name(encoder)
    model = getattr(encoder, "model", None)
    if isinstance(model, torch.nn.Module):
        return f"encoder:{label}:{module_digest(model)}"
    if name or getattr(encoder, "name", None):
        return f"encoder:{label}"
    return None


class Student:
    """A frozen image network with a name.

    Attributes:
        name: how the report names the student (e.g. ``"nf_resnet50"``).
        cache_key: identifies the network *and* its preprocessing for the feature cache; ``None`` when
            no stable identity is known (features are then computed once per :func:`evaluate` call and
            not kept across calls).
        batch_size: images per forward pass.

    Build one with :func:`load_student`.
    """

    def __init__(self, encode, *, name: str, cache_key: str | None = None, batch_size: int = 64):
        self._encode = encode
        self.name = name
        self.cache_key = cache_key
        self.batch_size = batch_size

    def encode_images(self, images: list) -> np.ndarray:
        """Return ``(len(images), d)`` float32 features for a list of RGB PIL images."""
        feats = self._encode(images)
        if hasattr(feats, "detach"):
            feats = feats.detach().float().cpu().numpy()
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(images):
            raise ValueError(
                f"Student {self.name!r} returned features of shape {feats.shape} for {len(images)} images; "
                f"expected ({len(images)}, d)."
            )
        return feats

    def __repr__(self) -> str:
        return f"Student(name={self.name!r})"


def default_transform(image_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL image -> ``(3, image_size, image_size)`` float tensor: resize the short side (bicubic), centre
    crop, scale to [0, 1], normalise by ``mean``/``std``."""
    from PIL import Image as PILImage

    mean_arr = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None, None]

    def transform(image):
        image = image.convert("RGB")
        width, height = image.size
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, PILImage.BICUBIC)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((array - mean_arr) / std_arr)

    transform.description = f"resize-crop {image_size}, mean {tuple(mean)}, std {tuple(std)}"
    return transform


def _pick_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _features_of(output) -> torch.Tensor:
    # transformers models return output objects; some timm/torch models return tuples.
    if hasattr(output, "pooler_output") and output.pooler_output is not None:
        output = output.pooler_output
    elif isinstance(output, (tuple, list)):
        output = output[0]
    return output.flatten(1)


def _module_student(module, *, name, transform, transform_description, device, batch_size) -> Student:
    device = _pick_device(device)
    module = module.eval().to(device)
    module.requires_grad_(False)
    # A half-precision network gets half-precision pixels.
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)

    def encode(images):
        batch = torch.stack([transform(image) for image in images]).to(device, dtype)
        with torch.inference_mode():
            return _features_of(module(batch))

    cache_key = f"module:{name}:{module_digest(module)}:{transform_description}"
    return Student(encode, name=name, cache_key=cache_key, batch_size=batch_size)


def _timm_student(model_name: str, *, pretrained: bool, device, batch_size, **create_kwargs) -> Student:
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except Exception as err:  # ImportError, or a torchvision built for another torch failing to load
        raise ImportError(
            f"student={model_name!r} names a timm model, but timm could not be imported ({err}). Install it "
            "with `pip install timm` (it needs a torchvision built for your torch), or pass a torch.nn.Module "
            "or a callable as student=."
        ) from err
    model = timm.create_model(model_name, pretrained=pretrained, **create_kwargs)
    data_config = resolve_data_config({}, model=model)
    transform = create_transform(**data_config)
    description = json.dumps(
        {"timm": model_name, "pretrained": pretrained, **create_kwargs, **data_config}, sort_keys=True, default=str
    )
    return _module_student(
        model,
        name=model_name,
        transform=transform,
        transform_description=description,
        device=device,
        batch_size=batch_size,
    )


def load_student(
    spec,
    *,
    name: str | None = None,
    pretrained: bool = True,
    transform=None,
    image_size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    device=None,
    batch_size: int = 64,
    **timm_kwargs,
) -> Student:
    """Turn ``spec`` into a frozen :class:`Student`.

    Args:
        spec: a timm model name, a ``torch.nn.Module`` (takes a ``(batch, 3, H, W)`` tensor), an object
            with ``encode_images``, a callable taking a list of RGB PIL images, or a :class:`Student`.
        name: the name shown in reports. Defaults to the timm name, the module's class name or the
            callable's ``name`` attribute. For a plain callable, giving a name also lets its features be
            cached on disk (the name must then identify the function and its preprocessing).
        pretrained: for a timm name, load pretrained weights (the protocol's students are
            ImageNet-pretrained).
        transform: for a ``torch.nn.Module``: PIL image -> ``(3, H, W)`` tensor. Defaults to
            :func:`default_transform` with ``image_size``, ``mean``, ``std``. timm models always use
            timm's data config.
        image_size, mean, std: the default transform's settings.
        device: where the network runs; CUDA when available.
        batch_size: images per forward pass.
        **timm_kwargs: passed to ``timm.create_model``. The reference code keeps the ImageNet classifier,
            so the features are the 1000 class logits; pass ``num_classes=0`` for pooled features.

    Example:
        ```py
        >>> from pds_hf.evaluation import load_student
        >>> student = load_student("nf_resnet50")                      # needs `pip install timm`
        >>> pooled = load_student("vit_tiny_patch16_224", num_classes=0)
        >>> import torch
        >>> mine = load_student(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1)),
        ...                     image_size=64)
        ```
    """
    if isinstance(spec, Student):
        return spec
    if isinstance(spec, str):
        return _timm_student(spec, pretrained=pretrained, device=device, batch_size=batch_size, **timm_kwargs)
    if timm_kwargs:
        raise TypeError(f"Unexpected keyword arguments {sorted(timm_kwargs)}: they only apply to a timm model name.")
    if isinstance(spec, torch.nn.Module):
        if transform is None:
            transform = default_transform(image_size, mean, std)
            description = transform.description
        else:
            description = getattr(transform, "description", None) or repr(transform)
        return _module_student(
            spec,
            name=name or type(spec).__name__,
            transform=transform,
            transform_description=description,
            device=device,
            batch_size=batch_size,
        )
    if hasattr(spec, "encode_images"):
        from ..encode import encoder_name

        return Student(
            spec.encode_images,
            name=name or encoder_name(spec),
            cache_key=encoder_cache_key(spec, name=name),
            batch_size=batch_size,
        )
    if callable(spec):
        label = name or getattr(spec, "name", None)
        return Student(
            spec,
            name=label or getattr(spec, "__name__", type(spec).__name__),
            cache_key=f"callable:{label}" if label else None,
            batch_size=batch_size,
        )
    raise TypeError(
        f"student must be a timm model name, a torch.nn.Module, an object with encode_images, or a callable "
        f"on a list of PIL images; got {type(spec).__name__}."
    )


class _TinyConvNet(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(8, dim, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )

    def forward(self, pixel_values):
        return self.body(pixel_values)


def tiny_student(seed: int = 0, *, dim: int = 16, image_size: int = 32, device=None) -> Student:
    """A 2-layer random-weight conv net on 32x32 images, for tests and ``--demo`` runs (no download).

    Example:
        ```py
        >>> from PIL import Image
        >>> from pds_hf.evaluation import tiny_student
        >>> tiny_student().encode_images([Image.new("RGB", (40, 30), "red")]).shape
        (1, 16)
        ```
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _TinyConvNet(dim)
    return load_student(
        network,
        name="pds-hf/tiny-random-student",
        image_size=image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        device=device,
    )
