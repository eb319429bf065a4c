"""An image-caption dataset from the npm package ``openmoji`` 17.0.0, built offline and cached on disk.

OpenMoji (CC BY-SA 4.0) ships 4,495 colour emoji as SVG (``package/color/svg/<hexcode>.svg``) and their
Unicode CLDR data in ``package/data/openmoji.json``: per emoji an ``annotation`` (the CLDR short name,
``sun behind cloud``), CLDR ``tags`` and OpenMoji's own ``openmoji_tags`` (keyword lists), a ``group``
(11 kinds: smileys, people, animals and nature, food, travel, activities, objects, symbols, flags and
OpenMoji's two extra sets) and a ``subgroups`` label. It is unlike openclipart on purpose: one drawing
style, flat colours on a 72 x 72 grid, short and clean human-written captions, some tens of categories.

Which emoji are kept:

1. **No skin-tone variants** (the 2,030 rows with a ``skintone``): each is its base emoji recoloured, and its
   caption differs only by ``: dark skin tone``, so it would be a near-duplicate pair. The base emoji stays.
2. **No ``component`` group** (skin-tone swatches and hair parts, which are not pictures of anything).

How captions are made (at most two per image):

1. **Annotation**, whitespace collapsed (``flag: Japan``, ``person lifting weights``).
2. **Keywords**: the CLDR tags then the OpenMoji tags, each once, in that order, joined by ``, ``, when there
   are at least :data:`MIN_KEYWORDS` of them (``behind, cloud, cloudy, sun, weather``).
3. **Duplicates.** Every caption string (compared lower-cased, punctuation removed) is kept for the first
   emoji that has it (annotations before keyword lists, emoji in the package's ``order``) and dropped from
   the others. Identical images (same 32 x 32 thumbnail at 5 bits per channel) are merged first.
   An emoji left without a caption is dropped.

Images: each SVG rasterised with ``cairosvg`` at ``size`` x ``size`` and composited on white (RGB).

Splits: a permutation of the images by ``seed`` gives ``test`` (:data:`TEST_IMAGES`), ``validation``
(:data:`VALIDATION_IMAGES`) and ``train`` (the rest, about 1,650). One row per image: ``image``,
``caption`` (a list of one or two strings), ``hexcode``, ``group``, ``subgroup``.

The package comes from the npm registry (``npm pack openmoji@17.0.0``, about 4 MB) into ``cache_dir``;
the build is saved there with ``save_to_disk`` and a later call loads it in a second. Nothing is written
into the repository.

Run it alone: ``python benchmarks/quality/openmoji.py`` prints the counts and a few rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset_build import DEFAULT_CACHE, build_once  # noqa: E402
from dataset_build import main as build_main  # noqa: E402
from openclipart import claim_captions, normalize_text  # noqa: E402

PACKAGE = "openmoji@17.0.0"
TARBALL = "openmoji-17.0.0.tgz"
SVG_DIR = "package/color/svg/"
DATA_FILE = "package/data/openmoji.json"
# Bump when the rules change, so that an old cached build is not reused.
BUILD_VERSION = 1
MIN_KEYWORDS = 2
TEST_IMAGES = 500
VALIDATION_IMAGES = 300


def fetch_package(cache_dir: Path) -> Path:
    """The package tarball in ``cache_dir/npm``, fetched with ``npm pack`` the first time.

    Returns:
        The path of ``openmoji-17.0.0.tgz``.
    """
    where = cache_dir / "npm"
    tarball = where / TARBALL
    if tarball.exists():
        return tarball
    where.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["npm", "pack", PACKAGE], cwd=where, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise RuntimeError(
            f"npm is not installed; install it (apt-get install npm) or put {TARBALL} from "
            f"`npm pack {PACKAGE}` into {where} by hand."
        ) from err
    if result.returncode != 0 or not tarball.exists():
        raise RuntimeError(
            f"`npm pack {PACKAGE}` failed ({result.stderr.strip()[-300:]}). Run it by hand in {where} and build again."
        )
    return tarball


def read_package(tarball: Path) -> tuple[list[dict], dict[str, bytes]]:
    """``(emoji entries of openmoji.json, {hexcode: colour SVG bytes})`` read straight from the tarball."""
    entries, svgs = None, {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            if member.name == DATA_FILE:
                entries = json.loads(archive.extractfile(member).read().decode("utf-8"))
            elif member.name.startswith(SVG_DIR) and member.name.endswith(".svg"):
                svgs[member.name[len(SVG_DIR) : -len(".svg")]] = archive.extractfile(member).read()
    if entries is None:
        raise RuntimeError(f"{tarball} has no {DATA_FILE}; is it the openmoji package (npm pack {PACKAGE})?")
    return entries, svgs


def keyword_caption(entry: dict) -> str:
    """The CLDR tags then the OpenMoji tags, each once, joined by ``, `` ('' below :data:`MIN_KEYWORDS`)."""
    words = []
    for field in ("tags", "openmoji_tags"):
        for word in (entry.get(field) or "").split(","):
            word = normalize_text(word)
            if word and word.lower() not in {w.lower() for w in words}:
                words.append(word)
    return ", ".join(words) if len(words) >= MIN_KEYWORDS else ""


def render(svg: bytes, size: int):
    """The SVG rasterised at ``size`` x ``size`` on white (RGB PIL image); ``None`` if unusable."""
    import cairosvg
    from PIL import Image

    try:
        png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
        with Image.open(io.BytesIO(png)) as source:
            image = source.convert("RGBA")
    except Exception:
        return None
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    square = canvas.convert("RGB")
    if square.size != (size, size) or np.asarray(square).std() < 1.0:
        return None
    return square


def build_rows(entries: list[dict], svgs: dict[str, bytes], size: int) -> tuple[list[dict], dict]:
    """Select, render, merge identical images and de-duplicate captions; return the rows and the counts."""
    from PIL import Image

    stats = Counter(emoji=len(entries))
    images: dict[str, dict] = {}
    for entry in sorted(entries, key=lambda e: (e.get("order") or 0, e["hexcode"])):
        if entry.get("skintone") not in ("", None):
            stats["skin-tone variant (dropped)"] += 1
            continue
        if entry.get("group") == "component":
            stats["component (dropped)"] += 1
            continue
        svg = svgs.get(entry["hexcode"])
        image = render(svg, size) if svg is not None else None
        if image is None:
            stats["missing or unusable SVG (dropped)"] += 1
            continue
        thumb = np.asarray(image.resize((32, 32), Image.LANCZOS), dtype=np.uint8) >> 3
        key = hashlib.sha1(thumb.tobytes()).hexdigest()
        candidates = [(0, normalize_text(entry.get("annotation") or "")), (1, keyword_caption(entry))]
        if key in images:
            stats["identical image (merged)"] += 1
            images[key]["candidates"] += candidates
            continue
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images[key] = {
            "image": {"bytes": buffer.getvalue(), "path": None},
            "hexcode": entry["hexcode"],
            "group": entry.get("group") or "",
            "subgroup": entry.get("subgroups") or "",
            "candidates": candidates,
            "caption": [],
        }

    dropped = claim_captions(images.values())
    if dropped:
        stats["duplicate caption (dropped)"] += len(dropped)
    rows = []
    for row in images.values():
        if not row["caption"]:
            stats["emoji without a caption (dropped)"] += 1
            continue
        rows.append({name: row[name] for name in ("image", "caption", "hexcode", "group", "subgroup")})
    stats["images"] = len(rows)
    stats["captions"] = sum(len(row["caption"]) for row in rows)
    stats["groups"] = len({row["group"] for row in rows})
    return rows, dict(stats)


def _features():
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "caption": List(Value("string")),
            "hexcode": Value("string"),
            "group": Value("string"),
            "subgroup": Value("string"),
        }
    )


def build(
    cache_dir: Path = DEFAULT_CACHE,
    *,
    size: int = 224,
    seed: int = 0,
    tarball: Path | None = None,
    test_images: int = TEST_IMAGES,
    validation_images: int = VALIDATION_IMAGES,
):
    """The dataset as a ``DatasetDict`` (``train``, ``validation``, ``test``), built once and then loaded.

    Args:
        cache_dir: where the npm tarball and the built dataset are kept (outside the repository's tracked
            files; ``benchmarks/**/cache/`` is ignored by git).
        size: side of the square images in pixels.
        seed: seeds the split.
        tarball: an ``openmoji`` package tarball to read instead of fetching one with ``npm pack``.
        test_images, validation_images: images in the test and validation splits; train gets the rest.

    Returns:
        ``(dataset_dict, manifest)``; the manifest records the counts, the splits and the time taken.

    Example:
        ```py
        >>> splits, manifest = build()
        >>> len(splits["train"]), splits["train"][0]["caption"]
        (1617, ['hyphen-minus', 'hyphen, minus, dash, line'])
        ```
    """
    name = f"openmoji-v{BUILD_VERSION}-{size}px-seed{seed}-{test_images}-{validation_images}"
    if tarball is not None:
        name += "-" + hashlib.sha1(Path(tarball).read_bytes()).hexdigest()[:8]

    def fetch() -> tuple[Path, tuple[list[dict], dict[str, bytes]]]:
        path = Path(tarball) if tarball is not None else fetch_package(cache_dir)
        return path, read_package(path)

    def make(package: tuple[Path, tuple[list[dict], dict[str, bytes]]]) -> tuple[list[dict], dict]:
        path, (entries, svgs) = package
        rows, stats = build_rows(entries, svgs, size)
        if len(rows) <= test_images + validation_images:
            raise RuntimeError(
                f"Only {len(rows)} emoji survived selection, not more than the {test_images} test "
                f"and {validation_images} validation images; pass smaller test_images / "
                "validation_images."
            )
        return rows, {"build_version": BUILD_VERSION, "package": path.name, "size": size, "seed": seed, "counts": stats}

    return build_once(
        cache_dir / name,
        fetch,
        make,
        features=_features(),
        seed=seed,
        test_images=test_images,
        validation_images=validation_images,
    )


def main(argv=None) -> int:
    return build_main(argv, description=__doc__.split("\n\n")[0], build=build, label="group")


if __name__ == "__main__":
    sys.exit(main())
