"""``preview.png``: a grid of the first pairs of a distilled set, each image above its caption, and beside it a
few of its members (the real pairs it stands for, closest first) when the source's images are at hand."""

from __future__ import annotations

import numpy as np


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width:  # a word wider than the tile is cut
            cut = max(1, int(len(word) * width / font.getlength(word)))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def _paste(canvas, draw, image, box, font) -> None:
    """Fit ``image`` into the square ``box`` (x, y, side), centred; a grey square when there is none."""
    x, y, side = box
    if image is None:
        draw.rectangle((x, y, x + side - 1, y + side - 1), fill=(225, 225, 225))
        draw.text((x + 4, y + side // 2 - 6), "no image", fill=(110, 110, 110), font=font)
        return
    from PIL import Image

    image = image.convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Small images (the demo's) are enlarged pixel by pixel rather than blurred.
    image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
    canvas.paste(image, (x + (side - size[0]) // 2, y + (side - size[1]) // 2))


def closest_members(members, pairs: int, per_pair: int, *, batch_size: int = 1_000_000) -> dict[int, list[int]]:
    """For each pair below ``pairs``, the rows of ``members`` of its ``per_pair`` closest members (highest
    ``image_similarity + text_similarity`` first), read a batch of rows at a time.

    Example:
        ```py
        >>> closest_members(pds_hf.members(small), 4, 3)
        {0: [12, 40, 7], 1: [3, 5, 90], 2: [...], 3: [...]}
        ```
    """
    best: dict[int, list[tuple[float, int]]] = {pair: [] for pair in range(pairs)}
    columns = members.select_columns(["pair", "image_similarity", "text_similarity"]).with_format("numpy")
    for start in range(0, len(members), batch_size):
        batch = columns[start : start + batch_size]
        score = batch["image_similarity"].astype(np.float64) + batch["text_similarity"]
        for row in np.flatnonzero(batch["pair"] < pairs):
            best[int(batch["pair"][row])].append((-float(score[row]), start + int(row)))
    return {pair: [row for _, row in sorted(found)[:per_pair]] for pair, found in best.items()}


def preview_grid(
    ds,
    *,
    num_pairs: int = 16,
    columns: int = 4,
    tile: int = 192,
    caption_lines: int = 3,
    members=None,
    source=None,
    image_column: str = "image",
    members_per_pair: int = 4,
):
    """A PNG-ready grid of the first ``num_pairs`` pairs: each image above its row number, support and caption.

    With ``members`` and the ``source`` Dataset they index, each pair's image has beside it its
    ``members_per_pair`` closest members' images (see :func:`closest_members`), two by two, and the grid holds
    half as many pairs per row.

    Args:
        ds: a distilled ``datasets.Dataset``.
        num_pairs: pairs shown (at most the dataset's rows).
        columns: pairs per grid row (halved, at least one, with members).
        tile: side in pixels of each image cell (images are scaled to fit).
        caption_lines: caption lines shown before an ellipsis.
        members: the members ``Dataset`` (:func:`pds_hf.members`), or None.
        source: the map-style source ``Dataset`` the members' ``source_row`` index, or None.
        image_column: the source's image column.
        members_per_pair: members shown beside each pair (at most 4).

    Returns:
        A ``PIL.Image.Image``.

    Example:
        ```py
        >>> preview_grid(small, num_pairs=8, members=pds_hf.members(small), source=ds).save("preview.png")
        ```
    """
    from PIL import Image, ImageDraw, ImageFont

    count = min(num_pairs, len(ds))
    if count < 1:
        raise ValueError(f"Nothing to preview: num_pairs={num_pairs}, rows={len(ds)}.")
    font = ImageFont.load_default(size=13)
    line = font.getbbox("Ag")[3] + 3
    pad = 8
    text_height = line * (caption_lines + 1) + 4
    shown: dict[int, list] = {}
    if members is not None and source is not None and image_column in source.column_names and len(members):
        rows = closest_members(members, count, min(members_per_pair, 4))
        wanted = sorted({int(members[row]["source_row"]) for found in rows.values() for row in found})
        images = dict(zip(wanted, source.select_columns([image_column])[wanted][image_column], strict=True))
        shown = {pair: [images[int(members[row]["source_row"])] for row in found] for pair, found in rows.items()}
    width = tile + pad + tile if shown else tile  # the members' 2x2 block is one tile wide
    cols = min(max(1, columns // 2) if shown else columns, count)
    grid_rows = -(-count // cols)
    canvas = Image.new("RGB", (pad + cols * (width + pad), pad + grid_rows * (tile + text_height + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    rows = ds.select_columns(["image", "caption", "support"]).select(range(count))
    small = (tile - 4) // 2
    for i, row in enumerate(rows):
        x = pad + (i % cols) * (width + pad)
        y = pad + (i // cols) * (tile + text_height + pad)
        _paste(canvas, draw, row["image"], (x, y, tile), font)
        if shown:
            left = x + tile + pad
            draw.rectangle((left - 3, y, left - 3, y + tile - 1), fill=(200, 200, 200))
            for k, image in enumerate(shown.get(i, [])):
                _paste(canvas, draw, image, (left + (k % 2) * (small + 4), y + (k // 2) * (small + 4), small), font)
            if not shown.get(i):
                draw.text((left, y + tile // 2 - 6), "no members", fill=(110, 110, 110), font=font)
        label = f"#{i}  support {row['support']}" + ("  | closest members" if shown else "")
        draw.text((x, y + tile + 2), label, fill=(110, 110, 110), font=font)
        for k, text in enumerate(_wrap(row["caption"], font, width, caption_lines), start=1):
            draw.text((x, y + tile + 2 + k * line), text, fill=(0, 0, 0), font=font)
    return canvas


def pairs_table(ds, *, max_rows: int = 20, caption_width: int = 70) -> str:
    """The first ``max_rows`` pairs of a distilled set as plain text: row number, support and caption, a line each.

    Args:
        ds: a distilled ``datasets.Dataset``.
        max_rows: pairs listed; a last line says how many more there are.
        caption_width: characters of a caption shown before ``...``.

    Returns:
        The table, lines joined by newlines (no trailing newline).

    Example:
        ```py
        >>> print(pairs_table(small, max_rows=2))
          row  support  caption
            0       31  a small red circle
            1       24  a large blue square on the left on a dark background
        ... 14 more pairs (all of them are in the dataset and its card)
        ```
    """
    count = min(max_rows, len(ds))
    rows = ds.select_columns(["caption", "support"]).select(range(count))
    lines = [f"{'row':>5}  {'support':>7}  caption"]
    for i, row in enumerate(rows):
        caption = " ".join(str(row["caption"]).split())
        if len(caption) > caption_width:
            caption = caption[: caption_width - 3] + "..."
        lines.append(f"{i:>5}  {row['support']:>7}  {caption}")
    if len(ds) > count:
        lines.append(f"... {len(ds) - count} more pairs (all of them are in the dataset and its card)")
    return "\n".join(lines)
