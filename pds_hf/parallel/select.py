"""Steps 2-6 (and the baselines) with every process working on its slice of the pairs.

Process ``r`` of ``W`` takes the pairs ``[N r / W, N (r + 1) / W)`` and reads the embedding rows they use. A
distinct row (an image shared by five captions) may be used by pairs in two slices; for what counts each row
once (the k-means points and their weights), rows are owned by row range: process ``r`` owns the distinct rows
``[R r / W, R (r + 1) / W)`` and is sent the weights the other processes' pairs give them. Each step then keeps
the one-process result:

- filter: the global ``rm_ratio`` cut from two all-reduced 65,536-bin histograms of the similarities' float32 bit
  patterns (the exact value at the cut), then the weight of the tied pairs before each process's slice: ties go
  to the earlier pair, as :func:`pds_hf.filter.filter_pairs` breaks them;
- k-means: the fit sample is drawn over the global list of used rows exactly as :func:`pds_hf.cluster.kmeans`
  draws it (it depends on that list's length alone); each owner sends its sampled points to process 0, which
  runs the Lloyd iterations and broadcasts the centres; each process assigns the rows its pairs use;
- the count table: each process's sparse cells, summed on process 0, which solves the matching and broadcasts it;
- prototypes: float64 sums and counts per match, all-reduced;
- nearest caption / image: each process searches its range of the distinct rows; the best per prototype wins,
  ties to the lower row;
- baselines: each greedy step's choice is a reduction (lowest cost / farthest point, ties to the lower pair) and
  the chosen pair's features are broadcast by its process.

Nothing of size ``N`` is gathered: what moves is ``O(k d)`` per reduction, the k-means sample (at most
``256 k`` points) and, once, the distinct rows shared across slices.
"""

from __future__ import annotations

import logging

import numpy as np

from ..align import align_clusters
from ..baselines import BASELINES, check_count
from ..caption import nearest_scored
from ..cluster import DEFAULT_MAX_POINTS_PER_CENTROID, assign, centre_index, fit_points, fit_sample, train_kmeans
from ..filter import as_table, nonfinite_rows, pair_similarity
from ..filter import normalize as unit_rows
from ..prototypes import check_filled, distinct_rows, finish_prototypes, group_sums, matched_groups
from ..steps import baseline_dict, choose
from .comm import Comm

logger = logging.getLogger(__name__)

LABELS = ("slice", "all")


