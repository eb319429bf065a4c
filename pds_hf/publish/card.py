"""The dataset card of a distilled set, and the run record read back from a published card.

The card is rendered from ``model_cards/dataset_card_template.md``: its YAML lists the ``default`` config, the
features, the license and the tags, and its body says how the set was made and carries the run record.

With members (:mod:`pds_hf.members`), the YAML lists a second config, ``members``, and the body says how many
source pairs the rows stand for, how many the filter dropped and how many fell outside every matched intersection.

The body sits between two HTML comments (``<!-- pds-hf:begin ... -->`` and ``<!-- pds-hf:end -->``).
Publishing again replaces that block only: text written outside it, and YAML keys pds-hf does not set,
are kept. ``Dataset.push_to_hub`` on the same repo keeps the whole body and rewrites only
``dataset_info``/``configs``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import DEMO_DATASET_NAME, DEMO_LICENSE, TINY_MODELS
from .layout import DATA_DIR, MEMBERS_CONFIG, MEMBERS_DIR, README, SPLIT, check_distilled, is_hub_id
from .license import LicenseChoice, resolve_license

logger = logging.getLogger(__name__)


def _template_path() -> Path:
    """The card template: the copy a wheel installs in the package, else ``model_cards/`` of a source checkout."""
    name = "dataset_card_template.md"
    package = Path(__file__).resolve().parent.parent
    installed = package / "model_cards" / name
    return installed if installed.is_file() else package.parent / "model_cards" / name


TEMPLATE_PATH = _template_path()
BLOCK_BEGIN = "<!-- pds-hf:begin"
BLOCK_END = "<!-- pds-hf:end -->"
TAGS = ("dataset-distillation", "synthetic", "pds")
TASK_CATEGORIES = ("image-to-text", "text-to-image")
SUPPORT_ROWS_SHOWN = 100
PAPER = "PDS (Choi, Mo, Chae; ICLR 2026, arXiv 2602.19756)"
# The <summary> line of the template's run record block; metadata_from_card reads the JSON after it.
METADATA_SUMMARY = "Everything pds-hf recorded about this run"


@dataclass
class CardSource:
    """The source dataset as the publisher names it: Hub id or folder, revision, which rows were used."""

    id: object = None
    revision: str | None = None
    selection: str | None = None


def _size_category(n: int) -> str:
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]
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


def evaluation_markdown(evaluation) -> str | None:
    """Markdown from an evaluation report object (``to_markdown()``), a markdown file, or markdown text."""
    if evaluation is None:
        return None
    if hasattr(evaluation, "to_markdown"):
        return evaluation.to_markdown().strip()
    if isinstance(evaluation, os.PathLike) or (isinstance(evaluation, str) and os.path.isfile(evaluation)):
        path = Path(evaluation)
        if not path.is_file():
            raise FileNotFoundError(
                f"evaluation={str(path)!r}: no such file (pass a markdown file, markdown text, "
                "or the report of pds_hf.evaluation)."
            )
        return path.read_text(encoding="utf-8").strip()
    if isinstance(evaluation, str):
        return evaluation.strip()
    raise TypeError(
        f"evaluation must be markdown text, a markdown file or an evaluation report, got {type(evaluation).__name__}."
    )


def _metadata_or_empty(ds) -> dict:
    from ..schema import read_run_record

    try:
        return read_run_record(ds)
    except ValueError:
        logger.warning("The dataset carries no pds_hf metadata: its card will say 'not recorded' for how it was made.")
        return {}


_SYNTHESIS = {
    "unclip": (
        "Every image is synthetic: Stable unCLIP decoded it from the image prototype, prompted with the caption.",
        "synthetic image decoded by Stable unCLIP from the image prototype, prompted with the caption",
        "decode each image prototype into an image with Stable unCLIP, prompted with that caption",
    ),
    "retrieve": (
        "Every image is a real image of the source: the one nearest (cosine) to the image prototype.",
        "the real source image nearest (cosine) to the image prototype",
        "take the real image nearest to each image prototype",
    ),
    "retrieve-scored": (
        "Every image is a real image of the source: of the 8 nearest (cosine) to the image "
        "prototype, the one the encoder matches best with the text prototype.",
        "the real source image, of the 8 nearest to the image prototype, that best matches the text prototype",
        "take, of the 8 real images nearest to each image prototype, the one that best matches its text prototype",
    ),
    "none": (
        'No images were made (`synthesis="none"`): the `image` column is empty; train on the embeddings.',
        "empty: no images were made",
        "no images are made",
    ),
    "baseline": (
        "Every image is a real image of the source: the image of the chosen pair.",
        "the real image of the chosen pair",
        "its own image",
    ),
    "unknown": ("How the images were made was not recorded.", "an image", "the images were made"),
}


# How the card names the tiny demo decoder's output: the weights are random, so the images are noise.
_RANDOM_UNCLIP = (
    "Every image is synthetic and meaningless: a tiny Stable unCLIP with random weights, built in code by {call}, "
    "decoded it from the image prototype, prompted with the caption. It shows that the pipeline runs, not what PDS "
    "makes.",
    "noise: decoded by a tiny Stable unCLIP with random weights from the image prototype, prompted with the caption",
    "decode each image prototype with a tiny Stable unCLIP with random weights ({call}), prompted with that caption",
)


def _is_local_path(value) -> bool:
    """Whether ``value`` names a file or folder of the machine that made the set: never written into a card."""
    if not isinstance(value, str) or not value or "\n" in value:
        return False
    return (
        os.path.isabs(value) or value.startswith(("~", "./", "../")) or (not is_hub_id(value) and Path(value).exists())
    )


def _public(value):
    """``value`` as a card shows it: a local path becomes the folder's name only (a reader cannot look it up)."""
    return f"a local folder ({Path(value).name})" if _is_local_path(value) else value


