"""The paper's evaluation protocol, with the epoch selected on a validation split instead of the test split.

A student is trained on the distilled pairs and scored on a test set by image-text retrieval:

1. **Features.** The student's frozen image network encodes the distilled images and the test images;
   the test captions are encoded with the distillation encoder (``encoder.encode_texts``). The text
   side of a distilled pair is its ``text_embedding`` column (the prototype), not its caption
   re-encoded. Features are computed once and cached (:mod:`pds_hf.evaluation.features`).
2. **Train.** For each of ``runs`` seeds, fresh projection heads are trained on the distilled pairs
   (:mod:`pds_hf.evaluation.train`).
3. **Select.** With a validation set, each run keeps the epoch with the best mean recall on it; without
   one, the last epoch. The reference code (and LoRS, MTT-VL) pick the best epoch *on the test split*,
   which flatters every method; here the test set is scored exactly once per run, after selection.
4. **Report.** IR@1/5/10, TR@1/5/10 and their mean on the test set, mean ± std over runs
   (:class:`~pds_hf.evaluation.report.EvaluationReport`).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from ..filter import finite_table
from .features import RetrievalSet, resolve_cache_dir, retrieval_set, student_image_features
from .report import EvaluationReport
from .settings import TrainSettings, train_settings

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS = TrainSettings().to_dict()
"""The training settings' defaults by name (:class:`~pds_hf.evaluation.settings.TrainSettings` as a dict)."""
_FEW_VALIDATION_PAIRS = 50


def _check_dims(name: str, retrieval: RetrievalSet, image_dim: int, text_dim: int) -> None:
    if retrieval.image_feats.shape[1] != image_dim:
        raise ValueError(
            f"The {name} image features have {retrieval.image_feats.shape[1]} dimensions but the "
            f"training image features {image_dim}; use the same student for both."
        )
    if retrieval.text_feats.shape[1] != text_dim:
        raise ValueError(
            f"The {name} captions' text features have {retrieval.text_feats.shape[1]} dimensions but the training "
            f"text features {text_dim}: evaluate with the encoder the set was distilled with."
        )


def _same_set(a: RetrievalSet, b: RetrievalSet) -> bool:
    return a is b or (
        a.image_feats.shape == b.image_feats.shape
        and a.text_feats.shape == b.text_feats.shape
        and np.array_equal(a.caption_to_image, b.caption_to_image)
        and np.array_equal(a.image_feats, b.image_feats)
        and np.array_equal(a.text_feats, b.text_feats)
    )


