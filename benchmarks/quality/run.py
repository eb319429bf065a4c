"""Quality on real data, offline: does PDS beat random, herding and k-center on openclipart?

One command runs the whole comparison on a CPU:

    python benchmarks/quality/run.py

1. **Data** (:mod:`openclipart`): Debian's openclipart packages become ~4,200 captioned clip-art
   images, split into train / validation / test (cached).
2. **Encoder** (:mod:`lit_encoder`): frozen EfficientNet-Lite0 + frozen all-MiniLM-L6-v2 with linear
   projections trained contrastively on the train split (tower features and heads cached).
3. **Distil**: ``pds_hf.distill(train, num_pairs=M, clip_model=encoder, synthesis="retrieve")`` for PDS
   (no image decoder exists offline, so each image prototype becomes its nearest real image), and the
   same call with ``method="random" | "herding" | "kcenter"``, for each M. ``pds-raw`` is PDS with
   ``normalize=False``: k-means on the raw embeddings, as the reference code does (pds-hf's default
   until the investigation in README.md showed what it costs).
4. **Evaluate**: ``pds_hf.evaluation.evaluate``: a student (the frozen EfficientNet-Lite0's pooled
   features + a text head trained on the distilled ``text_embedding``), 5 runs, the epoch selected on
   the validation split, IR@1/5/10 and TR@1/5/10 on the test split.
5. **Report**: ``RESULTS.md`` (tables, machine, command, timings), ``results.json`` (every run) and
   ``recall_vs_pairs.png``, written to ``e2e/`` next to this file unless ``--output-dir`` says otherwise.
   (``RESULTS.md`` next to this file is ``grid.py``'s: both datasets, both student protocols.)

References in the same report: the student trained on the whole train split, and the encoder itself
(the "teacher" the distilled sets were made with) scored on the test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import lit_encoder  # noqa: E402
import openclipart  # noqa: E402

logger = logging.getLogger("quality")

METHODS = ("pds", "pds-raw", "random", "herding", "kcenter")
# Extra distill arguments per method name (the name is also the ``method`` unless listed here).
VARIANTS = {"pds-raw": dict(method="pds", normalize=False)}
SIZES = (20, 50, 100, 200)
METRICS = ("IR@1", "IR@5", "IR@10", "TR@1", "TR@5", "TR@10", "mean")


class Clock:
    """Wall-clock seconds per named stage, printed as each one ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.t
                clock.seconds[name] = clock.seconds.get(name, 0.0) + elapsed
                print(f"[{time.perf_counter() - clock.start:7.1f}s] {name}: {elapsed:.1f}s", flush=True)

        return _Stage()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def threads(count: int):
    """Run the block with ``count`` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = "unknown"
    versions = {}
    for package in ("torch", "numpy", "faiss-cpu", "datasets", "transformers", "scipy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pds_hf"], cwd=HERE.parent.parent, capture_output=True, text=True
        ).stdout.strip()
        commit += " (pds_hf/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory": memory,
        "gpu": "none used",
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
    }


def load_average() -> str:
    try:
        return ", ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def pds_diagnostics(distilled, train_images: int) -> dict:
    """What the distilled set is made of: kept pairs, empty intersections, support, distinct images."""
    import pds_hf

    meta = pds_hf.metadata(distilled)
    support = np.asarray(distilled["support"])
    images = {lit_encoder.image_key(image) for image in distilled["image"]}
    out = {
        "distinct_images": len(images),
        "rows": len(distilled),
        "train_images": train_images,
        "stages_seconds": meta["stages_seconds"],
    }
    if meta.get("kept_pairs") is not None:
        out.update(
            kept_pairs=meta["kept_pairs"],
            empty_intersections=meta["empty_intersections"],
            support_min=int(support.min()),
            support_median=float(np.median(support)),
            support_max=int(support.max()),
        )
    return out


def encoder_on_test(encoder, test) -> dict:
    """The encoder's own retrieval on the test split (the teacher the sets were distilled with)."""
    from pds_hf.evaluation.metrics import retrieval_metrics
    from pds_hf.filter import normalize

    images = normalize(encoder.encode_images(list(test["image"])))
    captions, owner = [], []
    for row, caption_list in enumerate(test["caption"]):
        captions += caption_list
        owner += [row] * len(caption_list)
    texts = normalize(encoder.encode_texts(captions))
    return retrieval_metrics(images @ texts.T, owner)


def _cell(report_dict: dict, metric: str) -> str:
    return f"{report_dict['mean'][metric]:.2f} ± {report_dict['std'][metric]:.2f}"