# The fields of a run record that may hold a local path (a model or dataset given as a folder, the cache).
_PATH_FIELDS = {
    "config": ("clip_model", "clip_processor", "unclip_model", "cache_dir"),
    "source": ("dataset",),
    "models": ("encoder", "unclip"),
}


def _public_record(meta: dict) -> dict:
    """The run record without local paths, for the card."""
    record = dict(meta)
    for section, fields in _PATH_FIELDS.items():
        if isinstance(record.get(section), dict):
            record[section] = {
                key: _public(value) if key in fields else value for key, value in record[section].items()
            }
    return record


def _model_text(role: str, name: str) -> str:
    """The card's words for a recorded model: a link, the code that builds it, or why a reader cannot load it.

    Logs a warning when the recorded name loads nothing elsewhere (a class name or a local folder).
    """
    if name in TINY_MODELS:
        return (
            f"a tiny model with random weights, built in code by `{TINY_MODELS[name]}` (recorded as `{name}`, "
            "which is not a Hub repository)"
        )
    if name.startswith("given column"):
        return f"unknown: the embeddings came with the source ({name})"
    if is_hub_id(name):
        from huggingface_hub import constants

        return f"[`{name}`]({constants.ENDPOINT}/{name})"
    if _is_local_path(name):
        why = f"{_public(name)} on the machine that made this set, not a model anyone else can load"
    else:
        why = (
            f"`{name}` is the class of a model passed as a loaded object, not a model id: the set cannot be "
            "remade from this card"
        )
    logger.warning(
        "The %s is recorded as %r: %s. Pass the model by its Hub id so that readers can load it.",
        role,
        _public(name),
        why.replace("`", ""),
    )
    return why