def bounds(n: int, world: int) -> np.ndarray:
    """``(world + 1,)`` edges of the even split of ``n`` items: process ``r`` takes ``[b[r], b[r + 1])``.

    Example:
        ```py
        >>> bounds(10, 3).tolist()
        [0, 3, 6, 10]
        ```
    """
    return np.array([n * r // world for r in range(world + 1)], dtype=np.int64)


def pair_slice(n: int, ranks) -> slice:
    """The pairs process ``ranks.rank`` of ``ranks.world`` works on: ``[n r / W, n (r + 1) / W)``."""
    edges = bounds(n, ranks.world)
    return slice(int(edges[ranks.rank]), int(edges[ranks.rank + 1]))


def choose_on_slices(
    config, table, image_embeds, text_embeds, ranks, *, comm: Comm | None = None, labels: str = "slice", chunk=65536
) -> dict:
    """Steps 2-6 (or a baseline) on every process at once, each on its slice of the pairs.

    Called by every process of the run with the same arguments (each has the embedding tables open, memory
    maps for large runs, and reads only the rows of its slice); returns on every process the dict
    :func:`pds_hf.steps.choose` returns for the whole run (same keys and values: prototypes within float64
    rounding, the rest identical). With one process it is today's one-process path.

    Args:
        config: the run's :class:`~pds_hf.DistillConfig` (method, num_pairs, rm_ratio, seed, empty, synthesis,
            k-means settings, normalize).
        table: the :class:`~pds_hf.inputs.PairTable` the embeddings belong to.
        image_embeds, text_embeds: one row per distinct image and caption of ``table`` (arrays or memory maps,
            float32 or float16).
        ranks: this process's :class:`~pds_hf.distributed.Ranks`; ``torch.distributed`` must be set up when
            ``ranks.world > 1`` (Accelerate / torchrun do it).
        comm: the collectives to use (default: a new :class:`Comm` with ``ranks.timeout``); pass one to read
            its ``bytes_sent`` afterwards.
        labels: for PDS, ``"slice"``: ``labels`` holds the cluster of this process's pairs only (those of
            :func:`pair_slice`), so that nothing ``N``-sized is gathered; ``"all"``: every pair's, gathered on
            every process (as the one-process dict; for small runs and tests).
        chunk: rows per block when reading the embeddings.

    Returns:
        The dict of :func:`pds_hf.steps.choose`: ``image_embeds``, ``text_embeds``, ``image_index``,
        ``support``, ``image_cluster``, ``text_cluster``, ``caption_index``, ``pairs``, ``kept``, ``num_empty``
        and, for PDS, ``labels``.

    Example:
        ```py
        >>> ranks = current_ranks()  # under `torchrun --nproc-per-node 2`
        >>> chosen = choose_on_slices(config, table, np.load("images.npy", mmap_mode="r"),
        ...                           np.load("texts.npy", mmap_mode="r"), ranks)
        >>> chosen["caption_index"][:3]  # the same on both processes
        ```
    """
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}.")
    if ranks.world == 1:
        return choose(config, table, image_embeds, text_embeds)
    comm = Comm(ranks, timeout=getattr(ranks, "timeout", 600.0)) if comm is None else comm
    image_embeds, text_embeds = as_table(image_embeds), as_table(text_embeds)
    if config.method == "pds":
        return _pds(config, table, image_embeds, text_embeds, comm, labels, chunk)
    return _baseline(config, table, image_embeds, text_embeds, comm, chunk)


def _first_bad(comm: Comm, bad: np.ndarray) -> tuple[int, list]:
    """How many bad items all processes found, and the first five (global indices)."""
    total = int(comm.sum(np.array([len(bad)], dtype=np.int64))[0])
    if total == 0:
        return 0, []
    first = np.full(5, -1, dtype=np.int64)
    first[: min(5, len(bad))] = np.sort(bad)[:5]
    merged = np.concatenate(comm.all_gather_same(first))
    return total, sorted(int(i) for i in merged if i >= 0)[:5]


def _check_tables(comm: Comm, image_embeds, text_embeds, chunk: int) -> None:
    for name, array in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {array.shape}.")
        edges = bounds(len(array), comm.world)
        lo, hi = int(edges[comm.rank]), int(edges[comm.rank + 1])
        bad = nonfinite_rows(array[lo:hi], chunk=chunk) + lo
        total, first = _first_bad(comm, bad)
        if total:
            raise ValueError(f"{name} has NaN or inf in {total} row(s), first {first}; fix or drop those rows.")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"image_embeds has {image_embeds.shape[1]} dimensions, text_embeds {text_embeds.shape[1]}.")


# ----------------------------------------------------------------------------------------------------------
# Step 2: the global rm_ratio cut
# ----------------------------------------------------------------------------------------------------------


