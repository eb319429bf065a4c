"""Two datasets x two student protocols x M: does PDS's edge survive, and which offline step 7 keeps it?

    python benchmarks/quality/grid.py --dataset openmoji      # one dataset, both protocols (results-openmoji.json)
    python benchmarks/quality/grid.py --dataset openclipart
    python benchmarks/quality/grid.py --report                # RESULTS.md from the results-*.json files there
    python benchmarks/quality/grid.py --dataset openmoji --tune --output findings/tune-openmoji.json
    python benchmarks/quality/grid.py --dataset openmoji --train-images 550 --one-caption --own-teacher \
        --num-pairs 10 25 50 100 --output benchmarks/quality/findings/pool-openmoji.json
        # ^ issue 18's regime (findings/POOL.md)

Everything runs on cached frozen features, through the package's own steps
(``prototypes_from_embeddings``, ``retrieve_captions``, ``select_pairs``) and its student protocol
(``pds_hf.evaluation.evaluate_features``), like ``investigate.py``. The teacher is the LiT encoder of
:mod:`lit_encoder`, trained on each dataset's train split; the student's image network is the frozen
EfficientNet-Lite0 with a fresh text head.

Two student protocols:

- ``teacher-text`` (a, the paper's): the student's text side is the teacher's text features. PDS trains
  on the text prototype (``text_embedding``), a baseline on its captions' teacher features, and test
  captions are encoded by the teacher.
- ``captions`` (b): the student only has the caption *strings*, as a user who trains a new model from the
  published captions does. It encodes them, training and test captions alike, with a frozen text network
  of its own and learns a fresh head: by default the pretrained all-MiniLM-L6-v2 tower *without* the
  teacher's trained projection (``--student-text minilm``), or all-mpnet-base-v2 (``--student-text mpnet``,
  :mod:`mpnet_text`), a different network that costs about 20 CPU-minutes once to encode both datasets.
  PDS gives it the retrieved caption (step 6), a baseline its chosen captions.

Rows (``--methods``): ``pds`` (step 7 by ``synthesis="retrieve"``: the real image nearest the image
prototype), ``pds-scored`` (step 7 by :func:`pds_hf.synthesize.retrieve_scored_images`: of the 8 images
nearest the image prototype, the one the teacher matches best with the text prototype), ``ideal`` (an ideal
decoder: the student features of each distilled image are the mean of its intersection's members'
features; the text side as ``pds``), ``random``, ``herding``, ``kcenter``.

Seeds: seed ``i`` (``--seeds``, default 5) selects with seed ``42 + i`` (k-means, random subset, k-center's
first pair; herding has none) and trains one student with seed ``i``; a cell's mean ± sd is over those.
The epoch is chosen on the validation split and the test split is scored once per seed.

``--tune`` answers the step-7 question on validation data only: the validation split's images are cut
in two halves (seeded), the epoch is chosen on one and the score read on the other, and the test split
is never read. Its variants are listed in :data:`STEP7`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import investigate  # noqa: E402
import lit_encoder  # noqa: E402
import openclipart  # noqa: E402
import openmoji  # noqa: E402
from run import load_average, machine_info  # noqa: E402

DATASETS = ("openclipart", "openmoji")
PROTOCOLS = ("teacher-text", "captions")
SIZES = (10, 25, 50, 100, 200)
METHODS = ("pds", "pds-scored", "ideal", "random", "herding", "kcenter")
BASELINES = ("random", "herding", "kcenter")
# Offline step-7 rules compared by --tune (each maps a prototype to one real training image).
STEP7 = ("retrieve", "pair", "medoid", "inter-nearest", "scored")
SCORED_CANDIDATES = 8
METRICS = ("IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10", "mean")


class TowerText:
    """The frozen all-MiniLM-L6-v2 tower alone (384-d, unit-norm), as a student's own text network: the
    teacher's text tower *without* the teacher's trained projection. ``encode_texts`` like an encoder."""

    name = "all-MiniLM-L6-v2 (frozen, mean pooling, no teacher projection)"

    def __init__(self, tower):
        self.tower = tower

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.tower.features(list(texts))


class Bench:
    """One dataset's frozen features: teacher embeddings, student image features, both protocols' text sides."""

    def __init__(
        self,
        dataset: str,
        cache_dir: Path,
        *,
        student_text: str = "minilm",
        train_images: int | None = None,
        one_caption: bool = False,
        own_teacher: bool = False,
    ):
        import datasets
        import mpnet_text
        import torch

        from pds_hf.evaluation import load_student

        start = time.perf_counter()
        if dataset == "openclipart":
            self.splits, self.manifest = openclipart.build(cache_dir)
            encoder_dir = cache_dir
        else:
            self.splits, self.manifest = openmoji.build(cache_dir)
            encoder_dir = cache_dir / dataset
        self.dataset = dataset
        whole_train = self.splits["train"]
        self.splits = pool_splits(self.splits, train_images=train_images, one_caption=one_caption)
        if train_images is not None or one_caption:
            self.manifest = {
                **self.manifest,
                "splits": {
                    name: {"images": len(split), "captions": int(sum(len(c) for c in split["caption"]))}
                    for name, split in self.splits.items()
                },
            }
        self.pool = {
            "train_images": train_images,
            "one_caption": one_caption,
            "teacher_trained_on": "the pool" if own_teacher and train_images is not None else "the whole train split",
        }
        teacher_splits = self.splits
        if not own_teacher and train_images is not None:
            teacher_splits = datasets.DatasetDict(
                {
                    **self.splits,
                    "train": pool_splits(datasets.DatasetDict(train=whole_train), one_caption=one_caption)["train"],
                }
            )
        self.encoder, student, self.encoder_info = lit_encoder.build_encoder(teacher_splits, encoder_dir)
        self.data = investigate.TrainFeatures(self.splits["train"], self.encoder, student)
        if student_text == "mpnet":
            self.text_net = mpnet_text.MPNetText(cache_dir, store_dir=encoder_dir / "features")
        else:
            self.text_net = TowerText(self.encoder.text_tower)
        wrapped = load_student(student)
        self.sets = {}
        for protocol, text_encoder in (("teacher-text", self.encoder), ("captions", self.text_net)):
            for split, features in investigate.held_out_sets(self.splits, wrapped, text_encoder).items():
                self.sets[protocol, split] = features
        self.caption_feats = self.text_net.encode_texts(list(self.data.table.texts))
        self.encoder.save_caches()
        self.teacher_on_test = self._teacher_on_test()
        self.seconds = {"features": time.perf_counter() - start}
        torch.set_num_threads(1)

    def _teacher_on_test(self) -> dict:
        from pds_hf.evaluation.metrics import retrieval_metrics
        from pds_hf.filter import normalize

        test = self.splits["test"]
        images = normalize(self.encoder.encode_images(list(test["image"])))
        captions, owner = [], []
        for row, caption_list in enumerate(test["caption"]):
            captions += caption_list
            owner += [row] * len(caption_list)
        return retrieval_metrics(images @ normalize(self.encoder.encode_texts(captions)).T, owner)

    @property
    def num_pairs(self) -> int:
        return len(self.data.pair_image)


def _first_caption(captions: list[str]) -> dict:
    return {"caption": captions[:1]}


def pool_splits(splits, *, train_images: int | None = None, one_caption: bool = False):
    """The splits a run uses: the train split cut to a seeded subset of images, and each image's captions cut to
    its first, as a set with one caption per image has.

    Args:
        splits: a ``DatasetDict`` with ``train`` (and any other splits), one row per image, ``caption`` a list.
        train_images: keep this many train images, the first of a permutation seeded with 0, in their order
            (``None``: all). Validation and test keep all their images.
        one_caption: keep only the first caption of every image, in every split (openmoji: the CLDR
            annotation, where the emoji has one).

    Returns:
        A new ``DatasetDict`` with the same split names; ``splits`` is unchanged.

    Example:
        ```py
        >>> pooled = pool_splits(splits, train_images=550, one_caption=True)
        >>> len(pooled["train"]), sum(len(c) for c in pooled["train"]["caption"])
        (550, 550)
        ```
    """
    import datasets

    out = {}
    for name, split in splits.items():
        if name == "train" and train_images is not None:
            if not 0 < train_images <= len(split):
                raise ValueError(
                    f"train_images={train_images}, but the train split has {len(split)} images; "
                    f"pass a number from 1 to {len(split)}."
                )
            split = split.select(np.sort(np.random.default_rng(0).permutation(len(split))[:train_images]))
        if one_caption:
            split = split.map(_first_caption, input_columns="caption")
        out[name] = split
    return datasets.DatasetDict(out)


def step7_images(rule: str, data, protos) -> np.ndarray:
    """Per prototype, the index of the real training image that an offline step 7 ``rule`` picks.

    ``retrieve``: nearest the image prototype (``synthesis="retrieve"``). ``pair``: the image of the real
    pair nearest both prototypes (highest ``cos(image, image prototype) + cos(caption, text prototype)``).
    ``medoid``: the intersection's image with the highest mean cosine to its other images.
    ``inter-nearest``: the intersection's image nearest the image prototype. ``scored``: of the
    :data:`SCORED_CANDIDATES` images nearest the image prototype, the one the teacher scores highest
    against the text prototype (:func:`pds_hf.synthesize.retrieve_scored_images`). The intersection rules
    fall back to ``retrieve`` where the intersection is empty.
    """
    from pds_hf.filter import normalize
    from pds_hf.synthesize import retrieve_scored_images

    nearest = investigate.nearest(protos.image_embeds, data.image_embeds)
    if rule == "retrieve":
        return nearest
    if rule == "scored":
        return retrieve_scored_images(
            data.image_embeds, protos.image_embeds, protos.text_embeds, candidates=SCORED_CANDIDATES
        )
    images_unit = normalize(data.image_embeds)
    if rule == "pair":
        scores = (normalize(protos.image_embeds) @ images_unit.T)[:, data.pair_image]
        scores += (normalize(protos.text_embeds) @ normalize(data.text_embeds).T)[:, data.pair_text]
        return data.pair_image[scores.argmax(axis=1)]
    out = nearest.copy()
    for k, members in enumerate(investigate._members(protos)):
        images = np.unique(data.pair_image[members])
        if not len(images):
            continue
        if rule == "medoid":
            similarity = images_unit[images] @ images_unit[images].T
            out[k] = images[similarity.sum(axis=1).argmax()]
        elif rule == "inter-nearest":
            out[k] = images[(images_unit[images] @ normalize(protos.image_embeds[k : k + 1]).T).argmax()]
        else:
            raise ValueError(f"Unknown step-7 rule {rule!r}; known: {STEP7}.")
    return out


def prototypes(data, num_pairs: int, seed: int):
    from pds_hf.prototypes import prototypes_from_embeddings

    return prototypes_from_embeddings(
        data.image_embeds,
        data.text_embeds,
        num_pairs,
        seed=seed,
        image_index=data.pair_image,
        text_index=data.pair_text,
    )


def selection(method: str, data, num_pairs: int, seed: int, protos=None) -> dict:
    """What a method gives the student: ``image_feats`` (student), ``teacher_text`` (protocol a) and
    ``caption_index`` (into the train texts, protocol b), and diagnostics of the images it chose."""
    from pds_hf.baselines import select_pairs
    from pds_hf.caption import retrieve_captions
    from pds_hf.filter import normalize

    if method in BASELINES:
        chosen = np.asarray(
            select_pairs(
                method, data.image_embeds[data.pair_image], data.text_embeds[data.pair_text], num_pairs, seed=seed
            )
        )
        images, captions = data.pair_image[chosen], data.pair_text[chosen]
        return {
            "image_feats": data.student_feats[images],
            "teacher_text": data.text_embeds[captions],
            "caption_index": captions,
            "diagnostics": _diagnostics(data, images, data.text_embeds[captions], None),
        }
    protos = protos if protos is not None else prototypes(data, num_pairs, seed)
    _, caption_index = retrieve_captions(protos.text_embeds, data.text_embeds, list(data.table.texts))
    rule = {"pds": "retrieve", "ideal": "retrieve"}.get(method, method.removeprefix("pds-"))
    images = step7_images(rule, data, protos)
    image_feats = data.student_feats[images]
    if method == "ideal":
        image_feats = investigate._group_mean(data.student_feats[data.pair_image], protos)
        empty = np.isnan(image_feats).any(axis=1)
        image_feats[empty] = data.student_feats[images[empty]]
    diagnostics = _diagnostics(data, images, protos.text_embeds, protos)
    diagnostics["teacher_image_to_image_prototype"] = float(
        np.mean(np.sum(normalize(data.image_embeds[images]) * normalize(protos.image_embeds), axis=1))
    )
    return {
        "image_feats": np.asarray(image_feats, np.float32),
        "teacher_text": protos.text_embeds,
        "caption_index": caption_index,
        "diagnostics": diagnostics,
    }


def _diagnostics(data, images, texts, protos) -> dict:
    """How well the chosen images fit their text side (teacher cosine), how many are distinct, and for PDS
    how many lie in their prototype's intersection."""
    from pds_hf.filter import normalize

    out = {
        "distinct_images": int(len(np.unique(images))),
        "teacher_image_to_text": float(
            np.mean(np.sum(normalize(data.image_embeds[images]) * normalize(texts), axis=1))
        ),
    }
    if protos is not None:
        members = investigate._members(protos)
        out["in_intersection"] = float(
            np.mean([image in set(data.pair_image[m].tolist()) for image, m in zip(images, members, strict=False)])
        )
        out["empty_intersections"] = int(protos.num_empty)
    return out


