"""An image-caption dataset from Debian's openclipart packages, built offline and cached on disk.

Debian ships Open Clip Art Library 0.18 (public domain) as ``openclipart-png`` (rendered PNGs) and
``openclipart-svg`` (the sources). The PNGs carry no text; the captions live in each SVG's RDF
metadata (``cc:Work`` > ``dc:title``, ``dc:description``, ``dc:subject`` keywords), the SVG sitting at
the same relative path as its PNG. About 1,200 PNG paths are symlinks to others (one drawing filed
under two categories), leaving 6,900 distinct files.

How captions are made:

1. **Title.** HTML entities decoded, underscores to spaces, digits glued to a word dropped
   (``cake1`` -> ``cake``), the ``Clipart by Nicu Buculei -`` prefix removed, whitespace collapsed.
2. **Collection titles.** Many files carry their collection's name as title (``gramastar`` on 1,375
   stars, ``Part of the Flat Icon Collection (...)``, ``Lemon SVG theme``, ``card``). A title shared by
   at least :data:`COLLECTION_MIN` distinct files says nothing about the image; those files are
   captioned from their file name instead (``folder_bomb`` -> ``folder bomb``), minus words of the
   collection title and tokens that contain digits (``star_22pt03step`` -> ``star``).
3. **Description.** A second caption when it is specific: 2 to 40 words, no URL or e-mail address,
   not shared by :data:`BOILERPLATE_MIN` or more files (``EPS converted from http://aiga.org``), and
   different from the title.
4. **Duplicates.** Identical drawings (same 32x32 thumbnail at 5 bits per channel, which also catches
   the same art saved twice) become one image with the union of their captions. Then every caption
   string (compared lower-cased, punctuation removed) is kept for the first image that has it (titles
   before descriptions, images in path order) and dropped from the others, since a caption that
   matches several images makes retrieval ambiguous. Images left without a caption are dropped.

Images: RGBA composited on white, scaled to fit ``size`` x ``size`` (LANCZOS) and centred on a white
square, so every image is exactly ``size`` x ``size`` RGB (no crop can cut a drawing later). Images
that are blank, smaller than :data:`MIN_SIDE` pixels or larger than :data:`MAX_PIXELS` are dropped.

Splits: a permutation of the images by ``seed`` gives ``test`` (:data:`TEST_IMAGES` images),
``validation`` (:data:`VALIDATION_IMAGES`) and ``train`` (the rest). One row per image, ``caption`` a
list of strings (one or two), plus ``path`` (the drawing's path in the package), ``title`` (raw) and
``keywords``.

The build is cached with ``save_to_disk`` under ``cache_dir`` (the ``.deb`` files and their unpacked
trees too); a later call loads it in a second.

Run it alone: ``python benchmarks/quality/openclipart.py`` prints the counts and a few rows.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import os
import re
import subprocess
import sys
import unicodedata
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dataset_build import DEFAULT_CACHE, build_once
from dataset_build import main as build_main

logger = logging.getLogger(__name__)

PACKAGES = ("openclipart-png", "openclipart-svg")
PNG_ROOT = "usr/share/openclipart/png"
SVG_ROOT = "usr/share/openclipart/svg"
# Bump when the cleaning rules change, so that an old cached build is not reused.
BUILD_VERSION = 2
COLLECTION_MIN = 5
BOILERPLATE_MIN = 3
MIN_SIDE = 32
# 17 of the PNGs are 17 to 623 megapixels (a stop sign at 25,000 px square); decoding one takes seconds
# and gigabytes, so they are skipped.
MAX_PIXELS = 16_000_000
TEST_IMAGES = 1000
VALIDATION_IMAGES = 500

_NICU_PREFIX = re.compile(r"^clipart by nicu buculei\s*-\s*", re.IGNORECASE)
_GLUED_DIGITS = re.compile(r"\b([^\W\d_]{2,})\d+\b")
_URL_OR_MAIL = re.compile(r"https?://|www\.|\S+@\S+\.\w+", re.IGNORECASE)


@dataclass
class Drawing:
    """One distinct PNG file and what its SVG says about it."""

    path: str
    png: Path
    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- fetch


def fetch_packages(cache_dir: Path) -> dict[str, Path]:
    """Download (``apt-get download``) and unpack (``dpkg-deb -x``) both packages; nothing is installed.

    Returns the unpacked root of each package. A second call finds both and does nothing.
    """
    debs, roots = cache_dir / "debs", {}
    debs.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        root = cache_dir / "unpacked" / package
        if (root / ".complete").exists():
            roots[package] = root
            continue
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            found = _apt_download(package, debs)
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
        (root / ".complete").write_text(found[-1].name)
        roots[package] = root
    return roots


def _apt_download(package: str, where: Path) -> list[Path]:
    for attempt in range(2):
        result = subprocess.run(["apt-get", "download", package], cwd=where, capture_output=True, text=True)
        found = sorted(where.glob(f"{package}_*.deb"))
        if result.returncode == 0 and found:
            return found
        if attempt == 0:
            # A fresh machine has no package lists yet.
            logger.info("apt-get download %s failed; running apt-get update once.", package)
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    raise RuntimeError(
        f"Could not download the Debian package {package} ({result.stderr.strip()[-300:]}). Download it by hand "
        f"(apt-get download {package}) into {where} and run again."
    )


# ------------------------------------------------------------------------------------------ metadata


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_svg_metadata(svg: Path) -> tuple[str, str, list[str]]:
    """``(title, description, keywords)`` of the ``cc:Work`` in an SVG's RDF metadata ('' when absent).

    Namespaces are matched by local name: files of this collection use both the old
    ``web.resource.org/cc/`` and the newer ``creativecommons.org/ns#`` URIs.
    """
    try:
        root = ET.parse(svg).getroot()
    except (ET.ParseError, OSError):
        return "", "", []
    work = next((element for element in root.iter() if _local(element.tag) == "Work"), None)
    title, description, keywords = "", "", []
    if work is None:
        return title, description, keywords
    for child in work:
        name = _local(child.tag)
        if name == "title":
            title = (child.text or "").strip()
        elif name == "description":
            description = (child.text or "").strip()
        elif name == "subject":
            keywords = [
                (li.text or "").strip() for li in child.iter() if _local(li.tag) == "li" and (li.text or "").strip()
            ]
    return title, description, keywords


def list_drawings(png_root: Path, svg_root: Path) -> list[Drawing]:
    """Every distinct PNG file (symlinks resolved; the first path in sorted order names it), with metadata."""
    by_file: dict[Path, str] = {}
    for directory, _, files in os.walk(png_root):
        for name in files:
            if name.endswith(".png"):
                path = Path(directory) / name
                relative = str(path.relative_to(png_root))[: -len(".png")]
                real = path.resolve()
                if real not in by_file or relative < by_file[real]:
                    by_file[real] = relative
    drawings = []
    for real, relative in sorted(by_file.items(), key=lambda item: item[1]):
        title, description, keywords = read_svg_metadata(svg_root / f"{relative}.svg")
        drawings.append(Drawing(relative, real, title, description, keywords))
    return drawings


# ---------------------------------------------------------------------------------------------- text


def normalize_text(text: str) -> str:
    """Decode entities, fix Unicode, underscores to spaces, collapse whitespace, trim punctuation."""
    text = unicodedata.normalize("NFKC", html.unescape(text))
    text = text.replace("_", " ")
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .,;:-")


def caption_key(text: str) -> str:
    """What two captions must share to count as the same: lower-case words, no punctuation."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def clean_title(title: str) -> str:
    title = _NICU_PREFIX.sub("", normalize_text(title))
    return normalize_text(_GLUED_DIGITS.sub(r"\1", title))


