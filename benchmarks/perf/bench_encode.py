"""Overhead of the encode stage (``pds_hf.encode.encode_table``) over the bare model forward.

A random-weight CLIP with ViT-B/32's shapes (vision: 768 hidden, 12 layers, 12 heads, patch 32,
224 px; text: 512 hidden, 12 layers, 8 heads; projection 512), built from a config, encodes a
``datasets.Dataset`` of Flickr-sized JPEG and PNG images (500x375, one row per image, 2 captions
each). Measured on the same batches:

- ``encode_table``: everything the pipeline does: reading the rows, decoding the images (in a
  background thread), the CLIP processor (resize, crop, normalise), tokenising, the forward passes,
  the checks;
- the bare forward: ``get_image_features`` / ``get_text_features`` on tensors prepared in advance.

Overhead = encode_table time / bare forward time - 1 (target: at most 15% on CPU).

Usage:
    python benchmarks/perf/bench_encode.py                  # 256 images, batch 64
    python benchmarks/perf/bench_encode.py --images 32 --batch-size 16   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from machine import append_results, markdown_table  # noqa: E402


def vit_b32_like(seed: int = 0):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pds_hf.testing import clip_text_sizes, model_sizes, tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=clip_text_sizes(tokenizer, 512, 2048, 12, 8),
        vision_config=model_sizes(768, 3072, 12, 12, image_size=224, patch_size=32),
        projection_dim=512,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    # OpenAI CLIP's preprocessing: shortest edge 224 (bicubic), centre crop 224, CLIP mean/std.
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    return model, processor


def image_dataset(num_images: int, seed: int = 0):
    """One row per image, half JPEG and half PNG, with textured content so that codecs do real work."""
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    images, captions = [], []
    for i in range(num_images):
        a, b, c = rng.random(3) * 0.1
        base = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], axis=-1)
        pixels = ((base * 0.4 + 0.5) * 255 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        fmt = "JPEG" if i % 2 == 0 else "PNG"
        PILImage.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        images.append({"bytes": buffer.getvalue(), "path": None})
        captions.append(
            [
                f"a photo number {i} of a {['red', 'blue', 'green'][i % 3]} pattern on a wall",
                f"an abstract picture with waves, sample {i}",
            ]
        )
    features = Features({"image": Image(), "caption": List(Value("string"))})
    return Dataset.from_dict({"image": images, "caption": captions}, features=features)


def caption_batches(processor, texts, batch_size: int, device="cpu") -> list[dict]:
    """The captions tokenised in batches, ready for the bare forward (also used by benchmarks/gpu)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        tokens = processor.tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
        )
        batches.append({k: tokens[k].to(device) for k in ("input_ids", "attention_mask")})
    return batches


def bare_forward(model, image_batches, text_batches) -> None:
    """The baseline the encode stage is measured against: the model's forward on prepared batches only."""
    import torch

    with torch.inference_mode():
        for pixel_values in image_batches:
            model.get_image_features(pixel_values=pixel_values)
        for tokens in text_batches:
            model.get_text_features(**tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is kept)")
    args = parser.parse_args()

    import torch
    from datasets.utils.logging import disable_progress_bar

    from pds_hf.encode import TransformersEncoder, encode_table
    from pds_hf.inputs import load_images, read_pairs

    disable_progress_bar()
    model, processor = vit_b32_like()
    encoder = TransformersEncoder(model, processor)
    ds = image_dataset(args.images)
    table = read_pairs(ds)

    # The same batches, prepared in advance for the bare forward.
    image_batches = []
    t0 = time.perf_counter()
    rows = table.image_rows
    decoded = [load_images(ds, "image", rows[i : i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
    decode_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for images in decoded:
        image_batches.append(processor(images=images, return_tensors="pt")["pixel_values"])
    preprocess_seconds = time.perf_counter() - t0
    text_batches = caption_batches(processor, table.texts, args.batch_size)

    def bare():
        bare_forward(model, image_batches, text_batches)

    def full():
        encode_table(encoder, ds, table, batch_size=args.batch_size)

    bare()  # warm-up (allocator, kernels)
    results = {}
    for name, fn in (("bare", bare), ("encode_table", full), ("bare2", bare), ("encode_table2", full)):
        best = float("inf")
        for _ in range(args.repeats // 2 or 1):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        results[name.rstrip("2")] = min(results.get(name.rstrip("2"), float("inf")), best)
    overhead = results["encode_table"] / results["bare"] - 1
    n = len(rows)
    table_rows = [
        ["bare forward (images + captions)", f"{results['bare']:.2f}", f"{n / results['bare']:.1f}"],
        ["encode_table (everything)", f"{results['encode_table']:.2f}", f"{n / results['encode_table']:.1f}"],
        ["  of which, alone: decode images", f"{decode_seconds:.2f}", ""],
        ["  of which, alone: CLIP image processor", f"{preprocess_seconds:.2f}", ""],
    ]
    body = markdown_table(["what", "seconds", "images/s"], table_rows)
    body += (
        f"\n\nOverhead of encode_table over the bare forward: **{overhead * 100:.1f}%** (target <= 15%). "
        f"{n} images (500x375, half JPEG, half PNG), {len(table.texts)} captions, batch {args.batch_size}, "
        f"random-weight ViT-B/32-shaped CLIP, float32, torch threads {torch.get_num_threads()}; best of "
        f"{max(args.repeats // 2, 1) * 2} interleaved runs each."
    )
    append_results("Encode stage overhead (CPU)", body)


if __name__ == "__main__":
    main()
