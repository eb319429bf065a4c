"""Controlled experiments behind the findings in README.md: why PDS does (or does not) beat the baselines here.

Everything runs on cached features, through the package's own steps (``prototypes_from_embeddings``,
``select_pairs``, ``retrieve``'s nearest-image rule) and its student protocol
(``pds_hf.evaluation.evaluate_features``: same heads, epochs, validation-split selection), so that one
variant differs from another in exactly one choice:

- ``pds``: what ``distill(..., synthesis="retrieve")`` makes with pds-hf's defaults (checked against it
  with ``--check``). The other ``pds-*`` variants change one thing from it.
- ``pds-raw``: k-means on the raw embeddings (``normalize=False``), as the reference code does.
- ``pds-caption``: the text side is the retrieved real caption's embedding instead of the text prototype.
- ``pds-pair``: the real pair whose caption is nearest the text prototype (image and caption from one
  pair: the paper's "pair nearest to the text prototype" ablation).
- ``pds-mean-image``: the image side is the mean *student* feature of the images in the matched
  intersection: an ideal decoder, which the ``retrieve`` rule can only approximate.
- ``pds-rm0``: no filtering (``rm_ratio=0``).
- ``pds-drop``: empty intersections dropped instead of replaced by k-means centres.
- ``random``, ``herding``, ``kcenter``: the baselines, ``select_pairs`` as ``distill`` calls it.

Each variant can be run with several selection seeds (k-means seed, random subset, k-center's first
pair): ``--seeds 42 43 44`` reports the spread over seeds as well as over student runs, which the main
table (one selection per method) cannot show.

Usage::

    python benchmarks/quality/investigate.py --num-pairs 20 50 100 200 --seeds 42 43 44 --output findings.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import lit_encoder  # noqa: E402
import openclipart  # noqa: E402

VARIANTS = (
    "pds",
    "pds-raw",
    "pds-caption",
    "pds-pair",
    "pds-mean-image",
    "pds-rm0",
    "pds-drop",
    "random",
    "herding",
    "kcenter",
)
DETERMINISTIC = {"herding"}  # the same set for every seed: run once


class TrainFeatures:
    """The train split as the pipeline sees it: pair table, encoder embeddings, student features."""

    def __init__(self, train, encoder, student):
        from pds_hf.encode import encode_table
        from pds_hf.inputs import load_images, read_pairs

        table = read_pairs(train)
        self.table, self.image_embeds, self.text_embeds = encode_table(encoder, train, table)
        images = load_images(train, "image", self.table.image_rows)
        self.student_feats = student.encode_images(images)
        self.pair_image, self.pair_text = self.table.pair_image, self.table.pair_text


def nearest(queries, candidates):
    from pds_hf.caption import nearest as pds_nearest

    return pds_nearest(queries, candidates)


def variant_features(name: str, data: TrainFeatures, num_pairs: int, seed: int):
    """``(student image features (M, 1280), text features (M, 256), diagnostics)`` of one variant."""
    from pds_hf.baselines import select_pairs
    from pds_hf.prototypes import prototypes_from_embeddings

    if name in ("random", "herding", "kcenter"):
        chosen = select_pairs(
            name, data.image_embeds[data.pair_image], data.text_embeds[data.pair_text], num_pairs, seed=seed
        )
        images, texts = data.pair_image[chosen], data.pair_text[chosen]
        return data.student_feats[images], data.text_embeds[texts], {"distinct_images": len(set(images.tolist()))}

    protos = prototypes_from_embeddings(
        data.image_embeds,
        data.text_embeds,
        num_pairs,
        rm_ratio=0.0 if name == "pds-rm0" else 0.2,
        seed=seed,
        empty="drop" if name == "pds-drop" else "centroid",
        normalize=name != "pds-raw",
        image_index=data.pair_image,
        text_index=data.pair_text,
    )
    nearest_image = nearest(protos.image_embeds, data.image_embeds)
    text = protos.text_embeds
    image_feats = data.student_feats[nearest_image]
    if name == "pds-caption":
        text = data.text_embeds[nearest(protos.text_embeds, data.text_embeds)]
    if name == "pds-pair":
        pair = nearest(protos.text_embeds, data.text_embeds[data.pair_text])
        image_feats, text = data.student_feats[data.pair_image[pair]], data.text_embeds[data.pair_text[pair]]
        nearest_image = data.pair_image[pair]
    if name == "pds-mean-image":
        image_feats = _group_mean(data.student_feats[data.pair_image], protos)
        empty = np.isnan(image_feats).any(axis=1)
        image_feats[empty] = data.student_feats[nearest_image[empty]]
    members = _members(protos)
    in_group = np.mean(
        [image in set(data.pair_image[m].tolist()) for image, m in zip(nearest_image, members, strict=False)]
    )
    kept = protos.kept
    sizes = {
        side: np.bincount(labels[kept], minlength=num_pairs)
        for side, labels in (("image", protos.image_labels), ("text", protos.text_labels))
    }
    diagnostics = {
        "distinct_images": len(set(nearest_image.tolist())),
        "empty": protos.num_empty,
        **{f"{side}_cluster_sizes": f"{s.min()}/{np.median(s):g}/{s.max()}" for side, s in sizes.items()},
        "support_median": float(np.median(protos.support)),
        "retrieved_image_in_intersection": float(in_group),
        "prototype_norm_ratio": float(
            np.median(np.linalg.norm(text, axis=1)) / np.median(np.linalg.norm(data.text_embeds, axis=1))
        ),
    }
    return np.asarray(image_feats, dtype=np.float32), np.asarray(text, dtype=np.float32), diagnostics


def _members(protos):
    """Per prototype, the pair indices of its matched intersection (empty for a centroid fallback)."""
    by_cluster = {}
    for pair, (i, j) in enumerate(zip(protos.image_labels, protos.text_labels, strict=False)):
        if i >= 0:
            by_cluster.setdefault((int(i), int(j)), []).append(pair)
    return [
        np.asarray(by_cluster.get((int(i), int(j)), []), dtype=np.int64)
        for i, j in zip(protos.image_cluster, protos.text_cluster, strict=False)
    ]


def _group_mean(per_pair, protos):
    out = np.full((len(protos), per_pair.shape[1]), np.nan, dtype=np.float32)
    for k, members in enumerate(_members(protos)):
        if len(members):
            out[k] = per_pair[members].mean(axis=0)
    return out


def coverage(text_feats, test_text_feats) -> float:
    """Mean over test captions of the best cosine similarity to a training text feature."""
    from pds_hf.filter import normalize

    return float((normalize(test_text_feats) @ normalize(text_feats).T).max(axis=1).mean())


def held_out_sets(splits, student, encoder) -> dict:
    """The validation and test splits' frozen features (``RetrievalSet``), their captions encoded by ``encoder``."""
    from pds_hf.evaluation.features import retrieval_set

    return {
        name: retrieval_set(
            splits[name],
            student=student,
            encoder=encoder,
            encoder_key=None,
            image_column="image",
            caption_column="caption",
            cache_dir=None,
            name=name,
        )
        for name in ("validation", "test")
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Controlled PDS experiments on cached openclipart features.")
    parser.add_argument("--num-pairs", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[42], help="selection seeds (k-means, random, k-center)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--train-kwargs", default="{}", help="JSON overrides of the student's training settings")
    parser.add_argument("--cache-dir", type=Path, default=openclipart.DEFAULT_CACHE)
    parser.add_argument("--output", type=Path, default=None, help="write every result here (JSON)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="first check that the 'pds' variant's text side equals pds_hf.distill's output",
    )
    args = parser.parse_args(argv)

    import datasets
    import torch

    from pds_hf.evaluation import evaluate_features, load_student

    datasets.disable_progress_bars()
    splits, _ = openclipart.build(args.cache_dir)
    encoder, student, _ = lit_encoder.build_encoder(splits, args.cache_dir)
    data = TrainFeatures(splits["train"], encoder, student)
    for side, embeds in (("image", data.image_embeds), ("text", data.text_embeds)):
        pct = np.percentile(np.linalg.norm(embeds, axis=1), [1, 50, 99])
        print(f"{side} embedding norms (1st / 50th / 99th percentile): " + " / ".join(f"{v:.2f}" for v in pct))
    wrapped = load_student(student)
    sets = held_out_sets(splits, wrapped, encoder)
    encoder.save_caches()
    torch.set_num_threads(1)
    extra = json.loads(args.train_kwargs)

    if args.check:
        import pds_hf

        m, seed = args.num_pairs[0], args.seeds[0]
        small = pds_hf.distill(
            splits["train"], num_pairs=m, clip_model=encoder, synthesis="retrieve", seed=seed, use_cache=False
        )
        _, text_feats, _ = variant_features("pds", data, m, seed)
        same = np.allclose(np.asarray(small["text_embedding"], dtype=np.float32), text_feats, atol=1e-5)
        print(
            f"--check: the 'pds' variant {'matches' if same else 'DIFFERS FROM'} pds_hf.distill at M={m}, seed {seed}",
            flush=True,
        )
        if not same:
            return 1

    rows = []
    for num_pairs in args.num_pairs:
        for name in args.variants:
            for seed in args.seeds[:1] if name in DETERMINISTIC else args.seeds:
                start = time.perf_counter()
                image_feats, text_feats, diagnostics = variant_features(name, data, num_pairs, seed)
                report = evaluate_features(
                    image_feats,
                    text_feats,
                    sets["test"],
                    validation=sets["validation"],
                    runs=args.runs,
                    epochs=args.epochs,
                    **extra,
                )
                rows.append(
                    {
                        "variant": name,
                        "num_pairs": num_pairs,
                        "seed": seed,
                        "mean": report.mean,
                        "std": report.std,
                        "selected_epochs": report.selected_epochs,
                        "coverage": coverage(text_feats, sets["test"].text_feats),
                        **diagnostics,
                    }
                )
                print(
                    f"M={num_pairs:4d} {name:15s} seed {seed}: mean recall {report.mean['mean']:6.2f} ± "
                    f"{report.std['mean']:.2f}  coverage {rows[-1]['coverage']:.3f}  "
                    + " ".join(f"{k}={v}" for k, v in diagnostics.items())
                    + f"  ({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
    print("\nMean recall averaged over seeds (± std over seeds of the per-seed means):")
    for num_pairs in args.num_pairs:
        for name in args.variants:
            values = [r["mean"]["mean"] for r in rows if r["variant"] == name and r["num_pairs"] == num_pairs]
            print(f"M={num_pairs:4d} {name:15s} {np.mean(values):6.2f} ± {np.std(values):.2f} (n={len(values)})")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