def evaluate_features(
    train_image_feats,
    train_text_feats,
    test: RetrievalSet,
    *,
    validation: RetrievalSet | None = None,
    runs: int = 5,
    seed: int = 0,
    student: str = "student",
    encoder: str = "encoder",
    device=None,
    settings: TrainSettings | None = None,
    **train_kwargs,
) -> EvaluationReport:
    """Train and score the student on precomputed frozen features (what :func:`evaluate` does after step 1).

    Args:
        train_image_feats: ``(N, d_image)`` student features of the training pairs' images.
        train_text_feats: ``(N, d_text)`` text features of the training pairs.
        test: the test set's features; scored once per run, after the epoch is selected.
        validation: the features to select the epoch on, or ``None`` for the last epoch. Never pass the
            test set here.
        runs: independent runs; run ``r`` uses seed ``seed + r``.
        seed: the first run's seed.
        student, encoder: names for the report.
        device: where to train; CUDA when available.
        settings: how each run trains, a :class:`~pds_hf.evaluation.settings.TrainSettings` (``None``: the
            defaults, :data:`TRAIN_DEFAULTS`).
        **train_kwargs: any field of :class:`~pds_hf.evaluation.settings.TrainSettings` by name, overriding
            ``settings``.

    Returns:
        An :class:`~pds_hf.evaluation.report.EvaluationReport`.

    Example:
        ```py
        >>> import numpy as np
        >>> from pds_hf.evaluation import RetrievalSet, evaluate_features
        >>> rng = np.random.default_rng(0)
        >>> test = RetrievalSet(rng.normal(size=(50, 64)), rng.normal(size=(100, 32)), np.repeat(np.arange(50), 2))
        >>> val = RetrievalSet(rng.normal(size=(20, 64)), rng.normal(size=(20, 32)), np.arange(20), name="val")
        >>> report = evaluate_features(rng.normal(size=(100, 64)), rng.normal(size=(100, 32)), test,
        ...                            validation=val, runs=2, epochs=10)
        >>> report.selected_epochs
        [10, 10]
        ```
    """
    from datasets.utils import tqdm

    from .train import score, train_heads

    settings = train_settings(settings, **train_kwargs)
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}.")
    if validation is not None and _same_set(validation, test):
        raise ValueError(
            "The validation set is the test set; selecting epochs on test data inflates the results. "
            "Pass a held-out validation split, or validation=None to use the last epoch."
        )
    train_image_feats = np.asarray(train_image_feats, dtype=np.float32)
    train_text_feats = np.asarray(train_text_feats, dtype=np.float32)
    image_dim, text_dim = train_image_feats.shape[-1], train_text_feats.shape[-1]
    _check_dims("test", test, image_dim, text_dim)
    if validation is not None:
        _check_dims("validation", validation, image_dim, text_dim)

    results, epochs_chosen, histories, seeds = [], [], [], []
    for run in tqdm(range(runs), desc="Training student heads", unit="run"):
        result = train_heads(
            train_image_feats,
            train_text_feats,
            validation=validation,
            settings=settings,
            seed=seed + run,
            device=device,
        )
        results.append(score(result.heads, test))
        epochs_chosen.append(result.selected_epoch)
        histories.append(result.validation_history)
        seeds.append(seed + run)

    if validation is None:
        selection = f"none, as no validation split was given: each run reports its last epoch ({settings.epochs})"
    else:
        checks = (
            f"checked every {settings.eval_every} epochs and at the last"
            if settings.eval_every < settings.epochs
            else "checked at the last epoch"
        )
        selection = (
            f"best mean recall on {validation.describe()}, {checks}; the test set was scored once per run, "
            "after selection"
        )
    return EvaluationReport(
        runs=results,
        selected_epochs=epochs_chosen,
        selection=selection,
        test=test.describe(),
        student=student,
        encoder=encoder,
        num_pairs=len(train_image_feats),
        seeds=seeds,
        settings=settings.to_dict(),
        validation_histories=histories,
    )


