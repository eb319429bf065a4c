"""CLIP-like synthetic embeddings for the benchmarks (real CLIP features are not available offline).

What real CLIP ViT-L/14 projected features look like, and how the generator imitates it:

- **A shared offset.** Unnormalised CLIP features of one modality share a large common component
  (two random COCO images have cosine similarity around 0.5), and images and captions sit in two
  different cones (the "modality gap"). Each modality gets its own fixed offset vector, sized so that
  two random points of one modality have cosine similarity of about 0.5.
- **Anisotropy.** The spectrum of CLIP features decays steeply: a few directions carry most of the
  variance. Every variance below is scaled per dimension by ``(1 + i) ** -0.5`` (dimension ``i``);
  k-means is rotation-invariant, so axis-aligned anisotropy is as hard as rotated anisotropy.
- **Semantic hierarchy.** ``topics`` broad topics (animals, food, sports ...), each with
  sub-components (a few thousand in all) whose sizes are log-normal, so that some concepts are
  common and many are rare, as in COCO or Flickr30k.
- **Anisotropic components.** Within a component, points spread along a random rank-8 subspace of
  its own (pose, colour, background) plus isotropic noise.
- **Pairs.** A caption shares its image's component and a projection of the image's latent
  variables, plus caption noise, with its own offset: image-text cosine is high for most pairs and
  lower for a noisy tail (10% of captions are drawn from an unrelated component), which is what the
  filter step removes.

Everything is float32, generated in chunks into preallocated arrays (no full-size temporaries), and
deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Mixture:
    """Attributes:
    component_means: ``(C, d)`` component centres (without the modality offset).
    component_bases: ``(C, r, d)`` per-component spread directions.
    probs: ``(C,)`` component frequencies.
    spectrum: ``(d,)`` per-dimension scale (anisotropy).
    """

    component_means: np.ndarray
    component_bases: np.ndarray
    probs: np.ndarray
    spectrum: np.ndarray


def make_mixture(d: int = 768, components: int = 3000, topics: int = 60, rank: int = 8, seed: int = 0) -> Mixture:
    rng = np.random.default_rng(seed)
    spectrum = ((1.0 + np.arange(d)) ** -0.5).astype(np.float32)
    spectrum /= np.sqrt(np.mean(spectrum**2))
    topic_means = rng.normal(size=(topics, d)).astype(np.float32) * spectrum * 1.0
    topic_of = rng.integers(0, topics, size=components)
    means = topic_means[topic_of] + rng.normal(size=(components, d)).astype(np.float32) * spectrum * 0.6
    bases = rng.normal(size=(components, rank, d)).astype(np.float32) * spectrum / np.sqrt(d) * 0.5
    bases *= (1.0 / (1.0 + np.arange(rank)))[None, :, None].astype(np.float32) * np.sqrt(d) ** 0.5
    sizes = rng.lognormal(mean=0.0, sigma=1.2, size=components)
    return Mixture(means.astype(np.float32), bases.astype(np.float32), sizes / sizes.sum(), spectrum)


def _offset(d: int, norm: float, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=d).astype(np.float32)
    return v / np.linalg.norm(v) * norm


def _sample_into(out, mix: Mixture, comp, latent, offset, noise, rng, chunk):
    """out[p] = offset + mean[comp[p]] + latent[p] @ basis[comp[p]] + noise * spectrum * eps."""
    d = out.shape[1]
    for start in range(0, len(out), chunk):
        stop = min(start + chunk, len(out))
        c = comp[start:stop]
        block = mix.component_means[c] + offset
        block += rng.standard_normal(size=(stop - start, d), dtype=np.float32) * (mix.spectrum * noise)
        # Group the chunk by component so that each spread basis is one small matrix product.
        order = np.argsort(c, kind="stable")
        bounds = np.flatnonzero(np.diff(c[order])) + 1
        for rows in np.split(order, bounds):
            block[rows] += latent[start + rows] @ mix.component_bases[c[rows[0]]]
        out[start:stop] = block


def clip_like_images(n: int, d: int = 768, *, components: int = 3000, seed: int = 0, chunk: int = 20000) -> np.ndarray:
    """``(n, d)`` float32 image embeddings drawn from the CLIP-like mixture."""
    mix = make_mixture(d, components, seed=seed)
    rng = np.random.default_rng(seed + 1)
    comp = rng.choice(len(mix.probs), size=n, p=mix.probs)
    latent = rng.standard_normal(size=(n, mix.component_bases.shape[1]), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    _sample_into(out, mix, comp, latent, _offset(d, 1.0 * np.sqrt(d), seed + 2), 0.35, rng, chunk)
    return out


def clip_like_pairs(
    num_images: int,
    captions_per_image: int = 5,
    d: int = 768,
    *,
    components: int = 3000,
    noisy_fraction: float = 0.1,
    seed: int = 0,
    chunk: int = 20000,
):
    """Distinct images, their captions, and which image each caption belongs to.

    Returns:
        ``(image_embeds (Ni, d), text_embeds (Ni * captions_per_image, d), pair_image (Ni * cpi,))``.
    """
    mix = make_mixture(d, components, seed=seed)
    rng = np.random.default_rng(seed + 1)
    comp = rng.choice(len(mix.probs), size=num_images, p=mix.probs)
    rank = mix.component_bases.shape[1]
    latent = rng.standard_normal(size=(num_images, rank), dtype=np.float32)
    images = np.empty((num_images, d), dtype=np.float32)
    _sample_into(images, mix, comp, latent, _offset(d, np.sqrt(d), seed + 2), 0.35, rng, chunk)

    n = num_images * captions_per_image
    pair_image = np.repeat(np.arange(num_images, dtype=np.int64), captions_per_image)
    text_comp = comp[pair_image]
    noisy = rng.random(n) < noisy_fraction
    text_comp[noisy] = rng.choice(len(mix.probs), size=int(noisy.sum()), p=mix.probs)
    text_latent = 0.7 * latent[pair_image] + 0.7 * rng.standard_normal(size=(n, rank), dtype=np.float32)
    texts = np.empty((n, d), dtype=np.float32)
    _sample_into(texts, mix, text_comp, text_latent, _offset(d, np.sqrt(d), seed + 3), 0.45, rng, chunk)
    return images, texts, pair_image


def clip_like_pairs_on_disk(
    folder,
    num_pairs: int,
    *,
    captions_per_image: int = 5,
    dtype="float32",
    d: int = 768,
    components: int = 3000,
    noisy_fraction: float = 0.1,
    seed: int = 0,
    chunk: int = 100_000,
):
    """The pairs layout of :func:`clip_like_pairs` written straight to two ``.npy`` files on disk.

    ``images.npy`` holds each pair's image embedding (an image repeated for its ``captions_per_image``
    captions) and ``texts.npy`` each pair's caption embedding, both ``(num_pairs, d)`` in ``dtype``.
    Blocks of ``chunk`` pairs are drawn from their own seed, so a file of N pairs begins with the
    file of any fewer pairs (same ``chunk``), and memory stays at a few blocks whatever N.

    Returns:
        ``(images, texts)`` opened read-only as memory maps.
    """
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if chunk % captions_per_image:
        raise ValueError(f"chunk={chunk} must be a multiple of captions_per_image={captions_per_image}.")
    done = folder / "complete"
    if not done.exists():
        mix = make_mixture(d, components, seed=seed)
        rank = mix.component_bases.shape[1]
        image_offset, text_offset = _offset(d, np.sqrt(d), seed + 2), _offset(d, np.sqrt(d), seed + 3)
        images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=dtype, shape=(num_pairs, d))
        texts = np.lib.format.open_memmap(folder / "texts.npy", mode="w+", dtype=dtype, shape=(num_pairs, d))
        for block, start in enumerate(range(0, num_pairs, chunk)):
            n = min(chunk, num_pairs - start)
            rng = np.random.default_rng([seed, block])
            num_images = -(-n // captions_per_image)
            comp = rng.choice(len(mix.probs), size=num_images, p=mix.probs)
            latent = rng.standard_normal(size=(num_images, rank), dtype=np.float32)
            distinct = np.empty((num_images, d), dtype=np.float32)
            _sample_into(distinct, mix, comp, latent, image_offset, 0.35, rng, chunk)
            pair_image = np.repeat(np.arange(num_images), captions_per_image)[:n]
            text_comp = comp[pair_image]
            noisy = rng.random(n) < noisy_fraction
            text_comp[noisy] = rng.choice(len(mix.probs), size=int(noisy.sum()), p=mix.probs)
            text_latent = 0.7 * latent[pair_image] + 0.7 * rng.standard_normal(size=(n, rank), dtype=np.float32)
            block_texts = np.empty((n, d), dtype=np.float32)
            _sample_into(block_texts, mix, text_comp, text_latent, text_offset, 0.45, rng, chunk)
            images[start : start + n] = distinct[pair_image]
            texts[start : start + n] = block_texts
            if block % 10 == 9:
                print(f"{folder.name}: {start + n:,} of {num_pairs:,} pairs written", flush=True)
        images.flush()
        texts.flush()
        del images, texts
        done.write_text(f"{num_pairs} {dtype}\n")
    return (np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "texts.npy", mmap_mode="r"))
