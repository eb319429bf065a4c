"""The embedded default: a small image-caption dataset made in code, and tiny models to distill it.

``pds-hf distill --demo`` runs the whole pipeline on it with no network and no GPU.
"""

from __future__ import annotations

import numpy as np

# The demo dataset carries this builder name in its info, so in a distilled set's run record: its dataset card
# points the reader to the code that makes it, instead of naming a dataset nobody can find.
from .schema import DEMO_DATASET_NAME, DEMO_LICENSE

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 14, "large": 26}


def _draw(shape: str, colour, size: int, centre, background, side: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    x, y = centre
    box = (x - size, y - size, x + size, y + size)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - size), (x - size, y + size), (x + size, y + size)], fill=colour)
    else:
        bar = max(size // 3, 2)
        draw.rectangle((x - size, y - bar, x + size, y + bar), fill=colour)
        draw.rectangle((x - bar, y - size, x + bar, y + size), fill=colour)
    return image


def demo_dataset(num_images: int = 240, *, seed: int = 0, side: int = 64):
    """Coloured shapes with two captions each (one row per image, ``caption`` a list of strings).

    Args:
        num_images: rows to make; 240 makes 480 pairs.
        seed: seeds positions, sizes and backgrounds.
        side: image side in pixels.

    Example:
        ```py
        >>> from pds_hf.demo import demo_dataset
        >>> ds = demo_dataset(10)
        >>> ds[0]["caption"]
        ['a small red circle', 'a red circle on the left on a light background']
        ```
    """
    from datasets import Dataset, DatasetInfo, Features, Image, List, Value

    rng = np.random.default_rng(seed)
    colours, sizes = list(COLOURS), list(SIZES)
    images, captions = [], []
    for i in range(num_images):
        colour = colours[i % len(colours)]
        shape = SHAPES[(i // len(colours)) % len(SHAPES)]
        size_name = sizes[(i // (len(colours) * len(SHAPES))) % len(sizes)]
        size = SIZES[size_name] * side // 64
        margin = size + 2
        x = int(rng.integers(margin, side - margin + 1))
        y = int(rng.integers(margin, side - margin + 1))
        dark = bool(rng.integers(0, 2))
        background = tuple(int(v) for v in (rng.integers(10, 60, 3) if dark else rng.integers(200, 250, 3)))
        images.append(_draw(shape, COLOURS[colour], size, (x, y), background, side))
        where = "on the left" if x < side // 2 else "on the right"
        article = "an" if colour[0] in "aeiou" else "a"
        captions.append(
            [
                f"a {size_name} {colour} {shape}",
                f"{article} {colour} {shape} {where} on a {'dark' if dark else 'light'} background",
            ]
        )
    features = Features({"image": Image(), "caption": List(Value("string"))})
    info = DatasetInfo(
        builder_name=DEMO_DATASET_NAME,
        license=DEMO_LICENSE,
        features=features,
        description=f"Coloured shapes with two captions each, made in code by "
        f"{DEMO_DATASET_NAME}(num_images={num_images}, seed={seed}, side={side}).",
    )
    return Dataset.from_dict({"image": images, "caption": captions}, features=features, info=info)


def demo_config(num_pairs: int = 16, *, dataset=None, **overrides):
    """A :class:`~pds_hf.DistillConfig` using the tiny random models of :mod:`pds_hf.testing` on CPU.

    Synthesis runs 20 denoising steps instead of the paper's 100, to keep the demo within seconds. The settings
    are checked first, and against ``dataset`` when given (e.g. ``num_pairs`` larger than its pairs allow), so
    that bad input fails in a second, before any model is built. Only the models the run uses are built: none
    for a ``clip_model`` / ``unclip_model`` given in ``overrides``, no decoder when synthesis needs none.

    Args:
        num_pairs: distilled pairs.
        dataset: the ``datasets.Dataset`` the config will distill (default: none, settings checked alone).
        **overrides: other :class:`~pds_hf.DistillConfig` fields.

    Raises:
        ValueError: a setting is invalid, or ``dataset`` cannot give ``num_pairs`` pairs.

    Example:
        ```py
        >>> from pds_hf.demo import demo_config, demo_dataset
        >>> ds = demo_dataset()
        >>> small = pds_hf.distill(ds, demo_config(8, dataset=ds, num_inference_steps=2))
        ```
    """
    from .config import DistillConfig
    from .progress import library_output
    from .testing import tiny_clip_encoder, tiny_unclip_pipeline

    settings = dict(num_pairs=num_pairs, num_inference_steps=20, image_size=64, device="cpu")
    settings.update(overrides)
    config = DistillConfig(**settings)
    if dataset is not None:
        from .processor import DistillProcessor

        DistillProcessor(config).check_inputs(dataset)
    models = {}
    with library_output():
        if "clip_model" not in overrides:
            models["clip_model"] = tiny_clip_encoder()
        if "unclip_model" not in overrides:
            # The decoder's field names no model when synthesis uses none, rather than the default Hub id.
            uses_unclip = config.method == "pds" and config.synthesis == "unclip"
            models["unclip_model"] = tiny_unclip_pipeline() if uses_unclip else None
    return config.replace(**models)