def _read_text_embeddings(distilled, column: str) -> np.ndarray:
    values = distilled.with_format(None)[column]
    try:
        array = np.asarray(list(values), dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Column {column!r} must hold one float vector of the same length per row ({err}).") from err
    return finite_table(array, f"Column {column!r}")


def _distilled_features(
    distilled, *, features_of, student, image_column, text_embedding_column, caption_column, cache_dir
):
    """``(image_feats, text_feats)`` of the training pairs, one row per pair; ``features_of`` makes a
    :class:`RetrievalSet` of a set of real pairs (:func:`retrieval_set` with the student and encoder bound)."""
    import datasets

    from ..sources import check_dataset_type

    check_dataset_type(distilled)
    if text_embedding_column is None:
        # A set of real pairs: encode its captions like the test captions.
        train = features_of(distilled, image_column=image_column, name="training")
        return train.image_feats[train.caption_to_image], train.text_feats
    columns = list(distilled.column_names)
    if text_embedding_column not in columns:
        raise KeyError(
            f"The distilled set has no column {text_embedding_column!r} (its columns are {columns}). Sets made by "
            "pds_hf.distill have one; pass text_embedding_column=... to name it, or text_embedding_column=None to "
            f"train on the captions of column {caption_column!r} encoded with the encoder."
        )
    if image_column not in columns:
        raise KeyError(
            f"The distilled set has no image column {image_column!r} (its columns are {columns}); "
            "pass distilled_image_column=... to name it."
        )
    if not isinstance(distilled.features[image_column], datasets.Image):
        raise TypeError(
            f"Column {image_column!r} of the distilled set holds {distilled.features[image_column]}, not "
            f"images; a column of image paths or bytes must be made an Image column first (in Python: "
            f"ds = ds.cast_column({image_column!r}, datasets.Image()))."
        )
    if len(distilled) == 0:
        raise ValueError("The distilled set has no rows.")
    missing = distilled.with_format("arrow")[image_column].null_count
    if missing:
        raise ValueError(
            f"Column {image_column!r} of the distilled set has no image in {missing} row(s) (a set made "
            "with synthesis='none'?); the student trains on images: distill with synthesis='unclip' or "
            "'retrieve'."
        )
    text_feats = _read_text_embeddings(distilled, text_embedding_column)
    image_feats = student_image_features(
        student,
        distilled,
        np.arange(len(distilled)),
        image_column=image_column,
        cache_dir=cache_dir,
        desc="Student features (distilled images)",
    )
    return image_feats, text_feats


def _hold_out(image_feats, text_feats, fraction: float, seed: int):
    """Split the training pairs into (train image, train text, validation RetrievalSet)."""
    if not 0 < fraction < 1:
        raise ValueError(f"A validation fraction must be between 0 and 1, got {fraction}.")
    num_val = int(round(fraction * len(image_feats)))
    if not 1 <= num_val < len(image_feats):
        raise ValueError(
            f"validation={fraction} of {len(image_feats)} pairs leaves {num_val} validation pair(s); "
            "pass a validation dataset of real pairs instead."
        )
    if num_val < _FEW_VALIDATION_PAIRS:
        logger.warning(
            "Selecting epochs on %d held-out distilled pairs is noisy; a held-out split of real pairs "
            "(e.g. the Karpathy val split) as validation=... is a better judge.",
            num_val,
        )
    order = np.random.default_rng(seed).permutation(len(image_feats))
    val, train = order[:num_val], order[num_val:]
    validation = RetrievalSet(
        image_feats[val], text_feats[val], np.arange(num_val), name=f"{num_val} held-out distilled pairs"
    )
    return image_feats[train], text_feats[train], validation


def _recorded_encoder(distilled):
    """``(name, revision)`` of the encoder that ``pds_hf.distill`` recorded in the set's metadata, else
    ``(None, None)``."""
    try:
        from ..processor import metadata

        models = metadata(distilled)["models"]
    except (ImportError, ValueError, KeyError, TypeError, AttributeError):
        return None, None
    name = models.get("encoder")
    return (name, models.get("encoder_revision")) if isinstance(name, str) else (None, None)


def evaluate(
    distilled,
    test,
    *,
    encoder=None,
    student="nf_resnet50",
    runs: int = 5,
    validation=None,
    image_column: str = "image",
    caption_column: str = "caption",
    distilled_image_column: str = "image",
    text_embedding_column: str | None = "text_embedding",
    seed: int = 0,
    cache_dir=None,
    device=None,
    text_batch_size: int = 256,
    settings: TrainSettings | None = None,
    **train_kwargs,
) -> EvaluationReport:
    """Train a student on a distilled set and score it by image-text retrieval on ``test``.

    Args:
        distilled: the distilled ``datasets.Dataset``: an ``image`` column and a ``text_embedding`` column
            (the text prototypes the student trains on), as made by ``pds_hf.distill``.
        test: a ``datasets.Dataset`` of real pairs, one row per pair (string caption) or one row per image
            (list of captions), e.g. the Flickr30k Karpathy test split (1,000 images, 5,000 captions).
        encoder: the encoder the set was distilled with (a model id, a transformers model, or an object
            with ``encode_texts``); it encodes the test (and validation) captions. ``None``: the model id
            that ``pds_hf.distill`` recorded in the set's metadata.
        student: the frozen image network: a timm model name (``"nf_resnet50"``,
            ``"vit_tiny_patch16_224"``; needs ``pip install timm``), a ``torch.nn.Module``, a callable on a
            list of PIL images, or a :class:`~pds_hf.evaluation.student.Student`. See
            :func:`~pds_hf.evaluation.student.load_student`.
        runs: independent training runs (seeds ``seed``, ``seed + 1``, ...); the report gives mean ± std.
        validation: how to select the epoch. A ``datasets.Dataset`` of real pairs held out from the test
            set (e.g. the Karpathy val split; the recommended choice); a float in (0, 1): that fraction of
            the distilled pairs is held out for validation and not trained on (noisy for small sets);
            ``None``: no selection, each run reports its last epoch. The test set is never used.
        image_column, caption_column: the columns of ``test`` and ``validation``.
        distilled_image_column: the image column of ``distilled``.
        text_embedding_column: the text-prototype column of ``distilled``. ``None`` trains on the
            ``caption_column`` captions encoded with ``encoder`` instead (to evaluate a set of real pairs
            that has no embeddings).
        seed: seed of the first run (and of the ``validation`` fraction split).
        cache_dir: where to cache frozen features on disk; ``None``: under the datasets cache, ``False``: not
            on disk. Features are also kept in memory for the life of the process.
        device: where the student and heads run; CUDA when available.
        text_batch_size: captions per ``encode_texts`` call.
        settings: how the student's heads train, a :class:`~pds_hf.evaluation.settings.TrainSettings`
            (``None``: the reference code's schedule, SGD for 100 epochs with only the text head trained).
        **train_kwargs: any field of :class:`~pds_hf.evaluation.settings.TrainSettings` by name (``epochs``, ``lr``,
            ``momentum``, ``weight_decay``, ``batch_size``, ``lr_decay_epoch``, ``lr_decay``, ``temperature``,
            ``learn_temperature``, ``train_image_head``, ``embed_dim``, ``dropout``, ``eval_every``), overriding
            ``settings``.

    Returns:
        An :class:`~pds_hf.evaluation.report.EvaluationReport`; ``report.to_markdown()`` renders it.

    Example:
        ```py
        >>> from datasets import load_dataset
        >>> import pds_hf
        >>> flickr = load_dataset("nlphuji/flickr30k", split="test")
        >>> test = flickr.filter(lambda split: split == "test", input_columns="split")
        >>> val = flickr.filter(lambda split: split == "val", input_columns="split")
        >>> distilled = load_dataset("me/flickr30k-pds-100", split="train")
        >>> report = pds_hf.evaluation.evaluate(distilled, test, encoder="openai/clip-vit-large-patch14",
        ...                                     student="nf_resnet50", runs=5, validation=val)
        >>> print(report.to_markdown())
        ```
    """
    import datasets

    from ..encode import encoder_name, load_encoder
    from .student import encoder_cache_key, load_student

    settings = train_settings(settings, **train_kwargs)
    recorded, revision = _recorded_encoder(distilled)
    if encoder is None:
        if recorded is None:
            raise ValueError(
                "Pass encoder=..., the encoder the set was distilled with (e.g. "
                "'openai/clip-vit-large-patch14'); it encodes the test captions."
            )
        try:
            encoder = load_encoder(recorded, revision=revision, device=device)
        except Exception as err:
            raise ValueError(
                f"Could not load the encoder {recorded!r} recorded in the distilled set's metadata "
                f"({err}); pass encoder=... explicitly."
            ) from err
    else:
        encoder = load_encoder(encoder, device=device)
        if recorded is not None and recorded != encoder_name(encoder):
            logger.warning(
                "The distilled set was made with encoder %r but is evaluated with %r; its text "
                "prototypes and the test captions' features may live in different spaces.",
                recorded,
                encoder_name(encoder),
            )
    if not hasattr(encoder, "encode_texts"):
        raise TypeError(f"The encoder {type(encoder).__name__} has no encode_texts method.")
    student = load_student(student, device=device)
    encoder_key = encoder_cache_key(encoder)
    cache = resolve_cache_dir(cache_dir)
    if isinstance(validation, datasets.Dataset) and validation._fingerprint == getattr(test, "_fingerprint", None):
        raise ValueError(
            "The validation set is the test set; selecting epochs on test data inflates the results. "
            "Pass a held-out split (e.g. the Karpathy val split), or validation=None."
        )

    features_of = functools.partial(
        retrieval_set,
        student=student,
        encoder=encoder,
        encoder_key=encoder_key,
        image_column=image_column,
        caption_column=caption_column,
        cache_dir=cache,
        text_batch_size=text_batch_size,
    )
    train_image, train_text = _distilled_features(
        distilled,
        features_of=features_of,
        student=student,
        image_column=distilled_image_column,
        text_embedding_column=text_embedding_column,
        caption_column=caption_column,
        cache_dir=cache,
    )
    test_set = features_of(test, name="test")
    if validation is None or isinstance(validation, RetrievalSet):
        validation_set = validation
    elif isinstance(validation, datasets.Dataset):
        validation_set = features_of(validation, name="validation")
    elif isinstance(validation, float):
        train_image, train_text, validation_set = _hold_out(train_image, train_text, validation, seed)
    else:
        raise TypeError(
            f"validation must be a datasets.Dataset, a float fraction or None; got {type(validation).__name__}."
        )

    return evaluate_features(
        train_image,
        train_text,
        test_set,
        validation=validation_set,
        runs=runs,
        seed=seed,
        student=student.name,
        encoder=encoder_name(encoder),
        device=device,
        settings=settings,
    )