def diagnose(bench: Bench, *, methods, sizes, seeds: int) -> None:
    """Print, per M and rule, the mean over seeds of each selection diagnostic (no student is trained)."""
    keys = ("teacher_image_to_text", "teacher_image_to_image_prototype", "in_intersection", "distinct_images")
    print(f"{'M':>5} {'M/N':>6} {'rule':14s} " + " ".join(f"{k:>32s}" for k in keys))
    for num_pairs in sizes:
        protos = [prototypes(bench.data, num_pairs, 42 + i) for i in range(seeds)]
        for method in ["ideal" if m == "ideal" else f"pds-{m}" for m in methods if m not in BASELINES] + [
            m for m in methods if m in BASELINES
        ]:
            found = [
                selection(method, bench.data, num_pairs, 42 + i, protos=None if method in BASELINES else protos[i])[
                    "diagnostics"
                ]
                for i in range(seeds)
            ]
            cells = [f"{np.mean([d[k] for d in found]):32.3f}" if k in found[0] else f"{'':32s}" for k in keys]
            print(f"{num_pairs:5d} {num_pairs / bench.num_pairs:6.1%} {method:14s} " + " ".join(cells), flush=True)


def halves(retrieval, seed: int = 0):
    """The validation set cut into two sets of about half its images each (all captions of an image together)."""
    from pds_hf.evaluation.features import RetrievalSet

    order = np.random.default_rng(seed).permutation(retrieval.num_images)
    parts = []
    for name, images in (
        ("validation half A (epoch selection)", order[: len(order) // 2]),
        ("validation half B (score)", order[len(order) // 2 :]),
    ):
        images = np.sort(images)
        remap = np.full(retrieval.num_images, -1, np.int64)
        remap[images] = np.arange(len(images))
        keep = remap[retrieval.caption_to_image] >= 0
        parts.append(
            RetrievalSet(
                retrieval.image_feats[images],
                retrieval.text_feats[keep],
                remap[retrieval.caption_to_image[keep]],
                name=name,
            )
        )
    return parts


def run_cells(bench: Bench, *, methods, sizes, seeds: range, epochs: int, tune: bool, log, save) -> list[dict]:
    """Every (seed, M, method, protocol) cell: one student per seed, scored on test (or validation half B).

    Seeds are the outer loop and ``save(rows)`` is called after each (seed, M), so a run stopped early
    leaves every M measured with fewer seeds."""
    from pds_hf.evaluation import evaluate_features

    data, rows = bench.data, []
    for index in seeds:
        seed = 42 + index
        for num_pairs in sizes:
            protos = prototypes(data, num_pairs, seed)
            for method in methods:
                start = time.perf_counter()
                chosen = selection(method, data, num_pairs, seed, protos=None if method in BASELINES else protos)
                for protocol in PROTOCOLS:
                    text = (
                        chosen["teacher_text"]
                        if protocol == "teacher-text"
                        else bench.caption_feats[chosen["caption_index"]]
                    )
                    if tune:
                        select_on, score_on = halves(bench.sets[protocol, "validation"])
                    else:
                        select_on, score_on = bench.sets[protocol, "validation"], bench.sets[protocol, "test"]
                    report = evaluate_features(
                        chosen["image_feats"], text, score_on, validation=select_on, runs=1, seed=index, epochs=epochs
                    )
                    rows.append(
                        {
                            "dataset": bench.dataset,
                            "protocol": protocol,
                            "method": method,
                            "num_pairs": num_pairs,
                            "seed": seed,
                            "student_seed": index,
                            "metrics": report.runs[0],
                            "selected_epoch": report.selected_epochs[0],
                            **chosen["diagnostics"],
                        }
                    )
                seconds = time.perf_counter() - start
                rows[-1]["seconds"] = rows[-2]["seconds"] = round(seconds, 2)
                log(
                    f"{bench.dataset} M={num_pairs:4d} seed {seed} {method:14s} "
                    + "  ".join(f"{p}: {r['metrics']['mean']:6.2f}" for p, r in zip(PROTOCOLS, rows[-2:], strict=False))
                    + f"  in-intersection {chosen['diagnostics'].get('in_intersection', float('nan')):.2f}"
                    + f"  teacher cos {chosen['diagnostics']['teacher_image_to_text']:.3f}  ({seconds:.0f}s)"
                )
            save(rows)
    return rows


def summarize(rows: list[dict]) -> dict:
    """``{(dataset, protocol, method, M): {"mean": {metric: mean}, "sd": {metric: sd}, "n": seeds}}``."""
    cells: dict = {}
    for row in rows:
        cells.setdefault((row["dataset"], row["protocol"], row["method"], row["num_pairs"]), []).append(row["metrics"])
    return {
        key: {
            "mean": {m: float(np.mean([r[m] for r in runs])) for m in METRICS},
            "sd": {m: float(np.std([r[m] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for m in METRICS},
            "n": len(runs),
        }
        for key, runs in cells.items()
    }


def _cell(summary, key, metric="mean") -> str:
    if key not in summary:
        return "not run"
    cell = summary[key]
    return f"{cell['mean'][metric]:.2f} ± {cell['sd'][metric]:.2f}" + ("" if cell["n"] == 5 else f" (n={cell['n']})")


def merge(parts: list[dict]) -> dict:
    """One dataset's result files (e.g. a run per group of methods) as one: rows joined, commands and
    times listed; the data, teacher and machine records of the first."""
    merged = dict(parts[0])
    merged["rows"] = [row for part in parts for row in part["rows"]]
    merged["command"] = "\n".join(
        part["command"] + ("" if part["complete"] else "   # stopped early") for part in parts
    )
    merged["seconds"] = {
        "features": parts[0]["seconds"]["features"],
        "cells": sum(part["seconds"]["cells"] for part in parts),
        "total": sum(part["seconds"]["total"] for part in parts),
    }
    merged["loads"] = [parts[0]["loads"][0], parts[-1]["loads"][1]]
    return merged


def write_tuning(path: Path, sections: list[tuple[str, list[dict]]]) -> None:
    """findings/TUNING.md: the step-7 rules on validation (``--tune`` runs), each section's cells pooled."""
    lines = [
        "# Offline step 7 on validation data (`grid.py --tune`)",
        "",
        "Generated by `grid.py --report` from `findings/tune-*.json` and `findings/small-pool-*.json`; do not "
        "edit by hand. Mean recall on half B of each validation split (epoch chosen on half A; the test split is "
        "never read), mean ± sd over seeds (with n). Each rule maps a prototype to one real training image "
        "(see `grid.step7_images`); N is the number of training pairs distilled from.",
        "",
    ]
    for title, parts in sections:
        lines += _tuning_section(title, parts)
    path.write_text("\n".join(lines))


def _tuning_section(title: str, parts: list[dict]) -> list[str]:
    # A cell that two runs both measured (same rule, M, seed) counts once: it is deterministic.
    rows = list(
        {
            (r["dataset"], r["protocol"], r["method"], r["num_pairs"], r["seed"]): r
            for part in parts
            for r in part["rows"]
        }.values()
    )
    summary = summarize(rows)
    lines = [
        "Commands:",
        "",
        "```",
        *[part["command"] + ("" if part["complete"] else "   # stopped early") for part in parts],
        "```",
        "",
    ]
    pool = {part["dataset"]: part["train_pairs"] for part in parts}
    for dataset in DATASETS:
        for protocol in PROTOCOLS:
            keys = [k for k in summary if k[0] == dataset and k[1] == protocol]
            if not keys:
                continue
            sizes = sorted({k[3] for k in keys})
            methods = [m for m in dict.fromkeys(r["method"] for r in rows) if any(k[2] == m for k in keys)]
            lines += [
                f"## {dataset}, {protocol}{title}: N = {pool[dataset]}",
                "",
                "| Rule | " + " | ".join(f"M = {m}" for m in sizes) + " |",
                "|---|" + "---:|" * len(sizes),
            ]
            for method in methods:
                cells = []
                for m in sizes:
                    cell = summary.get((dataset, protocol, method, m))
                    cells.append(
                        f"{cell['mean']['mean']:.2f} ± {cell['sd']['mean']:.2f} (n={cell['n']})" if cell else ""
                    )
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


REPORT_TITLE = "Quality beyond one dataset: PDS against random, herding and k-center, two datasets x two protocols"


def write_report(
    path: Path,
    results: list[dict],
    *,
    title: str = REPORT_TITLE,
    source: str = "the `results-<dataset>.json` files written by `grid.py --dataset <name>`",
    analysis: str = "README.md",
) -> None:
    """A results page (RESULTS.md by default) from per-dataset result files (only what was measured).

    Args:
        path: the page to write.
        results: result dicts as ``main`` saves them (one per dataset, see :func:`merge`).
        title: the page's heading.
        source: which files the page is generated from, in its first line.
        analysis: the link, relative to ``path``, of the page that discusses the numbers.

    Example:
        ```py
        >>> write_report(HERE / "RESULTS.md", [merge([json.loads(p.read_text())])])
        ```
    """
    lines = [
        f"# {title}",
        "",
        f"Generated by `benchmarks/quality/grid.py --report` from {source}; do not edit by hand (the analysis "
        f"is in [{Path(analysis).name}]({analysis})).",
        "",
        "Mean recall = mean of IR@1/5/10 and TR@1/5/10 on the test split, in %, mean ± sd over seeds (seed i: "
        "selection seed 42 + i, one student trained with seed i, epoch chosen on the validation split). "
        "*M/N*: distilled pairs over training pairs. *best baseline − pds*: positive where a baseline is ahead.",
        "",
    ]
    for result in results:
        rows, dataset = result["rows"], result["dataset"]
        summary = summarize(rows)
        sizes = sorted({r["num_pairs"] for r in rows})
        methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        lines += [f"## {dataset}", "", f"```\n{result['command']}\n```", ""]
        n = result["train_pairs"]
        for protocol in PROTOCOLS:
            title = {
                "teacher-text": "(a) teacher text features (the paper's protocol: PDS trains on the text prototype)",
                "captions": "(b) captions only (the student encodes the caption strings with "
                f"{result['student_text']})",
            }
            lines += [
                f"### {title[protocol]}",
                "",
                "| Method | " + " | ".join(f"M = {m}" for m in sizes) + " |",
                "|---|" + "---:|" * len(sizes),
                "| *M/N* | " + " | ".join(f"{100 * m / n:.1f}%" for m in sizes) + " |",
            ]
            for method in methods:
                label = {"ideal": "*ideal decoder (ceiling)*"}.get(method, method)
                lines.append(
                    f"| {label} | " + " | ".join(_cell(summary, (dataset, protocol, method, m)) for m in sizes) + " |"
                )
            for pds in ("pds", "pds-scored"):
                if pds not in methods:
                    continue
                cells = []
                for m in sizes:
                    scores = [
                        summary[(dataset, protocol, b, m)]["mean"]["mean"]
                        for b in BASELINES
                        if (dataset, protocol, b, m) in summary
                    ]
                    if scores and (dataset, protocol, pds, m) in summary:
                        cells.append(f"{max(scores) - summary[(dataset, protocol, pds, m)]['mean']['mean']:+.2f}")
                    else:
                        cells.append("")
                lines.append(f"| *best baseline − {pds}* | " + " | ".join(cells) + " |")
            lines.append("")
        teacher = result["teacher_on_test"]
        counts, splits = result["manifest"]["counts"], result["manifest"]["splits"]
        lines += [
            f"- Data: {dataset}; "
            + ", ".join(f"{name} {s['images']} images / {s['captions']} captions" for name, s in splits.items())
            + f"; {n} training pairs. Build counts: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + ".",
            *_pool_line(result.get("pool")),
            f"- Teacher: {result['encoder']} (heads selected at epoch {result['encoder_record']['selected_epoch']}); "
            "its own test mean recall "
            + f"{teacher['mean']:.2f} (IR@1/5/10 "
            + " / ".join(f"{teacher[k]:.1f}" for k in ("IR@1", "IR@5", "IR@10"))
            + ", TR@1/5/10 "
            + " / ".join(f"{teacher[k]:.1f}" for k in ("TR@1", "TR@5", "TR@10"))
            + ").",
            f"- Student: frozen EfficientNet-Lite0 (224 px, pooled 1280-d) and a fresh text head; "
            f"{result['settings']}.",
            f"- Seeds per cell: {result['seeds']}. Machine: {result['machine']['cpu']}, {result['machine']['cores']} "
            f"cores shared with other jobs (load average at start {result['loads'][0]}, at end {result['loads'][1]}), "
            "1 torch thread for training, `nice -n 10`; Python "
            f"{result['machine']['python']}, torch {result['machine']['versions'].get('torch')}, pds-hf at "
            f"{result['machine']['commit']}.",
            f"- Wall time on the shared machine, summed over the commands above (they ran side by side): "
            f"{result['seconds']['features']:.0f} s for data, teacher and features (cached after the first run), "
            f"{result['seconds']['cells']:.0f} s for the cells, {result['seconds']['total']:.0f} s in all"
            + (f"; peak resident memory {result['peak_rss_mb']:.0f} MB." if "peak_rss_mb" in result else "."),
            "",
        ]
    path.write_text("\n".join(lines))


def _pool_line(pool: dict | None) -> list[str]:
    if not pool or (pool["train_images"] is None and not pool["one_caption"]):
        return []
    what = [
        f"a seeded subset of {pool['train_images']} train images" if pool["train_images"] else "the train split",
        "one caption per image (each image's first) in every split" if pool["one_caption"] else "all captions",
    ]
    return [f"- Pool: {', '.join(what)}; the teacher's heads trained on {pool['teacher_trained_on']}."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--num-pairs", type=int, nargs="+", default=list(SIZES))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"default {' '.join(METHODS)}; with --tune the step-7 rules {' '.join(STEP7)}",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cell (selection 42 + i, student i)")
    parser.add_argument("--first-seed", type=int, default=0, help="i of the first seed (to add seeds to a run)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--train-images",
        type=int,
        default=None,
        help="distil from this many train images only (seeded subset), to vary M/N; the teacher "
        "stays the one trained on the whole train split unless --own-teacher",
    )
    parser.add_argument(
        "--one-caption",
        action="store_true",
        help="keep only each image's first caption, in every split (a set with one caption per image)",
    )
    parser.add_argument(
        "--own-teacher",
        action="store_true",
        help="with --train-images: train the teacher's heads on that pool, not on the whole train split",
    )
    parser.add_argument(
        "--student-text",
        choices=("minilm", "mpnet"),
        default="minilm",
        help="protocol (b)'s text network: the MiniLM tower without the teacher's projection "
        "(default; its features are cached with the teacher's), or all-mpnet-base-v2 (a "
        "different network; encoding ~9,000 captions costs about 20 CPU-minutes once)",
    )
    parser.add_argument("--tune", action="store_true", help="score on validation halves; never read the test split")
    parser.add_argument("--report", action="store_true", help="write RESULTS.md from the results-*.json files")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="no training: print what each step-7 rule picks (teacher cosines, intersection, "
        "distinct images) for every M and seed",
    )
    parser.add_argument("--cache-dir", type=Path, default=openclipart.DEFAULT_CACHE)
    parser.add_argument(
        "--output", type=Path, default=None, help="where the rows go (default results-<dataset>.json next to this file)"
    )
    args = parser.parse_args(argv)
    if args.report:
        results = [
            merge(
                [
                    json.loads(p.read_text())
                    for p in sorted(HERE.glob(f"results-{name}*.json"), key=lambda p: (len(p.name), p.name))
                ]
            )
            for name in DATASETS
            if any(HERE.glob(f"results-{name}*.json"))
        ]
        write_report(HERE / "RESULTS.md", results)
        print(f"Wrote {HERE / 'RESULTS.md'} from {len(results)} dataset(s).")
        sections = [
            (title, [json.loads(p.read_text()) for p in sorted((HERE / "findings").glob(pattern))])
            for title, pattern in (("", "tune-*.json"), (" (a smaller pool: --train-images)", "small-pool-*.json"))
        ]
        if any(parts for _, parts in sections):
            write_tuning(HERE / "findings" / "TUNING.md", [(title, parts) for title, parts in sections if parts])
            print(f"Wrote {HERE / 'findings' / 'TUNING.md'}.")
        pools = [merge([json.loads(p.read_text())]) for p in sorted((HERE / "findings").glob("pool-*.json"))]
        if pools:
            write_report(
                HERE / "findings" / "POOL.md",
                pools,
                title="Small pools with one caption per image and a teacher of their own (issue 18)",
                source="`findings/pool-<dataset>.json`, written by `grid.py --dataset <name> --train-images N "
                "--one-caption --own-teacher --output findings/pool-<dataset>.json`",
                analysis="../README.md",
            )
            print(f"Wrote {HERE / 'findings' / 'POOL.md'} from {len(pools)} dataset(s).")
        return 0
    if args.dataset is None:
        parser.error("pass --dataset (or --report)")

    import datasets

    datasets.disable_progress_bars()
    start, load_start = time.perf_counter(), load_average()
    command = "nice -n 10 python benchmarks/quality/grid.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.own_teacher and args.train_images is None:
        parser.error("--own-teacher trains the teacher on the --train-images pool; pass --train-images too")
    bench = Bench(
        args.dataset,
        args.cache_dir,
        student_text=args.student_text,
        train_images=args.train_images,
        one_caption=args.one_caption,
        own_teacher=args.own_teacher,
    )
    print(
        f"{args.dataset}: {bench.num_pairs} training pairs, features in {bench.seconds['features']:.0f}s; teacher "
        f"test mean recall {bench.teacher_on_test['mean']:.2f}",
        flush=True,
    )
    methods = args.methods or (STEP7 if args.tune or args.diagnose else METHODS)
    if args.diagnose:
        diagnose(bench, methods=methods, sizes=args.num_pairs, seeds=args.seeds)
        return 0
    if args.tune:
        methods = [m if m in BASELINES or m == "ideal" else f"pds-{m}" for m in methods]
    from pds_hf.evaluation.protocol import TRAIN_DEFAULTS

    settings = {**TRAIN_DEFAULTS, "epochs": args.epochs}
    output = args.output or HERE / f"results-{args.dataset}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    cells_start, machine = time.perf_counter(), machine_info()

    def save(rows, *, complete=False):
        bench.seconds.update(cells=time.perf_counter() - cells_start, total=time.perf_counter() - start)
        result = {
            "dataset": args.dataset,
            "command": command,
            "tune": args.tune,
            "complete": complete,
            "rows": rows,
            "student_text": bench.text_net.name,
            "train_pairs": bench.num_pairs,
            "pool": bench.pool,
            "manifest": bench.manifest,
            "encoder": bench.encoder.name,
            "encoder_record": {k: v for k, v in bench.encoder_info["record"].items() if k != "history"},
            "teacher_on_test": bench.teacher_on_test,
            "seeds": args.seeds,
            "machine": machine,
            "loads": [load_start, load_average()],
            "seconds": bench.seconds,
            # ru_maxrss is in KiB on Linux.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "settings": ", ".join(f"{k} {v}" for k, v in settings.items()),
        }
        output.write_text(json.dumps(result, indent=1, default=str))

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    rows = run_cells(
        bench,
        methods=methods,
        sizes=args.num_pairs,
        seeds=seeds,
        epochs=args.epochs,
        tune=args.tune,
        log=lambda line: print(line, flush=True),
        save=save,
    )
    save(rows, complete=True)
    print("\nmean recall, mean ± sd over seeds:")
    for (_dataset, protocol, method, m), cell in sorted(summarize(rows).items(), key=lambda kv: (kv[0][1], kv[0][3])):
        print(f"{protocol:12s} M={m:4d} {method:18s} {cell['mean']['mean']:6.2f} ± {cell['sd']['mean']:.2f}")
    print(f"Wrote {output} in {bench.seconds['total']:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