def sortable_keys(similarity) -> np.ndarray:
    """``uint32`` keys that sort as the float32 ``similarity`` values do (-0.0 and 0.0 get one key).

    Example:
        ```py
        >>> keys = sortable_keys(np.array([0.5, -2.0, 0.0, -0.0, 1.0], dtype=np.float32))
        >>> np.argsort(keys, kind="stable").tolist()
        [1, 2, 3, 0, 4]
        ```
    """
    bits = (np.asarray(similarity, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def kept_on_slices(comm: Comm, similarity, rm_ratio: float, weights) -> np.ndarray:
    """Mask of this slice's pairs kept by the global cut :func:`pds_hf.filter.filter_pairs` makes on all pairs.

    The pairs are removed lowest similarity first (ties: the earlier pair first) while the removed weight stays
    within ``rm_ratio`` of the total. The value at the cut is found from two all-reduced histograms of 65,536
    bins (the high then the low 16 bits of :func:`sortable_keys`), the tied pairs at that value by the weight of
    the ties in the slices before this one. Exact for whole-number weights (sums below ``2**53``).
    """
    if not 0.0 <= rm_ratio < 1.0:
        raise ValueError(f"rm_ratio must be in [0, 1), got {rm_ratio}.")
    weights = np.asarray(weights, dtype=np.float64)
    total = comm.sum(np.array([weights.sum()], dtype=np.float64))[0]
    # As filter_pairs: the removed weight may reach rm_ratio * total (a little tolerance for rounding).
    limit = rm_ratio * total * (1 + 1e-9)
    keys = sortable_keys(similarity)
    high = (keys >> np.uint32(16)).astype(np.int64)
    cumulative = np.cumsum(comm.sum(np.bincount(high, weights=weights, minlength=1 << 16)))
    over = np.flatnonzero(cumulative > limit)
    if over.size == 0:  # everything fits under the limit: all removed
        return np.zeros(len(keys), dtype=bool)
    top = int(over[0])
    below = cumulative[top - 1] if top else 0.0
    inside = high == top
    low = (keys[inside] & np.uint32(0xFFFF)).astype(np.int64)
    cumulative_low = below + np.cumsum(comm.sum(np.bincount(low, weights=weights[inside], minlength=1 << 16)))
    cut_low = int(np.flatnonzero(cumulative_low > limit)[0])
    below = cumulative_low[cut_low - 1] if cut_low else below
    cut = np.uint32((top << 16) | cut_low)
    tied = keys == cut
    tied_weight = np.cumsum(weights[tied])
    before = comm.all_gather_same(np.array([tied_weight[-1] if tied_weight.size else 0.0]))
    before = float(np.sum(before[: comm.rank])) if comm.rank else 0.0
    removed = keys < cut
    removed[tied] = below + before + tied_weight <= limit
    return ~removed


# ----------------------------------------------------------------------------------------------------------
# Step 3: k-means on slices
# ----------------------------------------------------------------------------------------------------------


def _unique_vectors(embeds, rows, chunk: int) -> np.ndarray:
    """The distinct rows of ``embeds[rows]`` as raw bytes, ``(n_distinct, row_bytes)`` uint8."""
    width = embeds.dtype.itemsize * embeds.shape[1]
    found = [np.zeros((0, width), dtype=np.uint8)]
    for start in range(0, len(rows), chunk):
        block = np.ascontiguousarray(embeds[rows[start : start + chunk]])
        found.append(block.view(np.uint8).reshape(len(block), width))
    return np.unique(np.concatenate(found), axis=0)


def _cluster_slices(comm: Comm, embeds, pair_index, kept, weights, k, *, what, config, chunk):
    """Per pair of this slice its cluster (-1 where filtered out), and the centres; as ``_cluster_side`` of
    :mod:`pds_hf.prototypes` on all pairs."""
    rows_used, inverse = np.unique(pair_index[kept], return_inverse=True)
    row_weight = np.bincount(inverse, weights=weights[kept], minlength=len(rows_used))
    # Each used row's weight goes to the process owning its range of rows, which sums what it is sent.
    edges = bounds(len(embeds), comm.world)
    cuts = np.searchsorted(rows_used, edges)
    sent_rows = comm.exchange([rows_used[cuts[q] : cuts[q + 1]] for q in range(comm.world)])
    sent_weight = comm.exchange([row_weight[cuts[q] : cuts[q + 1]] for q in range(comm.world)])
    owned, where = np.unique(np.concatenate(sent_rows), return_inverse=True)
    owned_weight = np.bincount(where, weights=np.concatenate(sent_weight), minlength=len(owned))
    positive = owned_weight > 0
    owned, owned_weight = owned[positive], owned_weight[positive]
    sizes = np.concatenate(comm.all_gather_same(np.array([len(owned)], dtype=np.int64)))
    n_used, offset = int(sizes.sum()), int(sizes[: comm.rank].sum())
    if n_used < k:
        raise ValueError(
            f"num_pairs={k} is more than the {n_used} distinct {what}s left after filtering; "
            f"lower num_pairs (or rm_ratio)."
        )
    distinct = int(comm.max(np.array([distinct_rows(embeds, owned, k, chunk=chunk)], dtype=np.int64))[0])
    if distinct < k:  # every process holds fewer than k distinct vectors: count them all together
        vectors = comm.all_gather(_unique_vectors(embeds, owned, chunk))
        distinct = len(np.unique(np.concatenate(vectors), axis=0))
        if distinct < k:
            raise ValueError(
                f"num_pairs={k} is more than the {distinct} distinct {what} embeddings left after filtering: "
                f"the {n_used} {what}s in use encode to only {distinct} different vectors. Lower num_pairs to "
                f"at most {distinct}, or remove the duplicate {what}s."
            )
    # The sample kmeans() draws depends on the number of used rows alone; rows are in the same (ascending)
    # order here, split by owner, so each owner knows which of its rows are drawn.
    sample = fit_sample(n_used, k, DEFAULT_MAX_POINTS_PER_CENTROID, config.seed)
    mine = np.arange(len(owned)) if sample is None else sample[(sample >= offset) & (sample < offset + len(owned))]
    if sample is not None:
        mine = mine - offset
    fit_x = comm.gather(fit_points(embeds, owned[mine], config.normalize, chunk))
    fit_w = comm.gather(owned_weight.astype(np.float32)[mine])
    comm.mark(f"{what} sample")
    centroids = np.zeros((k, embeds.shape[1]), dtype=np.float32)
    if comm.rank == 0:
        # One copy of the sample (the receive buffer is freed before the Lloyd iterations).
        fit_x, fit_w = np.concatenate(fit_x), np.concatenate(fit_w)
        km = train_kmeans(
            fit_x,
            k,
            weights=fit_w,
            seed=config.seed,
            iterations=config.kmeans_iterations,
            restarts=config.kmeans_restarts,
            init=config.kmeans_init,
            gpu=None,
        )
        centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, -1)
    del fit_x, fit_w
    centroids = comm.broadcast(centroids, src=0)
    comm.mark(f"{what} fit")
    row_labels, _ = assign(centre_index(centroids), embeds, rows_used, normalize=config.normalize, chunk=chunk)
    labels = np.full(len(pair_index), -1, dtype=np.int64)
    labels[kept] = row_labels[inverse]
    comm.mark(f"{what} assign")
    # A cluster holds a used row exactly when it holds a kept pair.
    filled = comm.sum(np.bincount(labels[kept], minlength=k).astype(np.int64)) > 0
    check_filled(filled, what, config.normalize)
    return labels, centroids


# ----------------------------------------------------------------------------------------------------------
# Steps 2-6 of PDS
# ----------------------------------------------------------------------------------------------------------


def _pds(config, table, image_embeds, text_embeds, comm: Comm, labels: str, chunk: int) -> dict:
    k = int(config.num_pairs)
    n = int(table.num_pairs)
    _check_tables(comm, image_embeds, text_embeds, chunk)
    mine = pair_slice(n, comm)
    pair_image = np.asarray(table.pair_image[mine], dtype=np.int64)
    pair_text = np.asarray(table.pair_text[mine], dtype=np.int64)
    for name, index, rows in (("image_index", pair_image, image_embeds), ("text_index", pair_text, text_embeds)):
        outside = int(comm.max(np.array([int(index.size > 0 and (index.min() < 0 or index.max() >= len(rows)))]))[0])
        if outside:
            raise ValueError(f"{name} points outside {name.replace('index', 'embeds')}.")
    weights = np.ones(len(pair_image))

    similarity = pair_similarity(image_embeds, text_embeds, pair_image, pair_text, chunk=chunk)
    kept = kept_on_slices(comm, similarity, config.rm_ratio, weights) & (weights > 0)
    comm.mark("filter")
    num_kept = int(comm.sum(np.array([kept.sum()], dtype=np.int64))[0])
    if num_kept < k:
        raise ValueError(
            f"num_pairs={k} is more than the {num_kept} pairs left after filtering "
            f"{n} pairs with rm_ratio={config.rm_ratio}; lower num_pairs or rm_ratio."
        )
    side = dict(kept=kept, weights=weights, k=k, config=config, chunk=chunk)
    image_labels, image_centroids = _cluster_slices(comm, image_embeds, pair_image, what="image", **side)
    comm.mark("k-means images")
    text_labels, text_centroids = _cluster_slices(comm, text_embeds, pair_text, what="caption", **side)
    comm.mark("k-means texts")

    # Step 4: each process's sparse cells, summed and solved on process 0, the matching broadcast.
    cells, where = np.unique(image_labels[kept] * k + text_labels[kept], return_inverse=True)
    cell_weight = np.bincount(where, weights=weights[kept], minlength=len(cells))
    all_cells, all_weights = comm.gather(cells), comm.gather(cell_weight)
    matching = np.zeros((2, k), dtype=np.int64)
    if comm.rank == 0:
        from scipy.sparse import csr_array

        cells, where = np.unique(np.concatenate(all_cells), return_inverse=True)
        totals = np.bincount(where, weights=np.concatenate(all_weights), minlength=len(cells))
        positive = totals > 0
        cells, totals = cells[positive], totals[positive]
        matching[:] = align_clusters(csr_array((totals, (cells // k, cells % k)), shape=(k, k)))
    del all_cells, all_weights
    image_cluster, text_cluster = comm.broadcast(matching, src=0)
    comm.mark("align")

    # Step 5: float64 sums and counts per match, added across processes.
    group = matched_groups(kept, image_labels, text_labels, image_cluster, text_cluster, k)
    sums_chunk = max(1, chunk // 4)

    def means(group_of):
        sums = []
        for embeds, index in ((image_embeds, pair_image), (text_embeds, pair_text)):
            total, count = group_sums(embeds, index, group_of, weights, k, chunk=sums_chunk)
            sums.append((comm.sum(total), comm.sum(count)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return [total / count[:, None] for total, count in sums], sums[0][1]

    (image_protos, text_protos), support = means(group)
    image_protos, text_protos, support, image_cluster, text_cluster, _, num_empty = finish_prototypes(
        image_protos,
        text_protos,
        support,
        image_cluster,
        text_cluster,
        empty=config.empty,
        normalize=config.normalize,
        centroids=(image_centroids, text_centroids),
        cluster_means=lambda: (means(image_labels)[0][0], means(text_labels)[0][1]),
    )

    comm.mark("prototypes")
    # Step 6: each process searches its range of the distinct rows; the best per prototype wins.
    caption_index = _nearest_on_slices(comm, text_protos, text_embeds, chunk)
    if config.synthesis == "retrieve-scored":
        image_index = _scored_on_slices(comm, image_embeds, image_protos, text_protos, chunk=max(1, chunk // 4))
    else:
        image_index = _nearest_on_slices(comm, image_protos, image_embeds, chunk)
    comm.mark("nearest")
    if labels == "all":
        image_labels = np.concatenate(comm.all_gather(image_labels))
        text_labels = np.concatenate(comm.all_gather(text_labels))
    return dict(
        image_embeds=image_protos,
        text_embeds=text_protos,
        image_index=image_index,
        support=support,
        image_cluster=image_cluster,
        text_cluster=text_cluster,
        caption_index=caption_index,
        pairs=np.zeros(0, np.int64),
        kept=np.int64(num_kept),
        num_empty=np.int64(num_empty),
        labels=dict(image_labels=image_labels, text_labels=text_labels),
    )


def aligned_bounds(n: int, world: int, chunk: int) -> np.ndarray:
    """:func:`bounds` moved down to multiples of ``chunk`` (the last edge stays ``n``), so that the processes'
    blocks of ``chunk`` rows are the blocks one process reads.

    The scores of one candidate can differ in the last bit with its place in a block (BLAS tiles the block), which
    decides between identical rows (an image repeated for its five captions); with the one-process blocks, every
    score and so every tie is the same.

    Example:
        ```py
        >>> aligned_bounds(1000, 3, 100).tolist()
        [0, 300, 600, 1000]
        ```
    """
    edges = bounds(n, world) // chunk * chunk
    edges[-1] = n
    return edges


def _nearest_on_slices(comm: Comm, queries, candidates, chunk: int) -> np.ndarray:
    edges = aligned_bounds(len(candidates), comm.world, chunk)
    lo, hi = int(edges[comm.rank]), int(edges[comm.rank + 1])
    index, score = nearest_scored(queries, candidates, start=lo, stop=hi, chunk=chunk)
    return comm.best(score, index, largest=True)[1]


def _scored_on_slices(comm: Comm, image_embeds, image_prototypes, text_prototypes, *, candidates=8, chunk=16384):
    """:func:`pds_hf.synthesize.retrieve_scored_images` with each process scoring its range of images, a block of
    ``chunk`` images at a time (memory: ``M x chunk`` scores, whatever the number of images)."""
    edges = bounds(len(image_embeds), comm.world)
    lo, hi = int(edges[comm.rank]), int(edges[comm.rank + 1])
    count = min(int(candidates), len(image_embeds))
    image_prototypes = np.asarray(image_prototypes, np.float32)
    protos_unit = unit_rows(image_prototypes).reshape(len(image_prototypes), -1)
    texts_unit = unit_rows(np.asarray(text_prototypes, np.float32)).reshape(len(image_prototypes), -1)
    m = len(image_prototypes)
    # This process's best `count` images per prototype by nearness (then the lower row), with the teacher's score
    # of each; -inf pads a range shorter than `count`. Rows: nearness, global row (exact in float64), teacher.
    best = np.full((3, m, count), -np.inf)
    best[1] = np.iinfo(np.int64).max
    for start in range(lo, hi, chunk):
        block = unit_rows(image_embeds[start : min(start + chunk, hi)]).reshape(-1, protos_unit.shape[1])
        near = protos_unit @ block.T
        take = min(count, len(block))
        rows = np.argsort(-near, axis=1, kind="stable")[:, :take]
        teacher = np.einsum("kd,kcd->kc", texts_unit, block[rows])
        found = np.stack([np.take_along_axis(near, rows, axis=1), start + rows, teacher]).astype(np.float64)
        best = _keep_nearest(np.concatenate([best, found], axis=2), count)
    # Ranges ascend with the rank: the processes' lists side by side stay in row order among equal nearness.
    merged = _keep_nearest(np.concatenate(comm.all_gather_same(best), axis=2), count)
    return merged[1, np.arange(m), np.argmax(merged[2], axis=1)].astype(np.int64)


def _keep_nearest(candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` nearest of ``(3, M, C)`` candidates per prototype, nearest first; equal nearness keeps the
    candidates' order (which is by row)."""
    order = np.argsort(-candidates[0], axis=1, kind="stable")[:, :count]
    return np.stack([np.take_along_axis(part, order, axis=1) for part in candidates])


# ----------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------


def _pair_features(comm: Comm, table, image_embeds, text_embeds, mine: slice) -> np.ndarray:
    """This slice's pairs as :func:`pds_hf.baselines.select_pairs` sees them: unit image and text side by side."""
    sides = []
    for name, embeds, index in (
        ("image_embeds", image_embeds, table.pair_image),
        ("text_embeds", text_embeds, table.pair_text),
    ):
        rows = np.asarray(embeds[np.asarray(index[mine], dtype=np.int64)], dtype=np.float32)
        total, first = _first_bad(comm, nonfinite_rows(rows) + mine.start)
        if total:
            raise ValueError(f"{name} holds NaN or inf at pair(s) {first}; drop those pairs first.")
        sides.append(unit_rows(rows).reshape(len(rows), -1))
    return np.concatenate(sides, axis=1)


def _owner(edges: np.ndarray, index: int) -> int:
    return int(np.searchsorted(edges, index, side="right") - 1)


def herding_on_slices(comm: Comm, x, start: int, total: int, num_pairs: int) -> np.ndarray:
    """:func:`pds_hf.baselines.herding` with each process holding the rows ``[start, start + len(x))`` of
    ``total``: each step's lowest cost is reduced across processes (ties to the lower row)."""
    import torch

    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    edges = np.concatenate(comm.all_gather_same(np.array([start], dtype=np.int64)))
    edges = np.append(edges, total)
    target = torch.from_numpy(comm.sum(x.double().sum(dim=0).numpy())) / total
    squared_norms = (x * x).sum(dim=1)
    chosen_sum = torch.zeros_like(target)
    available = torch.ones(len(x), dtype=torch.bool)
    picked = []
    for k in range(1, num_pairs + 1):
        gap = (k * target - chosen_sum).float()
        cost = squared_norms - 2 * (x @ gap)
        cost[~available] = torch.inf
        if len(x):
            local = int(torch.argmin(cost))
            score, index = float(cost[local]), start + local
        else:
            score, index = np.inf, total
        _, best = comm.best([score], [index], largest=False)
        best = int(best[0])
        owner = _owner(edges, best)
        row = x[best - start].numpy() if owner == comm.rank else np.zeros(x.shape[1], dtype=np.float32)
        row = torch.from_numpy(comm.broadcast(row, src=owner))
        if owner == comm.rank:
            available[best - start] = False
        picked.append(best)
        chosen_sum += row.double()
    return np.asarray(picked, dtype=np.int64)


def kcenter_on_slices(comm: Comm, x, start: int, total: int, num_pairs: int, *, seed: int) -> np.ndarray:
    """:func:`pds_hf.baselines.kcenter` (first row drawn with ``seed``) on rows split across processes as in
    :func:`herding_on_slices`: each step's farthest row is reduced across processes (ties to the lower row)."""
    import torch

    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    edges = np.concatenate(comm.all_gather_same(np.array([start], dtype=np.int64)))
    edges = np.append(edges, total)

    def row_of(index: int):
        owner = _owner(edges, index)
        row = x[index - start].numpy() if owner == comm.rank else np.zeros(x.shape[1], dtype=np.float32)
        return owner == comm.rank, torch.from_numpy(comm.broadcast(row, src=owner))

    first = int(np.random.default_rng(seed).integers(total))
    picked = [first]
    here, row = row_of(first)
    nearest_dist = torch.linalg.vector_norm(x - row, dim=1)
    if here:
        nearest_dist[first - start] = -1.0
    for _ in range(num_pairs - 1):
        if len(x):
            local = int(torch.argmax(nearest_dist))
            score, index = float(nearest_dist[local]), start + local
        else:
            score, index = -np.inf, total
        best = int(comm.best([score], [index], largest=True)[1][0])
        picked.append(best)
        here, row = row_of(best)
        nearest_dist = torch.minimum(nearest_dist, torch.linalg.vector_norm(x - row, dim=1))
        if here:
            nearest_dist[best - start] = -1.0
    return np.asarray(picked, dtype=np.int64)


def _baseline(config, table, image_embeds, text_embeds, comm: Comm, chunk: int) -> dict:
    if config.method not in BASELINES:
        raise ValueError(f"Unknown baseline {config.method!r}; choose one of {BASELINES}.")
    n = int(table.num_pairs)
    mine = pair_slice(n, comm)
    features = _pair_features(comm, table, image_embeds, text_embeds, mine)
    check_count(config.num_pairs, n)
    if config.method == "random":
        chosen = np.random.default_rng(config.seed).choice(n, size=config.num_pairs, replace=False).astype(np.int64)
    elif config.method == "herding":
        chosen = herding_on_slices(comm, features, mine.start, n, config.num_pairs)
    else:
        chosen = kcenter_on_slices(comm, features, mine.start, n, config.num_pairs, seed=config.seed)
    # The chosen rows are few (num_pairs): every process reads them.
    return baseline_dict(table, image_embeds, text_embeds, np.asarray(chosen, dtype=np.int64))


__all__ = [
    "aligned_bounds",
    "bounds",
    "choose_on_slices",
    "herding_on_slices",
    "kcenter_on_slices",
    "kept_on_slices",
    "pair_slice",
    "sortable_keys",
]
