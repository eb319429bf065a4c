"""``pds-hf explore``: a local page to browse a distilled set and the real pairs behind each of its rows.

The page (Gradio, ``pip install "pds-hf[explore]"``) shows the grid of distilled pairs with their caption and
support; choosing one shows its members (:mod:`pds_hf.members`), closest first (highest image + text cosine to the
pair's prototypes), with their captions and, when the source is at hand, their images. A text box filters the
pairs by caption.

Where the members' images come from: the published folder holds no copy of them (a members table stands for up to
every source pair, too many images to publish twice), so they are read from the source dataset, by ``source_row``,
when it is at hand: given as ``source=`` (``--source``), or, for a set distilled from the demo shapes, remade in code.
The source is used only when it is the one the members index: the captions of a sample of members must be the
captions at their ``source_row`` and ``caption_index``. Without it, the page shows the members' captions and
similarities only.

The page is served on 127.0.0.1 only, with Gradio's analytics off (``GRADIO_ANALYTICS_ENABLED=False``): nothing
leaves the machine.

Example:
    ```py
    >>> from pds_hf.explore import explore
    >>> page = explore("./flickr30k-pds-100", source=load_dataset("nlphuji/flickr30k", split="test"), block=False)
    >>> page.local_url
    'http://127.0.0.1:7860/'
    ```
"""

# No `from __future__ import annotations`: Gradio reads the SelectData annotation of a handler as a class.
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schema import DEMO_DATASET_NAME

logger = logging.getLogger(__name__)

MEMBERS_SHOWN = 48  # member images a choice shows (the table lists up to MEMBER_ROWS)
MEMBER_ROWS = 500
_CHECKED = 20  # members whose captions must match the source for its images to be used


@dataclass
class Explorer:
    """What the page shows.

    Attributes:
        name: the set's folder or Hub id.
        pairs: the distilled ``datasets.Dataset``.
        members: its members ``Dataset``, or None when it was published without them.
        source: the source ``Dataset`` the members' ``source_row`` index (their images), or None.
        image_column: the source's image column.
        record: the run record of the set's card (empty when it has none).
        order: member rows grouped by pair (by ``pair``, then closest first); ``start[m]:start[m + 1]`` are pair m's.
        start: ``(M + 1,)`` where each pair's members begin in ``order``.
    """

    name: str
    pairs: object
    members: object = None
    source: object = None
    image_column: str = "image"
    record: dict = field(default_factory=dict)
    order: np.ndarray = field(default=None, repr=False)
    start: np.ndarray = field(default=None, repr=False)

    def pair_members(self, pair: int) -> list[dict]:
        """Pair ``pair``'s members, closest first, at most :data:`MEMBER_ROWS`, as rows of the members table."""
        if self.members is None:
            return []
        rows = self.order[self.start[pair] : self.start[pair + 1]][:MEMBER_ROWS]
        return self.members.select(rows.tolist()).to_list() if len(rows) else []


def _source_matches(source, members, image_column: str, caption_column: str = "caption") -> bool:
    """Whether ``source`` is the dataset ``members`` index: same captions at a sample of their rows."""
    if source is None or members is None or not len(members):
        return False
    if image_column not in source.column_names or caption_column not in source.column_names:
        return False
    sample = members.select(np.linspace(0, len(members) - 1, min(_CHECKED, len(members))).astype(int).tolist())
    rows = sample["source_row"]
    if max(rows) >= len(source):
        return False
    captions = source.select_columns([caption_column])[rows][caption_column]
    for caption, k, want in zip(captions, sample["caption_index"], sample["caption"], strict=True):
        got = caption if isinstance(caption, str) else (caption[k] if k < len(caption or []) else None)
        if got != want:
            return False
    return True


def _demo_source(record: dict):
    """The demo shapes a set was distilled from, remade in code, when its record names them (else None)."""
    recorded = record.get("source", {})
    if recorded.get("dataset") != DEMO_DATASET_NAME or not isinstance(recorded.get("num_rows"), int):
        return None
    from .demo import demo_dataset

    return demo_dataset(recorded["num_rows"])


