"""Publishing a distilled set: a Hub dataset repo with a dataset card, on the Hub or in a local folder.

The layout is the one ``Dataset.push_to_hub`` writes and ``load_dataset`` reads, plus a preview:

- ``data/train-00000-of-0000N.parquet``: the rows, images embedded;
- ``README.md``: a dataset card rendered from ``model_cards/dataset_card_template.md``, whose YAML lists
  the ``default`` config, the features, the license and the tags, and whose body says how the set was made;
- ``preview.png``: a grid of the first pairs, each image above its caption, shown by the card.

:func:`push_to_hub` uploads all of it in one commit, after checking the token, the namespace and the
license (before any expensive work); :func:`save_to_folder` writes the same files into a folder that
appears whole or not at all.

The card's body sits between two HTML comments (``<!-- pds-hf:begin ... -->`` and ``<!-- pds-hf:end -->``).
Publishing again replaces that block only: text written outside it, and YAML keys pds-hf does not set,
are kept. ``Dataset.push_to_hub`` on the same repo keeps the whole body and rewrites only
``dataset_info``/``configs``.

License: ``license=`` (CLI ``--license``) when given; else the license already declared by the card on the
repository (or in the folder being replaced); else the license declared by the source dataset's card
(``source=``, a Hub id or a local folder). ``push_to_hub`` refuses to upload when none of these is known;
``save_to_folder`` writes ``license: unknown`` and says so in the card.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SPLIT = "train"
DATA_DIR = "data"
README = "README.md"
PREVIEW = "preview.png"


METADATA_SUMMARY = "Everything pds-hf recorded about this run"


def metadata_from_card(where, *, revision: str | None = None, token=None) -> dict:
    """The run record (:func:`pds_hf.metadata`) that a published card carries, from a folder or a Hub id."""
    folder = Path(where)
    if folder.is_dir():
        path = folder / README
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {README}; is it a folder written by pds_hf.save_to_folder?")
        text = path.read_text(encoding="utf-8")
    elif _is_hub_id(str(where)):
        from huggingface_hub import hf_hub_download

        text = Path(hf_hub_download(str(where), README, repo_type="dataset", revision=revision,
                                    token=token)).read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(f"{where!s} is neither a folder nor a Hub dataset id.")
    start = text.find(METADATA_SUMMARY)
    begin = text.find("```json", start) if start >= 0 else -1
    end = text.find("```", begin + len("```json")) if begin >= 0 else -1
    if end < 0:
        raise ValueError(f"The dataset card of {where!s} holds no pds-hf run record; was it published by pds_hf?")
    try:
        return json.loads(text[begin + len("```json"):end])
    except ValueError as err:
        raise ValueError(f"The pds-hf run record in the card of {where!s} is not valid JSON ({err}); "
                         "was the card edited by hand?") from None


def _template_path() -> Path:
    """The card template: the copy a wheel installs in the package, else ``model_cards/`` of a source checkout."""
    name = "dataset_card_template.md"
    installed = Path(__file__).resolve().parent / "model_cards" / name
    return installed if installed.is_file() else Path(__file__).resolve().parent.parent / "model_cards" / name


TEMPLATE_PATH = _template_path()
BLOCK_BEGIN = "<!-- pds-hf:begin"
BLOCK_END = "<!-- pds-hf:end -->"
TAGS = ("dataset-distillation", "synthetic", "pds")
TASK_CATEGORIES = ("image-to-text", "text-to-image")
UNKNOWN_LICENSES = ("", "unknown")
SUPPORT_ROWS_SHOWN = 100
PAPER = "PDS (Choi, Mo, Chae; ICLR 2026, arXiv 2602.19756)"


class PublishError(RuntimeError):
    """Publishing was refused or failed; the message says why, what was (not) changed, and the fix."""


@dataclass
class _Source:
    """The source dataset as the publisher names it: Hub id or folder, revision, which rows were used."""

    id: object = None
    revision: str | None = None
    selection: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# License
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LicenseChoice:
    """The license a card declares and where it came from.

    Attributes:
        license: a Hub license id (``"cc-by-4.0"``, ``"other"``...) or None when unknown.
        origin: ``"given"`` (``license=``), ``"repository"`` (the card being replaced), ``"source"``
            (the source dataset's card) or ``"unknown"``.
        detail: why, in words (what was looked up and what it said).
    """

    license: str | None
    origin: str
    detail: str


def _declared_license(card_data) -> str | None:
    value = card_data.get("license") if card_data else None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or value.strip().lower() in UNKNOWN_LICENSES:
        return None
    return value.strip()


def _is_hub_id(source) -> bool:
    return isinstance(source, str) and source.count("/") == 1 and not Path(source).exists()


def _source_card_data(source, revision: str | None, token) -> tuple[dict | None, str]:
    """The YAML of the source's card (a Hub dataset or a local folder), or None and why it could not be read."""
    from huggingface_hub import DatasetCard, HfApi

    path = Path(source)
    if path.is_dir():
        if (path / README).is_file():
            return DatasetCard.load(path / README).data.to_dict(), f"the card in {path}"
        if (path / "dataset_info.json").is_file():  # a save_to_disk folder
            info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
            return {"license": info.get("license")}, f"dataset_info.json in {path}"
        return {}, f"{path} (no README.md)"
    if not _is_hub_id(source):
        return None, f"{source!r} is neither a folder nor a Hub dataset id"
    try:
        info = HfApi(token=token).dataset_info(source, revision=revision)
    except Exception as err:  # HTTP or connection error: reported, and the license stays unknown
        return None, f"the card of {source} could not be read ({type(err).__name__}: {str(err).splitlines()[0]})"
    return (info.card_data.to_dict() if info.card_data else {}), f"the card of {source}"


def resolve_license(*, license: str | None = None, existing_card=None, source=None,
                    source_revision: str | None = None, token=None) -> LicenseChoice:
    """Decide the license of a distilled set: ``license=``, else the existing card's, else the source's.

    The captions of a distilled set are copied from its source (and, without synthesis, its images too), so
    the source's license is the right default; a publisher who knows better passes ``license=``.

    Args:
        license: a Hub license id chosen by the publisher; wins over everything else.
        existing_card: the ``DatasetCard`` already on the repository (or in the folder) being replaced.
        source: the source dataset: a Hub id or a local folder (its ``README.md`` or ``dataset_info.json``).
        source_revision: the revision of a Hub ``source`` to read the card at.
        token: token for reading a private source.

    Returns:
        A :class:`LicenseChoice`; its ``license`` is None when nothing declares one.
    """
    if license is not None:
        if not isinstance(license, str) or not license.strip():
            raise ValueError(f"license must be a Hub license id such as 'cc-by-4.0' or 'other', got {license!r}.")
        return LicenseChoice(license.strip(), "given", "set by the publisher")
    declared = _declared_license(existing_card.data if existing_card is not None else None)
    if declared:
        return LicenseChoice(declared, "repository", "kept from the card already published")
    if source is None:
        return LicenseChoice(None, "unknown", "no license= was given and no source dataset was named (source=)")
    data, where = _source_card_data(source, source_revision, token)
    declared = _declared_license(data)
    if declared:
        return LicenseChoice(declared, "source", f"declared by {where}")
    if data is None:
        return LicenseChoice(None, "unknown", where)
    return LicenseChoice(None, "unknown", f"{where} declares no license")


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((name for limit, name in bounds if n < limit), "n>10M")


def _union(existing, new) -> list:
    existing = existing if isinstance(existing, list) else ([existing] if existing else [])
    return existing + [value for value in new if value not in existing]


def _cell(text, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value) -> str:
    if value is None:
        return "none"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _evaluation_markdown(evaluation) -> str | None:
    """Markdown from an evaluation report object (``to_markdown()``), a markdown file, or markdown text."""
    if evaluation is None:
        return None
    if hasattr(evaluation, "to_markdown"):
        return evaluation.to_markdown().strip()
    if isinstance(evaluation, os.PathLike) or (isinstance(evaluation, str) and os.path.isfile(evaluation)):
        path = Path(evaluation)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation={str(path)!r}: no such file (pass a markdown file, markdown text, "
                                    "or the report of pds_hf.evaluation).")
        return path.read_text(encoding="utf-8").strip()
    if isinstance(evaluation, str):
        return evaluation.strip()
    raise TypeError(f"evaluation must be markdown text, a markdown file or an evaluation report, got "
                    f"{type(evaluation).__name__}.")


def _metadata_or_empty(ds) -> dict:
    from .schema import read_run_record

    try:
        return read_run_record(ds)
    except ValueError:
        logger.warning("The dataset carries no pds_hf metadata: its card will say 'not recorded' for how it was made.")
        return {}


_SYNTHESIS = {
    "unclip": ("Every image is synthetic: Stable unCLIP decoded it from the image prototype, prompted with the "
               "caption.",
               "synthetic image decoded by Stable unCLIP from the image prototype, prompted with the caption",
               "decode each image prototype into an image with Stable unCLIP, prompted with that caption"),
    "retrieve": ("Every image is a real image of the source: the one nearest (cosine) to the image prototype.",
                 "the real source image nearest (cosine) to the image prototype",
                 "take the real image nearest to each image prototype"),
    "none": ("No images were made (`synthesis=\"none\"`): the `image` column is empty; train on the embeddings.",
             "empty: no images were made", "no images are made"),
    "baseline": ("Every image is a real image of the source: the image of the chosen pair.",
                 "the real image of the chosen pair", "its own image"),
    "unknown": ("How the images were made was not recorded.", "an image", "the images were made"),
}


def _limitations(synthesis: str, config: dict, encoder: str, evaluated: bool, zero: int) -> list[str]:
    lines = []
    if synthesis == "baseline":
        lines.append("The pairs are real pairs of the source chosen by a baseline, not synthesized: their images "
                     "and captions carry the source's terms, content and biases unchanged.")
    elif synthesis == "unclip":
        lines.append(f"The images are synthetic (Stable unCLIP, {config.get('num_inference_steps')} steps, guidance "
                     f"{config.get('guidance_scale')}): they follow the prototypes, they are not photographs, and "
                     "they can show decoder artefacts or unreadable text.")
    elif synthesis == "retrieve":
        lines.append("The images are real images of the source, copied with its terms and content.")
    elif synthesis == "none":
        lines.append("There are no images: only the embeddings and captions can be trained on.")
    lines.append("The captions are real captions of the source, copied verbatim: they inherit its language, "
                 "biases and mistakes.")
    lines.append(f"The embeddings belong to `{encoder}`: they mean nothing to another encoder, and concepts too "
                 "rare to dominate any cluster are not represented.")
    if zero:
        lines.append(f"{zero} row(s) have no real pair behind them (support 0): their prototypes are k-means centres.")
    lines.append("Evaluated only as reported above: other students, encoders and tasks may behave differently."
                 if evaluated else "Not evaluated: how well a student trained on it performs is unknown.")
    return lines


def _license_note(choice: LicenseChoice, source_name: str) -> str:
    if choice.license is None:
        return (f"Unknown ({choice.detail}). The captions come from {source_name}, whose terms apply; declare a "
                "license (`license=` / `--license`) before sharing this set.")
    where = {"given": "set by the publisher", "repository": "kept from the card this one replaced",
             "source": f"taken from {source_name}, whose captions this set contains"}[choice.origin]
    return (f"`{choice.license}`, {where}. The captions (and any real images) come from {source_name}: its "
            "terms apply to them as well.")


def _card_context(ds, meta: dict, *, repo_id, src: _Source, choice: LicenseChoice, evaluation_md,
                  preview: str | None, preview_count: int) -> dict:
    from huggingface_hub import constants

    config = meta.get("config", {})
    recorded = meta.get("source", {})
    models = meta.get("models", {})
    method = config.get("method", "pds")
    synthesis = config.get("synthesis", "unknown")
    if method != "pds" and synthesis != "none":
        synthesis = "baseline"
    source_id = str(src.id if src.id is not None else (recorded.get("dataset") or "an unnamed dataset"))
    url = f"{constants.ENDPOINT}/datasets/{source_id}" if _is_hub_id(source_id) else None
    layout = recorded.get("layout")
    support = np.asarray(list(ds["support"]), dtype=np.int64)
    captions = list(ds["caption"])
    image_clusters, text_clusters = list(ds["image_cluster"]), list(ds["text_cluster"])
    shown = min(len(ds), SUPPORT_ROWS_SHOWN)
    stages = meta.get("stages_seconds", {})
    encoder = models.get("encoder") or config.get("clip_model") or "the encoder"
    name = source_id.rsplit("/", 1)[-1]
    not_recorded = "not recorded"
    return dict(
        name=name,
        title=f"{name} distilled to {len(ds)} image-text pairs",
        num_pairs=len(ds),
        source_pairs=recorded.get("num_pairs"),
        load_path=repo_id or "path/to/this/folder",
        method=method,
        method_text=PAPER if method == "pds" else f"the `{method}` baseline (real pairs chosen on CLIP embeddings)",
        synthesis_text=_SYNTHESIS[synthesis][0],
        image_column_text=_SYNTHESIS[synthesis][1],
        synthesis_step=_SYNTHESIS[synthesis][2],
        image_size=config.get("image_size"),
        embedding_dim=ds.features["text_embedding"].length,
        encoder=encoder,
        encoder_revision=models.get("encoder_revision"),
        unclip=models.get("unclip"),
        unclip_revision=models.get("unclip_revision"),
        rm_ratio_percent=f"{100 * float(config.get('rm_ratio', 0.2)):g}%",
        normalize=bool(config.get("normalize", False)),
        source=dict(
            id=source_id, url=url, config=recorded.get("config"), split=recorded.get("split"),
            selection=src.selection, revision=src.revision, fingerprint=recorded.get("fingerprint"),
            num_rows=recorded.get("num_rows", not_recorded), num_pairs=recorded.get("num_pairs", not_recorded),
            num_images=recorded.get("num_images", not_recorded),
            num_captions=recorded.get("num_captions", not_recorded),
            skipped_images=recorded.get("skipped_images", not_recorded),
            layout_text={"image": "one row per image, a list of captions each",
                         "pair": "one row per image-caption pair"}.get(layout, "layout not recorded"),
        ),
        kept_pairs=meta.get("kept_pairs"),
        empty_intersections=meta.get("empty_intersections"),
        processes=meta.get("processes"),
        seed=config.get("seed", not_recorded),
        config_rows=[(key, _plain(value)) for key, value in config.items()],
        stages=[(stage, f"{seconds:.2f}") for stage, seconds in stages.items()],
        total_seconds=f"{sum(stages.values()):.2f}",
        versions=list(meta.get("versions", {}).items()),
        support=dict(min=int(support.min()), max=int(support.max()), median=f"{np.median(support):g}",
                     mean=f"{support.mean():.1f}", zero=int((support == 0).sum())),
        supports_shown=shown,
        supports=[dict(index=i, caption=_cell(captions[i]), support=int(support[i]),
                       image_cluster=image_clusters[i], text_cluster=text_clusters[i]) for i in range(shown)],
        preview=preview,
        preview_count=preview_count,
        evaluation=evaluation_md,
        limitations=_limitations(synthesis, config, encoder, evaluation_md is not None,
                                 int((support == 0).sum())),
        license_note=_license_note(choice, f"[{source_id}]({url})" if url else f"`{source_id}`"),
        metadata_json=json.dumps(meta, indent=2, default=str),
    )


def _card_data(ds, existing_card, *, choice: LicenseChoice, name: str, source, sizes: tuple[int, int] | None):
    """The card's YAML: the existing card's keys, with the ones pds-hf owns set or merged."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(**(existing_card.data.to_dict() if existing_card is not None else {}))
    data["license"] = choice.license or "unknown"
    if not data.get("pretty_name"):
        data["pretty_name"] = f"{name}, distilled with PDS"
    data["size_categories"] = [_size_category(len(ds))]
    data["task_categories"] = _union(data.get("task_categories"), TASK_CATEGORIES)
    data["annotations_creators"] = _union(data.get("annotations_creators"), ["machine-generated"])
    if _is_hub_id(source):
        data["source_datasets"] = _union(data.get("source_datasets"), [source])
    data["tags"] = _union(data.get("tags"), TAGS)
    if sizes is not None:
        dataset_size, download_size = sizes
        splits = SplitDict()
        splits.add(SplitInfo(name=SPLIT, num_bytes=dataset_size, num_examples=len(ds)))
        info = DatasetInfo(features=ds.features, splits=splits, download_size=download_size,
                           dataset_size=dataset_size)
        DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs({"default": {"data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}) \
        .to_dataset_card_data(data)
    return data


def _splice(existing_body: str | None, block: str) -> str:
    """Put the generated block in place of the old one, keeping whatever the existing body has around it.

    Publishing the same set twice gives the same text (nothing accumulates around the block).
    """
    existing_body = (existing_body or "").lstrip("\n")
    start = existing_body.find(BLOCK_BEGIN)
    end = existing_body.find(BLOCK_END, start)
    if start != -1 and end != -1:
        return existing_body[:start] + block + existing_body[end + len(BLOCK_END):]
    if existing_body.strip():
        return f"{block}\n\n{existing_body}"
    return f"{block}\n"


def dataset_card(ds, *, repo_id: str | None = None, license: str | None = None, source=None,
                 source_revision: str | None = None, source_selection: str | None = None, evaluation=None,
                 existing_card=None, preview: str | None = None, preview_count: int = 0,
                 sizes: tuple[int, int] | None = None, template_path=None, token=None):
    """Render the dataset card of a distilled set from ``model_cards/dataset_card_template.md``.

    Args:
        ds: a distilled ``datasets.Dataset`` (made by :func:`pds_hf.distill`).
        repo_id: the Hub id the set is (or will be) published as, for the ``load_dataset`` example.
        license: see :func:`resolve_license`; an unknown license renders as ``unknown``.
        source: the source dataset's Hub id or folder, named in the card and used for the license.
        source_revision: the source revision (commit id) the set was made from.
        source_selection: which rows of the source were distilled, in words (e.g. the Karpathy train split).
        evaluation: an evaluation report (anything with ``to_markdown()``), a markdown file or markdown text.
        existing_card: a ``DatasetCard`` this one replaces: its YAML keys and its text outside the
            pds-hf block are kept.
        preview: the repo path of the preview image, if one is published beside the card.
        preview_count: how many pairs the preview shows.
        sizes: ``(dataset_size, download_size)`` in bytes, to declare ``dataset_info`` in the YAML.
        template_path: another Jinja template (default ``model_cards/dataset_card_template.md``).
        token: token for reading a private source's card.

    Returns:
        A ``huggingface_hub.DatasetCard``; ``str(card)`` is the ``README.md`` text.

    Example:
        ```py
        >>> card = pds_hf.publish.dataset_card(small, repo_id="me/flickr30k-pds-100", license="cc-by-4.0")
        >>> card.data.tags
        ['dataset-distillation', 'synthetic', 'pds']
        ```
    """
    _check_distilled(ds)
    choice = resolve_license(license=license, existing_card=existing_card, source=source,
                             source_revision=source_revision, token=token)
    return _render_card(ds, choice=choice, repo_id=repo_id, src=_Source(source, source_revision, source_selection),
                        evaluation_md=_evaluation_markdown(evaluation), existing_card=existing_card, preview=preview,
                        preview_count=preview_count, sizes=sizes, template_path=template_path)


def _render_card(ds, *, choice, repo_id, src: _Source, evaluation_md, existing_card, preview, preview_count, sizes,
                 template_path=None):
    from huggingface_hub import DatasetCard

    template_path = Path(template_path or TEMPLATE_PATH)
    if not template_path.is_file():
        raise FileNotFoundError(f"The dataset card template {template_path} is missing; pass template_path=... "
                                "(the source tree ships it in model_cards/).")
    context = _card_context(ds, _metadata_or_empty(ds), repo_id=repo_id, src=src, choice=choice,
                            evaluation_md=evaluation_md, preview=preview, preview_count=preview_count)
    data = _card_data(ds, existing_card, choice=choice, name=context["name"], source=src.id, sizes=sizes)
    rendered = DatasetCard.from_template(data, template_path=str(template_path), **context)
    start, end = rendered.text.find(BLOCK_BEGIN), rendered.text.find(BLOCK_END)
    if start == -1 or end == -1:
        raise ValueError(f"The template {template_path} must wrap its body in '{BLOCK_BEGIN} ... -->' and "
                         f"'{BLOCK_END}' so that a later publish can replace it without touching other text.")
    body = _splice(existing_card.text if existing_card is not None else None, rendered.text[start:end + len(BLOCK_END)])
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ---------------------------------------------------------------------------------------------------------------
# Preview and data files
# ---------------------------------------------------------------------------------------------------------------


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


def _write_shards(ds, data_dir: Path, max_shard_rows: int) -> tuple[list[str], int, int]:
    """Parquet shards named as ``push_to_hub`` names them; returns (paths, dataset_size, download_size)."""
    from datasets.table import embed_table_storage
    from datasets.utils import tqdm

    if max_shard_rows < 1:
        raise ValueError(f"max_shard_rows must be at least 1, got {max_shard_rows}.")
    data_dir.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, -(-len(ds) // max_shard_rows))
    names, dataset_size, download_size = [], 0, 0
    for index in tqdm(range(num_shards), desc="Writing parquet shards", unit="shard"):
        name = f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        # Images referenced by path are read into the rows, so that the shard stands alone (as push_to_hub does).
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
        shard.to_parquet(str(data_dir / name))
        dataset_size += shard.data.nbytes
        download_size += (data_dir / name).stat().st_size
        names.append(f"{DATA_DIR}/{name}")
    return names, dataset_size, download_size


def _is_data_shard(path: str) -> bool:
    return path.startswith(f"{DATA_DIR}/{SPLIT}-") and path.endswith(".parquet")


def _write_repo(ds, folder: Path, *, choice: LicenseChoice, repo_id, src: _Source, evaluation_md,
                existing_card, preview_pairs: int, max_shard_rows: int, card: str | None = None) -> list[str]:
    """Write the repo layout into ``folder``; return the written paths, relative to it."""
    files, dataset_size, download_size = _write_shards(ds, folder / DATA_DIR, max_shard_rows)
    preview = None
    count = min(preview_pairs, len(ds))
    if count > 0:
        preview_grid(ds, num_pairs=count).save(folder / PREVIEW, format="PNG")
        preview = PREVIEW
        files.append(PREVIEW)
    if card is None:
        card = str(_render_card(ds, choice=choice, repo_id=repo_id, src=src, evaluation_md=evaluation_md,
                                existing_card=existing_card, preview=preview, preview_count=count,
                                sizes=(dataset_size, download_size)))
    (folder / README).write_text(card, encoding="utf-8")
    files.append(README)
    return files


def _check_distilled(ds) -> None:
    from datasets import Dataset

    from .schema import output_features

    if not isinstance(ds, Dataset):
        raise TypeError(f"Expected the distilled datasets.Dataset (one split), got {type(ds).__name__}.")
    missing = [name for name in output_features(1) if name not in ds.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing} of a distilled set (made by pds_hf.distill); "
                         f"its columns are {ds.column_names}.")
    if len(ds) == 0:
        raise ValueError("The distilled dataset has no rows; there is nothing to publish.")


# ---------------------------------------------------------------------------------------------------------------
# Folder
# ---------------------------------------------------------------------------------------------------------------


def save_to_folder(ds, path, *, card: str | None = None, overwrite: bool = False, max_shard_rows: int = 1000,
                   repo_id: str | None = None, license: str | None = None, source=None,
                   source_revision: str | None = None, source_selection: str | None = None, evaluation=None,
                   preview_pairs: int = 16, token=None) -> Path:
    """Write ``ds`` as a Hub dataset repo into the folder ``path``: the layout :func:`push_to_hub` uploads.

    The folder appears whole or not at all: everything is written to a temporary sibling folder first and
    renamed into place. ``load_dataset(path)`` reads it, and ``hf upload ORG/NAME path --repo-type dataset``
    publishes it as is.

    Args:
        ds: a distilled ``datasets.Dataset``.
        path: the folder to create.
        card: the ``README.md`` text; by default the card of :func:`dataset_card`.
        overwrite: replace an existing folder (only once the new one is complete). Its card's text outside
            the pds-hf block and its YAML keys are kept, as on the Hub.
        max_shard_rows: rows per parquet shard.
        repo_id: the Hub id the folder is meant for, shown in the card's ``load_dataset`` example.
        license: see :func:`resolve_license`; unknown is allowed here (``license: unknown``).
        source: the source dataset's Hub id or folder (named in the card; its license is the default).
        source_revision: the source revision the set was made from.
        source_selection: which rows of the source were distilled, in words.
        evaluation: an evaluation report, a markdown file or markdown text, included in the card.
        preview_pairs: pairs shown in ``preview.png`` (0: no preview).
        token: token for reading a private source's card.

    Example:
        ```py
        >>> pds_hf.save_to_folder(small, "./flickr30k-pds-100")
        >>> load_dataset("./flickr30k-pds-100", split="train")
        ```
    """
    from huggingface_hub import DatasetCard

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) or choose another folder.")
    _check_distilled(ds)
    evaluation_md = _evaluation_markdown(evaluation)
    existing_card = DatasetCard.load(path / README) if (path / README).is_file() else None
    choice = resolve_license(license=license, existing_card=existing_card, source=source,
                             source_revision=source_revision, token=token)
    if choice.license is None and card is None:
        logger.warning("License unknown (%s): the card says 'license: unknown'. Pass license=... before sharing.",
                       choice.detail)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_repo(ds, staging, choice=choice, repo_id=repo_id, src=_Source(source, source_revision, source_selection),
                    evaluation_md=evaluation_md, existing_card=existing_card, preview_pairs=preview_pairs,
                    max_shard_rows=max_shard_rows, card=card)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Wrote %d pairs to %s", len(ds), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PushTarget:
    """What :func:`prepare_push` found out: who is pushing where, under which license.

    Attributes:
        repo_id: the full ``namespace/name``.
        token: the token to push with.
        user: the account the token belongs to.
        license: the license the card will declare, with its origin.
        exists: whether the repository exists already.
        private: its visibility, when it exists.
        branch: the branch the commit goes to.
        branch_exists: whether that branch exists already (a new one starts from ``main``).
        head: the commit the upload builds on (None for a new repository).
        files: the files at ``head``.
        card: the ``DatasetCard`` at ``head``, if any.
    """

    repo_id: str
    token: str
    user: str
    license: LicenseChoice
    exists: bool = False
    private: bool | None = None
    branch: str = "main"
    branch_exists: bool = False
    head: str | None = None
    files: list[str] = field(default_factory=list)
    card: object = None


def _http_summary(err) -> str:
    response = getattr(err, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else type(err).__name__
    return f"{status}: {str(err).splitlines()[0]}"


def prepare_push(repo_id: str, *, token: str | None = None, license: str | None = None, source=None,
                 source_revision: str | None = None, revision: str | None = None) -> PushTarget:
    """Check that a set can be published to ``repo_id``, before anything expensive is done.

    Checks, in order: a token is available, the Hub accepts it (``whoami``) and it may write, the namespace
    is the token's user or one of its organisations, and the license is known (see :func:`resolve_license`)
    and accepted by the Hub. Reads the repository's current card if it exists. Writes nothing.

    Run it before distilling (as ``pds-hf distill --push-to-hub`` does) so that a bad token or an unknown
    license fails in seconds, not after hours of encoding; :func:`push_to_hub` runs it again itself.

    Args:
        repo_id: ``namespace/name`` (a bare ``name`` goes to the token's user).
        token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
        license: a Hub license id; see :func:`resolve_license`.
        source: the source dataset's Hub id or folder.
        source_revision: the revision of a Hub ``source``.
        revision: the branch to commit to (default ``main``).

    Raises:
        PublishError: with what is wrong and how to fix it.
    """
    from huggingface_hub import DatasetCard, HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    token = token or get_token()
    if not token:
        raise PublishError(f"No Hugging Face token to publish {repo_id} with: pass token=... (--token), set HF_TOKEN, "
                           "or run `hf auth login`. Nothing was uploaded.")
    api = HfApi(token=token)
    try:
        who = api.whoami()
    except Exception as err:  # an HTTP error (401) or a connection error: either way nothing can be published
        raise PublishError(f"Could not check the token with the Hub ({_http_summary(err)}): check the token and the "
                           "network, or log in again with `hf auth login`. Nothing was uploaded.") from err
    user = who["name"]
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(f"The token of {user!r} is read-only; publishing needs a token with write access. "
                           "Nothing was uploaded.")
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"{repo_id!r} is not a valid repo id: {err}") from err
    namespace = repo_id.split("/")[0]
    writable = [user] + [org["name"] for org in who.get("orgs", []) if org.get("roleInOrg") != "read"]
    if namespace not in writable:
        raise PublishError(f"Cannot publish to {repo_id}: the token belongs to {user!r}, who may write to "
                           f"{', '.join(writable)} only. Use e.g. {user}/{repo_id.split('/')[1]}. "
                           "Nothing was uploaded.")

    branch = revision or "main"
    target = PushTarget(repo_id=repo_id, token=token, user=user, license=LicenseChoice(None, "unknown", ""),
                        branch=branch)
    try:
        try:
            info = api.dataset_info(repo_id, revision=branch)
            target.branch_exists = True
        except RevisionNotFoundError:
            info = api.dataset_info(repo_id)  # the new branch will start from main
        target.exists, target.private, target.head = True, info.private, info.sha
        target.files = [sibling.rfilename for sibling in info.siblings or []]
        if README in target.files:
            target.card = DatasetCard.load(hf_hub_download(repo_id, README, repo_type="dataset", revision=info.sha,
                                                           token=token))
    except RepositoryNotFoundError:
        target.exists = False
    except HfHubHTTPError as err:
        raise PublishError(f"Could not read {repo_id} on the Hub ({_http_summary(err)}). "
                           "Nothing was uploaded.") from err

    target.license = resolve_license(license=license, existing_card=target.card, source=source,
                                     source_revision=source_revision, token=token)
    if target.license.license is None:
        raise PublishError(
            f"The license of {repo_id} is unknown: {target.license.detail}. Pass license='<Hub license id>' "
            "(--license), e.g. the source dataset's license, or 'other' when its terms are custom: the captions "
            "(and any real images) are the source's. Nothing was uploaded.")
    if target.license.origin == "given":
        try:
            DatasetCard(f"---\nlicense: {target.license.license}\n---\n").validate(repo_type="dataset")
        except ValueError as err:
            raise PublishError(f"The Hub does not accept license {target.license.license!r}: {err}. Use a license id "
                               "from https://huggingface.co/docs/hub/repositories-licenses, or 'other'. "
                               "Nothing was uploaded.") from err
    return target


def push_to_hub(ds, repo_id: str, *, private: bool | None = None, token: str | None = None,
                license: str | None = None, source=None, source_revision: str | None = None,
                source_selection: str | None = None, revision: str | None = None,
                commit_message: str | None = None, evaluation=None,
                preview_pairs: int = 16, max_shard_rows: int = 1000):
    """Publish a distilled set as a Hub dataset: parquet shards, dataset card and preview, in one commit.

    Anyone can then ``load_dataset(repo_id)`` and train on it. The token, the namespace and the license are
    checked first (:func:`prepare_push`), before the shards, preview and card are made; then the repository
    is created if needed and everything is uploaded with a single ``create_commit``, so a failure leaves the
    repository as it was (an empty repository if it was just created), never half-published. Shards of an
    earlier push that the new set does not overwrite are deleted in the same commit.

    Args:
        ds: a distilled ``datasets.Dataset`` (made by :func:`pds_hf.distill`).
        repo_id: ``namespace/name``, e.g. ``"me/flickr30k-pds-100"``.
        private: create the repository private (True) or public (False); for an existing repository,
            change its visibility to that. None: public when created, unchanged otherwise.
        token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
        license: a Hub license id. Default: the license of the card already on the repository, else the
            license declared by ``source``'s card; when neither is known, nothing is uploaded.
        source: the source dataset's Hub id (or folder): named in the card, and its license is the default.
        source_revision: the source revision (commit id) the set was made from, recorded in the card.
        source_selection: which rows of the source were distilled, in words (e.g. "rows with split == 'train'").
        revision: the branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: default ``"Upload <N> distilled pairs with pds-hf"``.
        evaluation: an evaluation report (with ``to_markdown()``), a markdown file or markdown text to include.
        preview_pairs: pairs shown in ``preview.png`` (0: no preview).
        max_shard_rows: rows per parquet shard.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit (``.commit_url``, ``.oid``, ``.repo_url``).

    Raises:
        PublishError: a missing or refused token, a namespace the token cannot write to, an unknown license,
            or a failed upload; the message says what was left on the Hub.

    Example:
        ```py
        >>> import pds_hf
        >>> small = pds_hf.distill(load_dataset("nlphuji/flickr30k", split="test"), num_pairs=100)
        >>> pds_hf.push_to_hub(small, "me/flickr30k-pds-100", license="other", source="nlphuji/flickr30k")
        >>> load_dataset("me/flickr30k-pds-100", split="train")
        ```
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    _check_distilled(ds)
    evaluation_md = _evaluation_markdown(evaluation)
    target = prepare_push(repo_id, token=token, license=license, source=source, source_revision=source_revision,
                          revision=revision)
    api = HfApi(token=target.token)
    try:
        if not target.exists:
            api.create_repo(target.repo_id, repo_type="dataset", private=bool(private), exist_ok=True)
        elif private is not None and private != target.private:
            logger.info("Making %s %s", target.repo_id, "private" if private else "public")
            api.update_repo_settings(target.repo_id, private=private, repo_type="dataset")
        if not target.branch_exists and target.branch != "main":
            api.create_branch(target.repo_id, branch=target.branch, repo_type="dataset", exist_ok=True)
    except HfHubHTTPError as err:
        raise PublishError(f"Could not create or configure {target.repo_id} ({_http_summary(err)}). "
                           "Nothing was uploaded.") from err

    with tempfile.TemporaryDirectory(prefix="pds-hf-push-") as tmp:
        folder = Path(tmp)
        files = _write_repo(ds, folder, choice=target.license, repo_id=target.repo_id,
                            src=_Source(source, source_revision, source_selection), evaluation_md=evaluation_md,
                            existing_card=target.card, preview_pairs=preview_pairs, max_shard_rows=max_shard_rows)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        operations += [CommitOperationDelete(path_in_repo=name) for name in target.files
                       if _is_data_shard(name) and name not in files]
        try:
            commit = api.create_commit(
                target.repo_id, operations, repo_type="dataset", revision=target.branch,
                commit_message=commit_message or f"Upload {len(ds)} distilled pairs with pds-hf",
                commit_description=f"{len(ds)} image-text pairs distilled from {source or 'its source'} with "
                                   "pds-hf: parquet shards, dataset card and preview in one commit.",
                parent_commit=target.head)
        except Exception as err:  # HTTP, connection or file error: the commit did not happen
            left = ("it still holds its previous commit" if target.exists else "it exists but is empty")
            hint = (" Someone else committed to it meanwhile: run again." if "412" in _http_summary(err)
                    else " Run again to retry.")
            raise PublishError(f"Uploading to {target.repo_id} failed ({_http_summary(err)}). Nothing was committed: "
                               f"{left}.{hint}") from err
    logger.info("Published %d pairs to %s", len(ds), commit.commit_url)
    return commit