def write_results(
    path: Path,
    *,
    results: list[dict],
    references: dict,
    manifest: dict,
    encoder_info: dict,
    machine: dict,
    command: str,
    seconds: dict,
    total: float,
    loads: tuple[str, str],
    settings: dict,
    plot_name: str | None,
) -> None:
    sizes = sorted({r["num_pairs"] for r in results})
    methods = list(dict.fromkeys(r["method"] for r in results))
    by = {(r["method"], r["num_pairs"]): r for r in results}
    lines = [
        "# Quality on real data, offline: PDS against random, herding and k-center",
        "",
        "Generated by `benchmarks/quality/run.py`; do not edit by hand (the analysis is in [README.md](../README.md)).",
        "",
        "## Command",
        "",
        f"```\n{command}\n```",
        "",
        f"## Mean recall (mean of IR@1/5/10 and TR@1/5/10, %, mean ± std over {settings['runs']} student runs)",
        "",
        "| Method | " + " | ".join(f"M = {m}" for m in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for method in methods:
        cells = [_cell(by[(method, m)]["report"], "mean") if (method, m) in by else "" for m in sizes]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    best_line = []
    for m in sizes:
        scores = {method: by[(method, m)]["report"]["mean"]["mean"] for method in methods if (method, m) in by}
        best_line.append(max(scores, key=scores.get) if scores else "")
    lines.append("| *best* | " + " | ".join(best_line) + " |")
    if "pds" in methods:
        lines += [
            "",
            "PDS minus each baseline (mean recall, percentage points; positive: PDS ahead):",
            "",
            "| Baseline | " + " | ".join(f"M = {m}" for m in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for method in methods:
            if method == "pds":
                continue
            cells = []
            for m in sizes:
                if ("pds", m) in by and (method, m) in by:
                    cells.append(
                        f"{by[('pds', m)]['report']['mean']['mean'] - by[(method, m)]['report']['mean']['mean']:+.2f}"
                    )
                else:
                    cells.append("")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if plot_name:
        lines += ["", f"![mean recall against the number of pairs]({plot_name})"]

    lines += [
        "",
        "## All metrics",
        "",
        "| Method | Pairs | " + " | ".join(METRICS[:-1]) + " | Mean |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for method in methods:
        for m in sizes:
            if (method, m) in by:
                report = by[(method, m)]["report"]
                lines.append(f"| {method} | {m} | " + " | ".join(_cell(report, k) for k in METRICS) + " |")
    full = references.get("full_train")
    if full:
        lines.append(
            f"| *whole train split* | {full['num_pairs']} | " + " | ".join(_cell(full, k) for k in METRICS) + " |"
        )
    teacher = references.get("encoder_on_test")
    if teacher:
        lines.append("| *the encoder itself (teacher)* | | " + " | ".join(f"{teacher[k]:.2f}" for k in METRICS) + " |")

    first = results[0]["report"]
    lines += [
        "",
        f"- Test set: {first['test']}; validation: {manifest['splits']['validation']['images']} images, "
        f"{manifest['splits']['validation']['captions']} captions (epoch selection only).",
        f"- Student: `{first['student']}`; text features from `{first['encoder']}`.",
        f"- Epoch selection: {first['selection']}.",
        f"- Training: {settings['protocol']}",
        '- Distillation: `pds_hf.distill(train, num_pairs=M, clip_model=<LiT encoder>, synthesis="retrieve")` '
        "with the paper's defaults otherwise (rm_ratio 0.2, seed 42, k-means++ with 25 iterations) and pds-hf's "
        "(each modality clustered on its L2-normalised embeddings); *pds-raw*: the same with `normalize=False` "
        "(k-means on the raw embeddings, as the reference code); baselines: the same call with `method=`. "
        "The student trains on each set's `text_embedding` column "
        "(PDS: the text prototypes; baselines: the chosen captions' embeddings) and on the student features "
        "of its `image` column.",
        "- *Whole train split*: the same student trained on every real train pair (captions encoded by the "
        "encoder): what the distilled sets approximate. *The encoder itself*: the LiT encoder's own "
        "retrieval on the test split (no student).",
        "",
        "## PDS sets",
        "",
        "| Method | M | kept pairs | empty intersections | support min / median / max | distinct images |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for m in sizes:
        for method in ("pds", "pds-raw"):
            if (method, m) not in by:
                continue
            d = by[(method, m)]["diagnostics"]
            lines.append(
                f"| {method} | {m} | {d['kept_pairs']} | {d['empty_intersections']} | {d['support_min']} / "
                f"{d['support_median']:g} / {d['support_max']} | {d['distinct_images']} of {d['rows']} |"
            )
    counts, splits = manifest["counts"], manifest["splits"]
    record = encoder_info["record"]
    lines += [
        "",
        "## Data and encoder",
        "",
        f"- openclipart (Debian `openclipart-png` + `openclipart-svg` 0.18): {counts['files']} distinct PNG files; "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("files", "images", "captions"))
        + ".",
        f"- Kept: {counts['images']} images, {counts['captions']} captions. Splits (seed {manifest['seed']}): "
        + ", ".join(f"{name} {s['images']} images / {s['captions']} captions" for name, s in splits.items())
        + ".",
        f"- Images: {manifest['size']}x{manifest['size']} RGB, drawings fitted on white.",
        f"- Encoder: {encoder_info['name']}; projection heads selected at epoch {record['selected_epoch']} "
        f"(validation mean recall {record['validation_mean_recall']:.2f})"
        + (f", loaded from the cache ({record['loaded_from']})" if record.get("loaded_from") else "")
        + ".",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores (torch threads {machine['torch_threads']}), "
        f"memory {machine['memory']}, GPU: {machine['gpu']}.",
        f"- Load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]} (other jobs on the machine "
        "slow every stage by about that factor over the core count).",
        f"- Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + f"; pds-hf at commit {machine['commit']}.",
        "",
        "## Time",
        "",
        "| Stage | Seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.1f} |" for name, value in seconds.items()]
    lines += [f"| **total** | **{total:.1f}** |", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="PDS against random, herding and k-center on openclipart, offline.")
    parser.add_argument("--num-pairs", type=int, nargs="+", default=list(SIZES), help="distilled set sizes M")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--runs", type=int, default=5, help="student runs per set (seeds 0..runs-1)")
    parser.add_argument("--epochs", type=int, default=100, help="student training epochs")
    parser.add_argument("--image-size", type=int, default=224, help="EfficientNet-Lite0 input side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split and of the encoder's heads")
    parser.add_argument("--no-full", action="store_true", help="skip the whole-train-split reference")
    parser.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads while student heads train (default 1: their matrices are too small to "
        "gain from more, and on a busy machine extra threads only wait for each other)",
    )
    parser.add_argument("--cache-dir", type=Path, default=openclipart.DEFAULT_CACHE)
    parser.add_argument(
        "--output-dir", type=Path, default=HERE / "e2e", help="where RESULTS.md, results.json and the plot go"
    )
    args = parser.parse_args(argv)

    import datasets

    import pds_hf
    from pds_hf.evaluation import evaluate, plot_comparison

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    datasets.disable_progress_bars()
    command = "python benchmarks/quality/run.py" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    clock, load_start, machine = Clock(), load_average(), machine_info()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    with clock.stage("dataset (build or load)"):
        splits, manifest = openclipart.build(args.cache_dir, size=224, seed=args.seed)
    train, validation, test = splits["train"], splits["validation"], splits["test"]

    encoder, student, encoder_info = lit_encoder.build_encoder(
        splits, args.cache_dir, image_size=args.image_size, seed=args.seed
    )
    encoder_info["name"] = encoder.name
    for name, value in encoder_info["seconds"].items():
        clock.seconds[f"encoder: {name}"] = value
        print(f"encoder: {name}: {value:.1f}s", flush=True)

    with clock.stage("test features (towers)"):
        references = {"encoder_on_test": encoder_on_test(encoder, test)}
        encoder.save_caches()

    train_settings = dict(runs=args.runs, epochs=args.epochs, validation=validation, cache_dir=False, seed=0)
    results = []
    for num_pairs in args.num_pairs:
        for method in args.methods:
            with clock.stage(f"distill {method} M={num_pairs}"):
                options = VARIANTS.get(method, dict(method=method))
                distilled = pds_hf.distill(
                    train, num_pairs=num_pairs, clip_model=encoder, synthesis="retrieve", **options
                )
            with clock.stage(f"evaluate {method} M={num_pairs}"), threads(args.train_threads):
                report = evaluate(distilled, test, encoder=encoder, student=student, **train_settings)
            summary = report.to_dict()
            results.append(
                {
                    "method": method,
                    "num_pairs": num_pairs,
                    "report": summary,
                    "diagnostics": pds_diagnostics(distilled, len(train)),
                }
            )
            print(
                f"    {method:8s} M={num_pairs:4d}: mean recall {summary['mean']['mean']:.2f} ± "
                f"{summary['std']['mean']:.2f}",
                flush=True,
            )
    encoder.save_caches()

    if not args.no_full:
        with clock.stage("reference: student on the whole train split"), threads(args.train_threads):
            full = evaluate(train, test, encoder=encoder, student=student, text_embedding_column=None, **train_settings)
        references["full_train"] = full.to_dict()

    plot_name = "recall_vs_pairs.png"
    from pds_hf.evaluation.report import EvaluationReport

    rebuilt = [
        (
            r["method"],
            r["num_pairs"],
            EvaluationReport(**{k: v for k, v in r["report"].items() if k not in ("mean", "std")}),
        )
        for r in results
    ]
    if not plot_comparison(rebuilt, args.output_dir / plot_name):
        plot_name = None
    settings = {"runs": args.runs, "protocol": rebuilt[0][2].protocol()}
    total = clock.total
    (args.output_dir / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "results": results,
                "references": references,
                "manifest": manifest,
                "encoder": encoder_info,
                "machine": machine,
                "seconds": clock.seconds,
                "total_seconds": total,
            },
            indent=1,
            default=str,
        )
    )
    write_results(
        args.output_dir / "RESULTS.md",
        results=results,
        references=references,
        manifest=manifest,
        encoder_info=encoder_info,
        machine=machine,
        command=command,
        seconds=clock.seconds,
        total=total,
        loads=(load_start, load_average()),
        settings=settings,
        plot_name=plot_name,
    )
    print(f"Wrote {args.output_dir / 'RESULTS.md'} in {total:.0f}s total.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