def load_explorer(
    where,
    *,
    source=None,
    image_column: str | None = None,
    caption_column: str | None = None,
    revision: str | None = None,
    token=None,
) -> Explorer:
    """Read a published set (a folder from ``save_to_folder`` or a Hub id) and its members for the page.

    Args:
        where: the folder or Hub dataset id.
        source: the source ``datasets.Dataset`` the set was distilled from (for the members' images); default: the
            demo shapes remade in code when the set was made from them, else none.
        image_column, caption_column: the source's columns (default: the ones the run record names, else
            ``image`` / ``caption``).
        revision, token: the Hub revision and token.

    Raises:
        FileNotFoundError: ``where`` is neither a folder nor a Hub id.
    """
    from datasets import load_dataset

    from .members import members as load_members
    from .publish import metadata_from_card
    from .publish.layout import is_hub_id

    name = str(where)
    if not Path(name).is_dir() and not is_hub_id(name):
        raise FileNotFoundError(
            f"{name}: no such folder, and not a Hub dataset id; pass the folder pds-hf wrote (--output) or a Hub id."
        )
    try:
        record = metadata_from_card(name, revision=revision, token=token)
    except (OSError, ValueError) as err:
        logger.warning("%s: no pds-hf run record (%s); the page shows what the data says.", name, err)
        record = {}
    config = record.get("config", {})
    image_column = image_column or config.get("image_column") or "image"
    caption_column = caption_column or config.get("caption_column") or "caption"
    pairs = load_dataset(name, split="train", revision=revision, token=token)
    try:
        members = load_members(name, revision=revision, token=token)
    except ValueError as err:
        logger.warning("%s", err)
        members = None
    explorer = Explorer(name=name, pairs=pairs, members=members, record=record, image_column=image_column)
    candidate = source if source is not None else _demo_source(record)
    if candidate is not None:
        if _source_matches(candidate, members, image_column, caption_column):
            explorer.source = candidate
        else:
            logger.warning(
                "The source given is not the one the members index (their captions differ from its captions at "
                "their source_row), or lacks the columns %r / %r: the page shows no member images.",
                image_column,
                caption_column,
            )
    count = len(pairs)
    if members is None:
        explorer.order, explorer.start = np.zeros(0, np.int64), np.zeros(count + 1, np.int64)
        return explorer
    columns = members.select_columns(["pair", "image_similarity", "text_similarity"]).with_format("numpy")[:]
    pair = np.asarray(columns["pair"], dtype=np.int64)
    score = columns["image_similarity"].astype(np.float64) + columns["text_similarity"]
    explorer.order = np.lexsort((-score, pair))
    explorer.start = np.searchsorted(pair[explorer.order], np.arange(count + 1))
    return explorer


def _placeholder(text: str, side: int = 96):
    """A grey square saying ``text``, where there is no image to show."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), (225, 225, 225))
    ImageDraw.Draw(image).text((8, side // 2 - 6), text, fill=(110, 110, 110))
    return image


def pair_label(index: int, row: dict) -> str:
    """A pair's label under its image on the page: row, support and caption."""
    return f"#{index} · support {row['support']} · {row['caption']}"


def matching_pairs(explorer: Explorer, query: str) -> list[int]:
    """The rows of the set whose caption holds every word of ``query`` (case-insensitive); all rows for none."""
    words = query.lower().split()
    captions = explorer.pairs["caption"]
    return [i for i, caption in enumerate(captions) if all(word in caption.lower() for word in words)]