def _limitations(
    synthesis: str,
    config: dict,
    encoder: str,
    evaluated: bool,
    zero: int,
    *,
    random_encoder: bool = False,
    random_decoder: bool = False,
) -> list[str]:
    lines = []
    if synthesis == "baseline":
        lines.append(
            "The pairs are real pairs of the source chosen by a baseline, not synthesized: their images "
            "and captions carry the source's terms, content and biases unchanged."
        )
    elif synthesis == "unclip" and random_decoder:
        lines.append(
            "The images are noise: the decoder's weights are random. This set shows that the pipeline "
            "runs; it is not meant for training."
        )
    elif synthesis == "unclip":
        lines.append(
            f"The images are synthetic (Stable unCLIP, {config.get('num_inference_steps')} steps, guidance "
            f"{config.get('guidance_scale')}): they follow the prototypes, they are not photographs, and "
            "they can show decoder artefacts or unreadable text."
        )
    elif synthesis in ("retrieve", "retrieve-scored"):
        lines.append("The images are real images of the source, copied with its terms and content.")
    elif synthesis == "none":
        lines.append("There are no images: only the embeddings and captions can be trained on.")
    lines.append(
        "The captions are real captions of the source, copied verbatim: they inherit its language, biases and mistakes."
    )
    if random_encoder:
        lines.append("The embeddings come from an encoder with random weights: they carry no meaning.")
    else:
        lines.append(
            f"The embeddings belong to `{encoder}`: they mean nothing to another encoder, and concepts "
            "too rare to dominate any cluster are not represented."
        )
    if zero:
        lines.append(f"{zero} row(s) have no real pair behind them (support 0): their prototypes are k-means centres.")
    lines.append(
        "Evaluated only as reported above: other students, encoders and tasks may behave differently."
        if evaluated
        else "Not evaluated: how well a student trained on it performs is unknown."
    )
    return lines


# The columns write_members always makes; any other column of the members table was carried from the source.
MEMBER_COLUMNS = ("pair", "source_row", "caption_index", "caption", "image_similarity", "text_similarity")
_REAL_IMAGES = ("retrieve", "retrieve-scored", "baseline")


def _members_context(members, meta: dict, support: np.ndarray, method: str) -> dict | None:
    """What the card says about the members: how the source's pairs are accounted for, and the carried columns.

    Every source pair is counted once: a member of a row (``represented``), dropped by the filter, or kept but
    outside every matched intersection (its image and caption clusters were not matched to each other).
    """
    if members is None:
        return None
    source_pairs = meta.get("source", {}).get("num_pairs")
    kept = meta.get("kept_pairs")
    rows = len(members)
    context = dict(
        rows=rows,
        represented=rows,
        source_pairs=source_pairs,
        dropped=None,
        outside=None,
        empty=int((support == 0).sum()),
        carried=[name for name in members.column_names if name not in MEMBER_COLUMNS],
        baseline=method != "pds",
    )
    if method == "pds" and isinstance(kept, int) and isinstance(source_pairs, int):
        context.update(dropped=source_pairs - kept, outside=kept - rows)
    return context


def _license_note(
    choice: LicenseChoice, source_name: str, *, real_images: bool = False, row_column: bool = False, carried=()
) -> str:
    if choice.license is None:
        note = (
            f"Unknown ({choice.detail}). The captions come from {source_name}, whose terms apply; declare a "
            "license (`license=` / `--license`) before sharing this set."
        )
    else:
        where = {
            "given": "set by the publisher",
            "repository": "kept from the card this one replaced",
            "source": f"taken from {source_name}, whose captions this set contains",
        }[choice.origin]
        note = (
            f"`{choice.license}`, {where}. The captions (and any real images) come from {source_name}: its "
            "terms apply to them as well."
        )
    if real_images:
        note += (
            f" The images are real images of {source_name}, under its license (and under each image's own license "
            "where the source gives one)"
        )
        note += ": the `source_row` column names each image's row in the source." if row_column else "."
    if carried:
        note += (
            " The `members` config carries the source's "
            + ", ".join(f"`{name}`" for name in carried)
            + " column(s) for every real pair behind a row."
        )
    return note