def name_caption(path: str, collection_title: str) -> str:
    """A caption from a file name, for a drawing whose title is its collection's name."""
    stem = path.rsplit("/", 1)[-1]
    skip = set(caption_key(collection_title).split())
    words = [
        word
        for word in re.split(r"[\s_\-.]+", stem.lower())
        if word and not re.search(r"\d", word) and word not in skip
    ]
    return " ".join(words)


def clean_description(description: str) -> str:
    """The description as a caption, or '' when it is not one (see the module docstring)."""
    text = normalize_text(description)
    if _URL_OR_MAIL.search(text) or not 2 <= len(text.split()) <= 40:
        return ""
    return text


def make_captions(drawings: list[Drawing]) -> tuple[list[str], list[str]]:
    """Per drawing, ``(title caption, description caption)`` before de-duplication ('' for none)."""
    title_files = Counter(caption_key(clean_title(d.title)) for d in drawings)
    description_files = Counter(caption_key(clean_description(d.description)) for d in drawings)
    titles, descriptions = [], []
    for drawing in drawings:
        title = clean_title(drawing.title)
        if title_files[caption_key(title)] >= COLLECTION_MIN or not caption_key(title):
            title = name_caption(drawing.path, title)
        description = clean_description(drawing.description)
        key = caption_key(description)
        if not key or description_files[key] >= BOILERPLATE_MIN or key == caption_key(title):
            description = ""
        titles.append(title)
        descriptions.append(description)
    return titles, descriptions


# -------------------------------------------------------------------------------------------- images


def render(png: Path, size: int):
    """The drawing on white, fitted into a ``size`` x ``size`` RGB square; ``None`` if unusable."""
    from PIL import Image

    try:
        # Skipped below anyway; PIL would warn (or raise, past twice its limit) on opening them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as source:
                if source.width * source.height > MAX_PIXELS:
                    return None
                source.load()
                image = source.convert("RGBA")
    except Exception:
        return None
    if max(image.size) < MIN_SIDE:
        return None
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    if np.asarray(square).std() < 1.0:
        return None
    return square