def build_page(explorer: Explorer):
    """The Gradio ``Blocks`` page of ``explorer`` (not launched).

    Element ids, for scripts and tests: ``pds-filter`` (the caption filter), ``pds-pairs`` (the grid of pairs),
    ``pds-member-header`` (what was chosen), ``pds-members`` (the members' images) and ``pds-member-table``.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    pairs = explorer.pairs
    rows = pairs.select_columns(["image", "caption", "support"])
    items = []
    for i, row in enumerate(rows):
        image = row["image"] if row["image"] is not None else _placeholder("no image")
        items.append((image.convert("RGB"), pair_label(i, row)))
    recorded = explorer.record.get("source", {})
    source_name = recorded.get("dataset") or "its source"
    if source_name == DEMO_DATASET_NAME:
        source_name = "the pds-hf demo shapes"
    what = (
        "Choose a pair to see the real pairs behind it, closest first."
        if explorer.members is not None
        else "This set was published without members: only its pairs are shown."
    )
    images_note = (
        "Member images come from the source."
        if explorer.source is not None
        else "The source is not at hand (pass --source): members are shown by caption only."
    )

    def show_pairs(query):
        shown = matching_pairs(explorer, query or "")
        return gr.update(value=[items[i] for i in shown], label=f"Distilled pairs ({len(shown)} shown)"), shown

    def show_members(shown, evt: gr.SelectData):
        pair = shown[evt.index]
        row = pairs[pair]
        found = explorer.pair_members(pair)
        header = (
            f"### Pair #{pair}: {row['caption']}\nsupport {row['support']}: {len(found)} member(s)"
            + (f", the first {MEMBER_ROWS} listed" if len(found) == MEMBER_ROWS else "")
            + ("" if found else " (an empty match: its prototypes are the k-means centres)")
        )
        gallery = []
        if explorer.source is not None and found:
            wanted = [member["source_row"] for member in found[:MEMBERS_SHOWN]]
            images = explorer.source.select_columns([explorer.image_column])[wanted][explorer.image_column]
            gallery = [
                (image.convert("RGB") if image is not None else _placeholder("no image"), member["caption"])
                for image, member in zip(images, found, strict=False)
            ]
        table = [
            [m["source_row"], m["caption_index"], m["caption"], round(m["image_similarity"], 4),
             round(m["text_similarity"], 4)]
            for m in found
        ]  # fmt: skip
        return header, gallery, table

    with gr.Blocks(title=f"pds-hf explore: {explorer.name}") as page:
        gr.Markdown(
            f"# {Path(explorer.name).name or explorer.name}\n{len(pairs)} pairs distilled from {source_name}. "
            f"{what} {images_note if explorer.members is not None else ''}"
        )
        query = gr.Textbox(label="Filter pairs by caption", placeholder="e.g. red circle", elem_id="pds-filter")
        shown = gr.State(list(range(len(pairs))))
        grid = gr.Gallery(
            value=items,
            label=f"Distilled pairs ({len(items)} shown)",
            columns=8,
            height=min(480, 60 + 160 * -(-len(items) // 8)),  # as many grid rows as the pairs fill, then a scroll
            object_fit="contain",
            allow_preview=False,
            elem_id="pds-pairs",
        )
        header = gr.Markdown("Choose a pair above.", elem_id="pds-member-header")
        member_grid = gr.Gallery(
            label="Its members, closest first",
            columns=8,
            height=360,
            object_fit="contain",
            allow_preview=False,
            elem_id="pds-members",
        )
        member_table = gr.Dataframe(
            headers=["source_row", "caption_index", "caption", "image_similarity", "text_similarity"],
            interactive=False,
            elem_id="pds-member-table",
        )
        query.change(show_pairs, inputs=query, outputs=[grid, shown])
        grid.select(show_members, inputs=shown, outputs=[header, member_grid, member_table])
    return page


def explore(
    where,
    *,
    source=None,
    port: int | None = None,
    block: bool = True,
    image_column: str | None = None,
    caption_column: str | None = None,
    revision: str | None = None,
    token=None,
):
    """Serve the page of a published set on ``http://127.0.0.1:<port>/`` (see :mod:`pds_hf.explore`).

    Args:
        where: a folder written by :func:`pds_hf.save_to_folder` or a Hub id published by :func:`pds_hf.push_to_hub`.
        source: the source ``datasets.Dataset``, for the members' images (see :func:`load_explorer`).
        port: the port (default: Gradio's, 7860, or the next free one).
        block: wait until the page is closed (Ctrl-C); with False, return at once, the page served in a thread.
        image_column, caption_column, revision, token: see :func:`load_explorer`.

    Returns:
        The launched Gradio ``Blocks`` (``.local_url``; ``.close()`` stops it).

    Raises:
        ImportError: Gradio is not installed; the message says ``pip install "pds-hf[explore]"``.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        raise ImportError('pds-hf explore needs Gradio: pip install "pds-hf[explore]"') from err
    explorer = load_explorer(
        where, source=source, image_column=image_column, caption_column=caption_column, revision=revision, token=token
    )
    page = build_page(explorer)
    page.launch(
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return page