def _card_context(
    ds,
    meta: dict,
    *,
    repo_id,
    src: CardSource,
    choice: LicenseChoice,
    evaluation_md,
    preview: str | None,
    preview_count: int,
    members=None,
    members_images: bool = False,
) -> dict:
    from huggingface_hub import constants

    config = meta.get("config", {})
    recorded = meta.get("source", {})
    models = meta.get("models", {})
    method = config.get("method", "pds")
    synthesis = config.get("synthesis", "unknown")
    if method != "pds" and synthesis != "none":
        synthesis = "baseline"
    named = src.id if src.id is not None else recorded.get("dataset")
    demo = named == DEMO_DATASET_NAME
    source_id = (
        "the pds-hf demo shapes"
        if demo
        else _public(str(named))
        if named is not None
        else "a dataset with no name"
        if "dataset" in recorded
        else "not recorded"
    )
    url = f"{constants.ENDPOINT}/datasets/{source_id}" if is_hub_id(source_id) else None
    layout = recorded.get("layout")
    support = np.asarray(list(ds["support"]), dtype=np.int64)
    captions = list(ds["caption"])
    image_clusters, text_clusters = list(ds["image_cluster"]), list(ds["text_cluster"])
    shown = min(len(ds), SUPPORT_ROWS_SHOWN)
    stages = meta.get("stages_seconds", {})
    recorded_encoder = models.get("encoder") or config.get("clip_model")
    encoder = _public(recorded_encoder) if recorded_encoder else "the encoder"
    unclip = models.get("unclip")
    random_decoder = synthesis == "unclip" and unclip in TINY_MODELS
    synthesis_texts = (
        tuple(text.format(call=f"`{TINY_MODELS.get(unclip)}`") for text in _RANDOM_UNCLIP)
        if random_decoder
        else _SYNTHESIS[synthesis]
    )
    name = "pds-hf-demo" if demo else (Path(named).name if _is_local_path(named) else source_id.rsplit("/", 1)[-1])
    not_recorded = "not recorded"
    members_context = _members_context(members, meta, support, method)
    if demo:
        source_link = f"the pds-hf demo shapes (made in code by `{DEMO_DATASET_NAME}()`)"
    elif url:
        source_link = f"[{source_id}]({url})"
    else:
        source_link = f"{source_id}" if named is None or _is_local_path(named) else f"`{source_id}`"
    return dict(
        name=name,
        title=f"{name} distilled to {len(ds)} image-text pairs",
        num_pairs=len(ds),
        source_pairs=recorded.get("num_pairs"),
        load_path=repo_id or "path/to/this/folder",
        method=method,
        method_text=PAPER if method == "pds" else f"the `{method}` baseline (real pairs chosen on CLIP embeddings)",
        synthesis_text=synthesis_texts[0],
        image_column_text=synthesis_texts[1],
        synthesis_step=synthesis_texts[2],
        image_size=config.get("image_size"),
        embedding_dim=ds.features["text_embedding"].length,
        encoder=encoder,
        encoder_text=_model_text("encoder", recorded_encoder) if recorded_encoder else "not recorded",
        encoder_revision=models.get("encoder_revision"),
        unclip=unclip,
        unclip_text=_model_text("decoder", unclip) if unclip else None,
        unclip_revision=models.get("unclip_revision"),
        rm_ratio_percent=f"{100 * float(config.get('rm_ratio', 0.2)):g}%",
        normalize=bool(config.get("normalize", False)),
        source=dict(
            id=source_id,
            url=url,
            link=source_link,
            config=recorded.get("config"),
            split=recorded.get("split")
            or (
                "none (made in code)"
                if demo
                else "none named (the dataset was given whole)"
                if "split" in recorded
                else not_recorded
            ),
            selection=src.selection,
            revision=src.revision,
            fingerprint=recorded.get("fingerprint"),
            num_rows=recorded.get("num_rows", not_recorded),
            num_pairs=recorded.get("num_pairs", not_recorded),
            num_images=recorded.get("num_images", not_recorded),
            num_captions=recorded.get("num_captions", not_recorded),
            skipped_images=recorded.get("skipped_images", not_recorded),
            layout_text={
                "image": "one row per image, a list of captions each",
                "pair": "one row per image-caption pair",
            }.get(layout, "layout not recorded"),
        ),
        kept_pairs=meta.get("kept_pairs"),
        empty_intersections=meta.get("empty_intersections"),
        processes=meta.get("processes"),
        seed=config.get("seed", not_recorded),
        config_rows=[(key, _plain(value)) for key, value in _public_record(meta).get("config", {}).items()],
        stages=[(stage, f"{seconds:.2f}") for stage, seconds in stages.items()],
        total_seconds=f"{sum(round(seconds, 2) for seconds in stages.values()):.2f}",  # the sum of the rows shown
        versions=list(meta.get("versions", {}).items()),
        support=dict(
            min=int(support.min()),
            max=int(support.max()),
            median=f"{np.median(support):g}",
            mean=f"{support.mean():.1f}",
            zero=int((support == 0).sum()),
        ),
        supports_shown=shown,
        supports=[
            dict(
                index=i,
                caption=_cell(captions[i]),
                support=int(support[i]),
                image_cluster=image_clusters[i],
                text_cluster=text_clusters[i],
            )
            for i in range(shown)
        ],
        preview=preview,
        preview_count=preview_count,
        members=members_context,
        members_images=members_images,
        evaluation=evaluation_md,
        limitations=_limitations(
            synthesis,
            config,
            encoder,
            evaluation_md is not None,
            int((support == 0).sum()),
            random_encoder=recorded_encoder in TINY_MODELS,
            random_decoder=random_decoder,
        ),
        license_note=_license_note(
            choice,
            source_link,
            real_images=synthesis in _REAL_IMAGES,
            row_column="source_row" in ds.column_names,
            carried=members_context["carried"] if members_context is not None else (),
        ),
        metadata_json=json.dumps(_public_record(meta), indent=2, default=str),
    )