def _render_one(args):
    from PIL import Image

    png, size = args
    image = render(png, size)
    if image is None:
        return None
    thumb = np.asarray(image.resize((32, 32), Image.LANCZOS), dtype=np.uint8) >> 3
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), hashlib.sha1(thumb.tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------- build


def claim_captions(images) -> list[tuple[dict, str]]:
    """Give each caption to the first image that has it; return the ``(image, caption)`` pairs left out.

    Candidates of rank 0 claim their strings before those of rank 1, over the images in order; two captions are
    the same when their :func:`caption_key` is. Empty captions are skipped.

    Args:
        images: dicts with ``candidates`` (``(rank, caption)`` pairs, rank 0 or 1) and ``caption`` (a list,
            appended to).

    Example:
        ```py
        >>> images = [{"candidates": [(0, "Red box"), (1, "a red box")], "caption": []},
        ...           {"candidates": [(0, "red box!"), (1, "a blue box")], "caption": []}]
        >>> [text for _, text in claim_captions(images)], [image["caption"] for image in images]
        (['red box!'], [['Red box', 'a red box'], ['a blue box']])
        ```
    """
    used: set[str] = set()
    dropped = []
    for rank in (0, 1):
        for image in images:
            for kind, text in image["candidates"]:
                key = caption_key(text)
                if kind != rank or not key:
                    continue
                if key in used:
                    dropped.append((image, text))
                    continue
                used.add(key)
                image["caption"].append(text)
    return dropped


def build_rows(drawings: list[Drawing], size: int, workers: int = 2) -> tuple[list[dict], dict]:
    """Render, merge duplicate drawings, de-duplicate captions; return the rows and what was dropped."""
    from multiprocessing import Pool

    titles, descriptions = make_captions(drawings)
    with Pool(workers) as pool:
        rendered = pool.map(_render_one, [(d.png, size) for d in drawings], chunksize=32)

    stats = Counter(files=len(drawings))
    images: dict[str, dict] = {}
    for drawing, title, description, out in zip(drawings, titles, descriptions, rendered, strict=False):
        if out is None:
            stats["unusable image (unreadable, blank, tiny or huge)"] += 1
            continue
        png_bytes, thumb = out
        if thumb in images:
            stats["duplicate image (merged)"] += 1
            images[thumb]["candidates"] += [(0, title), (1, description)]
            continue
        images[thumb] = {
            "image": png_bytes,
            "path": drawing.path,
            "title": drawing.title,
            "keywords": drawing.keywords,
            "candidates": [(0, title), (1, description)],
            "caption": [],
        }

    # Titles claim their strings before descriptions do, over all images in path order; a merged copy's
    # caption that its image already has is not counted as dropped.
    dropped = sum(text not in row["caption"] for row, text in claim_captions(images.values()))
    if dropped:
        stats["duplicate caption (dropped)"] += dropped
    rows = []
    for row in images.values():
        if not row["caption"]:
            stats["image without a caption (dropped)"] += 1
            continue
        rows.append(
            {
                "image": {"bytes": row["image"], "path": None},
                "caption": row["caption"],
                "path": row["path"],
                "title": row["title"],
                "keywords": row["keywords"],
            }
        )
    stats["images"] = len(rows)
    stats["captions"] = sum(len(row["caption"]) for row in rows)
    stats["images with a description caption"] = sum(len(row["caption"]) > 1 for row in rows)
    return rows, dict(stats)


def _features():
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "caption": List(Value("string")),
            "path": Value("string"),
            "title": Value("string"),
            "keywords": List(Value("string")),
        }
    )


def build(cache_dir: Path = DEFAULT_CACHE, *, size: int = 224, seed: int = 0, workers: int = 2):
    """The dataset as a ``DatasetDict`` (``train``, ``validation``, ``test``), built once and then loaded.

    Args:
        cache_dir: where the ``.deb`` files, their unpacked trees and the built dataset are kept.
        size: side of the square images in pixels.
        seed: seeds the split.
        workers: processes that render the images.

    Returns:
        ``(dataset_dict, manifest)``; the manifest records the counts, the rules' version and the time taken.
    """

    def make(roots: dict[str, Path]) -> tuple[list[dict], dict]:
        drawings = list_drawings(roots["openclipart-png"] / PNG_ROOT, roots["openclipart-svg"] / SVG_ROOT)
        rows, stats = build_rows(drawings, size, workers=workers)
        if len(rows) <= TEST_IMAGES + VALIDATION_IMAGES:
            raise RuntimeError(f"Only {len(rows)} images survived cleaning; expected several thousand.")
        return rows, {
            "build_version": BUILD_VERSION,
            "size": size,
            "seed": seed,
            "packages": sorted(p.name for p in (cache_dir / "debs").glob("*.deb")),
            "counts": stats,
        }

    return build_once(
        cache_dir / f"openclipart-v{BUILD_VERSION}-{size}px-seed{seed}",
        lambda: fetch_packages(cache_dir),
        make,
        features=_features(),
        seed=seed,
        test_images=TEST_IMAGES,
        validation_images=VALIDATION_IMAGES,
    )


def main(argv=None) -> int:
    return build_main(argv, description=__doc__.split("\n\n")[0], build=build, label="path")


if __name__ == "__main__":
    sys.exit(main())
