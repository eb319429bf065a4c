"""``preview.png``: a grid of the first pairs of a distilled set, each image above its caption."""

from __future__ import annotations


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


def preview_grid(ds, *, num_pairs: int = 16, columns: int = 4, tile: int = 192, caption_lines: int = 3):
    """A PNG-ready grid of the first ``num_pairs`` pairs: each image above its row number, support and caption.

    Args:
        ds: a distilled ``datasets.Dataset``.
        num_pairs: pairs shown (at most the dataset's rows).
        columns: pairs per grid row.
        tile: side in pixels of each image cell (images are scaled to fit).
        caption_lines: caption lines shown before an ellipsis.

    Returns:
        A ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw, ImageFont

    count = min(num_pairs, len(ds))
    if count < 1:
        raise ValueError(f"Nothing to preview: num_pairs={num_pairs}, rows={len(ds)}.")
    font = ImageFont.load_default(size=13)
    line = font.getbbox("Ag")[3] + 3
    pad = 8
    text_height = line * (caption_lines + 1) + 4
    cols = min(columns, count)
    grid_rows = -(-count // cols)
    canvas = Image.new("RGB", (pad + cols * (tile + pad), pad + grid_rows * (tile + text_height + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    rows = ds.select_columns(["image", "caption", "support"]).select(range(count))
    for i, row in enumerate(rows):
        x = pad + (i % cols) * (tile + pad)
        y = pad + (i // cols) * (tile + text_height + pad)
        image = row["image"]
        if image is None:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=(225, 225, 225))
            draw.text((x + pad, y + tile // 2), "no image", fill=(110, 110, 110), font=font)
        else:
            image = image.convert("RGB")
            scale = tile / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            # Small images (the demo's) are enlarged pixel by pixel rather than blurred.
            image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
            canvas.paste(image, (x + (tile - size[0]) // 2, y + (tile - size[1]) // 2))
        draw.text((x, y + tile + 2), f"#{i}  support {row['support']}", fill=(110, 110, 110), font=font)
        for k, text in enumerate(_wrap(row["caption"], font, tile, caption_lines), start=1):
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