def _card_data(
    ds,
    existing_card,
    *,
    choice: LicenseChoice,
    name: str,
    source,
    sizes: tuple[int, int] | None,
    members=None,
    member_sizes: tuple[int, int] | None = None,
):
    """The card's YAML: the existing card's keys, with the ones pds-hf owns set or merged (the ``members`` config
    declared with ``members``, and removed from an existing card without them)."""
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
    if is_hub_id(source):
        data["source_datasets"] = _union(data.get("source_datasets"), [source])
    data["tags"] = _union(data.get("tags"), TAGS)
    if members is None:  # an earlier publish's members config would point at shards this one deletes
        for key in ("configs", "dataset_info"):
            if isinstance(data.get(key), list):
                data[key] = [entry for entry in data[key] if entry.get("config_name") != MEMBERS_CONFIG]
    infos = {}
    for config, table, table_sizes in (("default", ds, sizes), (MEMBERS_CONFIG, members, member_sizes)):
        if table is not None and table_sizes is not None:
            size, download_size = table_sizes
            splits = SplitDict()
            splits.add(SplitInfo(name=SPLIT, num_bytes=size, num_examples=len(table)))
            infos[config] = DatasetInfo(
                features=table.features, splits=splits, download_size=download_size, dataset_size=size
            )
    if infos:
        DatasetInfosDict(infos).to_dataset_card_data(data)
    configs = {"default": {"data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}
    if members is not None:
        configs[MEMBERS_CONFIG] = {"data_files": [{"split": SPLIT, "path": f"{MEMBERS_DIR}/{SPLIT}-*"}]}
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data


def _splice(existing_body: str | None, block: str) -> str:
    """Put the generated block in place of the old one, keeping whatever the existing body has around it.

    Publishing the same set twice gives the same text (nothing accumulates around the block).
    """
    existing_body = (existing_body or "").lstrip("\n")
    start = existing_body.find(BLOCK_BEGIN)
    end = existing_body.find(BLOCK_END, start)
    if start != -1 and end != -1:
        return existing_body[:start] + block + existing_body[end + len(BLOCK_END) :]
    if existing_body.strip():
        return f"{block}\n\n{existing_body}"
    return f"{block}\n"


def dataset_card(
    ds,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    source=None,
    source_revision: str | None = None,
    source_selection: str | None = None,
    evaluation=None,
    existing_card=None,
    preview: str | None = None,
    preview_count: int = 0,
    sizes: tuple[int, int] | None = None,
    template_path=None,
    token=None,
    members=None,
):
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
        members: the members ``Dataset`` published beside the set (:func:`pds_hf.members`): declared as the
            ``members`` config and counted in the card.

    Returns:
        A ``huggingface_hub.DatasetCard``; ``str(card)`` is the ``README.md`` text.

    Example:
        ```py
        >>> card = pds_hf.publish.dataset_card(small, repo_id="me/flickr30k-pds-100", license="cc-by-4.0")
        >>> card.data.tags
        ['dataset-distillation', 'synthetic', 'pds']
        ```
    """
    check_distilled(ds)
    choice = resolve_license(
        license=license, existing_card=existing_card, source=source, source_revision=source_revision, token=token
    )
    return render_card(
        ds,
        choice=choice,
        repo_id=repo_id,
        src=CardSource(source, source_revision, source_selection),
        evaluation_md=evaluation_markdown(evaluation),
        existing_card=existing_card,
        preview=preview,
        preview_count=preview_count,
        sizes=sizes,
        template_path=template_path,
        members=members,
    )


def demo_license(choice: LicenseChoice, ds) -> LicenseChoice:
    """The demo dataset's license for a set ``ds`` distilled from it, when nothing else declares one."""
    from ..schema import read_run_record

    if choice.license is not None:
        return choice
    try:
        meta = read_run_record(ds)
    except ValueError:
        return choice
    if meta.get("source", {}).get("dataset") == DEMO_DATASET_NAME:
        return LicenseChoice(DEMO_LICENSE, "source", "the pds-hf demo shapes are made by pds-hf's own code")
    return choice


def render_card(
    ds,
    *,
    choice,
    repo_id,
    src: CardSource,
    evaluation_md,
    existing_card,
    preview,
    preview_count,
    sizes,
    template_path=None,
    members=None,
    member_sizes=None,
    members_images: bool = False,
):
    """The dataset card's text for ``ds`` from the template: metadata, source, license and evaluation sections,
    keeping a user's own text around the generated block of ``existing_card``. Shared by the folder writer."""
    from huggingface_hub import DatasetCard

    template_path = Path(template_path or TEMPLATE_PATH)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The dataset card template {template_path} is missing; pass template_path=... "
            "(the source tree ships it in model_cards/)."
        )
    meta = _metadata_or_empty(ds)
    choice = demo_license(choice, ds)
    context = _card_context(
        ds,
        meta,
        repo_id=repo_id,
        src=src,
        choice=choice,
        evaluation_md=evaluation_md,
        preview=preview,
        preview_count=preview_count,
        members=members,
        members_images=members_images,
    )
    data = _card_data(
        ds,
        existing_card,
        choice=choice,
        name=context["name"],
        source=src.id,
        sizes=sizes,
        members=members,
        member_sizes=member_sizes,
    )
    rendered = DatasetCard.from_template(data, template_path=str(template_path), **context)
    start, end = rendered.text.find(BLOCK_BEGIN), rendered.text.find(BLOCK_END)
    if start == -1 or end == -1:
        raise ValueError(
            f"The template {template_path} must wrap its body in '{BLOCK_BEGIN} ... -->' and "
            f"'{BLOCK_END}' so that a later publish can replace it without touching other text."
        )
    body = _splice(
        existing_card.text if existing_card is not None else None, rendered.text[start : end + len(BLOCK_END)]
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def metadata_from_card(where, *, revision: str | None = None, token=None) -> dict:
    """The run record (:func:`pds_hf.metadata`) that a published card carries, from a folder or a Hub id."""
    folder = Path(where)
    if folder.is_dir():
        path = folder / README
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {README}; is it a folder written by pds_hf.save_to_folder?")
        text = path.read_text(encoding="utf-8")
    elif is_hub_id(str(where)):
        from huggingface_hub import hf_hub_download

        text = Path(hf_hub_download(str(where), README, repo_type="dataset", revision=revision, token=token)).read_text(
            encoding="utf-8"
        )
    else:
        raise FileNotFoundError(f"{where!s} is neither a folder nor a Hub dataset id.")
    start = text.find(METADATA_SUMMARY)
    begin = text.find("```json", start) if start >= 0 else -1
    end = text.find("```", begin + len("```json")) if begin >= 0 else -1
    if end < 0:
        raise ValueError(f"The dataset card of {where!s} holds no pds-hf run record; was it published by pds_hf?")
    try:
        return json.loads(text[begin + len("```json") : end])
    except ValueError as err:
        raise ValueError(
            f"The pds-hf run record in the card of {where!s} is not valid JSON ({err}); was the card edited by hand?"
        ) from None
