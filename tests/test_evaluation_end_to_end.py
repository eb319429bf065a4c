"""evaluate() on tiny datasets with the tiny CLIP encoder and tiny image networks."""

import numpy as np
import pytest
from datasets import Dataset

import pds_hf.evaluation.train as train_module
from pds_hf.evaluation import TrainSettings, clear_memory_cache, evaluate, tiny_student
from pds_hf.schema import output_features

FAST = dict(runs=2, epochs=6, eval_every=3, device="cpu")
CPU_NO_CACHE = dict(device="cpu", cache_dir=False)


pytestmark = pytest.mark.usefixtures("fresh_evaluation_cache", "one_torch_thread")  # fixtures of conftest.py


def evaluate_tiny(distilled, test, encoder, **changes):
    """evaluate() with ``encoder``, the tiny student, no disk cache and the FAST settings, unless ``changes`` say
    otherwise."""
    settings = {"student": tiny_student(), "cache_dir": False, **FAST, **changes}
    return evaluate(distilled, test, encoder=encoder, **settings)


@pytest.fixture(scope="module")
def splits(shapes_ds):
    return {
        "train": shapes_ds.select(range(0, 20)),
        "validation": shapes_ds.select(range(20, 30)),
        "test": shapes_ds.select(range(30, 60)),
    }


def distilled_from(ds, encoder, caption_prefix=""):
    """A set in pds_hf.distill's output schema made of real pairs of ``ds`` (each image's first caption)."""
    captions = [captions[0] for captions in ds["caption"]]
    images = list(ds["image"])
    columns = {
        "image": images,
        "caption": [caption_prefix + c for c in captions],
        "image_embedding": encoder.encode_images(images),
        "text_embedding": encoder.encode_texts(captions),
        "support": [1] * len(ds),
        "image_cluster": list(range(len(ds))),
        "text_cluster": list(range(len(ds))),
        "source_row": list(range(len(ds))),
    }
    features = output_features(32)
    return Dataset.from_dict({name: columns[name] for name in features}, features=features)


class CountingStudent:
    """Colour-grid features (4x4 thumbnail); counts the images it sees."""

    name = "colour-grid"

    def __init__(self):
        self.seen = 0

    def __call__(self, batch):
        self.seen += len(batch)
        return np.stack([np.asarray(image.resize((4, 4)), dtype=np.float32).reshape(-1) / 255 for image in batch])


class CountingEncoder:
    """The tiny CLIP encoder, recording every caption it encodes."""

    def __init__(self, inner):
        self.inner, self.model, self.name = inner, inner.model, inner.name
        self.texts = []

    def encode_images(self, batch):
        return self.inner.encode_images(batch)

    def encode_texts(self, texts):
        self.texts.extend(texts)
        return self.inner.encode_texts(texts)


def test_evaluate_end_to_end(tiny_encoder, splits, tmp_path):
    distilled = distilled_from(splits["train"], tiny_encoder)
    report = evaluate_tiny(distilled, splits["test"], tiny_encoder, validation=splits["validation"], cache_dir=tmp_path)
    assert len(report.runs) == 2 and report.seeds == [0, 1] and report.num_pairs == 20
    assert all(set(run) == set(report.mean) for run in report.runs)
    assert all(0 <= value <= 100 for run in report.runs for value in run.values())
    assert report.test.startswith("test set") and report.test.endswith("(30 images, 60 captions)")
    assert "validation set (10 images, 20 captions)" in report.selection
    assert report.encoder == "pds-hf/tiny-random-clip" and report.student == "pds-hf/tiny-random-student"
    assert all(epoch in (3, 6) for epoch in report.selected_epochs)
    markdown = report.to_markdown()
    assert markdown.startswith("| Student | Pairs | Runs | IR@1 | IR@5 | IR@10 | TR@1 | TR@5 | TR@10 | Mean |")


def test_training_settings_as_an_object_or_as_keywords(tiny_encoder, splits):
    distilled = distilled_from(splits["train"], tiny_encoder)
    by_keywords = evaluate_tiny(distilled, splits["test"], tiny_encoder, runs=1, lr=0.05, dropout=0.0)
    fast = TrainSettings(epochs=FAST["epochs"], eval_every=FAST["eval_every"], lr=0.05, dropout=0.0)
    by_object = evaluate(
        distilled, splits["test"], encoder=tiny_encoder, student=tiny_student(), settings=fast, runs=1, **CPU_NO_CACHE
    )
    assert by_object.settings == by_keywords.settings
    assert by_object.runs == by_keywords.runs
    # Written out by hand: the given values, and the reference code's for the rest.
    assert by_keywords.settings == {
        "epochs": 6,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "lr_decay_epoch": 51,
        "lr_decay": 0.1,
        "temperature": 0.07,
        "learn_temperature": False,
        "train_image_head": False,
        "embed_dim": None,
        "dropout": 0.0,
        "eval_every": 3,
    }
    # A keyword overrides the object; a misspelt one is refused before any model runs.
    assert evaluate_tiny(distilled, splits["test"], tiny_encoder, settings=fast, runs=1, epochs=3).selected_epochs == [
        3
    ]
    with pytest.raises(TypeError, match=r"Unknown training setting\(s\) \['epoch'\]"):
        evaluate(distilled, splits["test"], encoder=tiny_encoder, student="no such student", epoch=3)


def test_the_test_split_is_scored_once_per_run_after_selection(tiny_encoder, splits, monkeypatch):
    sizes = []
    original = train_module.retrieval_metrics

    def spy(similarity, caption_to_image, **kwargs):
        sizes.append(len(caption_to_image))
        return original(similarity, caption_to_image, **kwargs)

    monkeypatch.setattr(train_module, "retrieval_metrics", spy)
    evaluate_tiny(
        distilled_from(splits["train"], tiny_encoder), splits["test"], tiny_encoder, validation=splits["validation"]
    )
    # 20 validation captions at epochs 3 and 6, then the 60 test captions once; per run.
    assert sizes == [20, 20, 60, 20, 20, 60]


def test_distilled_text_side_is_the_text_embedding_not_the_caption(tiny_encoder, splits):
    encoder = CountingEncoder(tiny_encoder)
    distilled = distilled_from(splits["train"], tiny_encoder, caption_prefix="DISTILLED ")
    evaluate_tiny(distilled, splits["test"], encoder)
    assert encoder.texts and not any(text.startswith("DISTILLED") for text in encoder.texts)
    assert set(encoder.texts) == {c for captions in splits["test"]["caption"] for c in captions}


def test_features_are_computed_once_then_cached_in_memory_and_on_disk(tiny_encoder, splits, tmp_path):
    distilled = distilled_from(splits["train"], tiny_encoder)
    student, encoder = CountingStudent(), CountingEncoder(tiny_encoder)

    def run(cache_dir):
        return evaluate_tiny(
            distilled, splits["test"], encoder, student=student, cache_dir=cache_dir, validation=splits["validation"]
        )

    # Each distinct caption string is encoded once.
    texts = sum(len({c for captions in splits[name]["caption"] for c in captions}) for name in ("test", "validation"))
    first = run(tmp_path)
    assert student.seen == 20 + 30 + 10 and len(encoder.texts) == texts
    second = run(tmp_path)  # memory
    assert student.seen == 60 and len(encoder.texts) == texts
    clear_memory_cache()
    third = run(tmp_path)  # disk
    assert student.seen == 60 and len(encoder.texts) == texts
    assert len(list(tmp_path.glob("*.npy"))) == 5  # distilled, test and validation images; test and validation texts
    assert first.runs == second.runs == third.runs
    clear_memory_cache()
    run(False)  # no disk cache, empty memory: computed again
    assert student.seen == 120 and len(encoder.texts) == 2 * texts


def test_anonymous_student_is_computed_once_per_call_but_not_cached(tiny_encoder, splits, tmp_path):
    calls = []

    def features(batch):
        calls.append(len(batch))
        return np.ones((len(batch), 3)) * np.arange(len(batch))[:, None]

    distilled = distilled_from(splits["train"], tiny_encoder)
    evaluate_tiny(distilled, splits["test"], tiny_encoder, student=features, cache_dir=tmp_path)
    evaluate_tiny(distilled, splits["test"], tiny_encoder, student=features, cache_dir=tmp_path)
    assert sum(calls) == 2 * (20 + 30)
    assert len(list(tmp_path.glob("*.npy"))) == 1  # only the test captions' text features


def test_validation_fraction_holds_out_distilled_pairs(tiny_encoder, splits):
    distilled = distilled_from(splits["train"], tiny_encoder)
    report = evaluate_tiny(distilled, splits["test"], tiny_encoder, validation=0.25)
    assert report.num_pairs == 15
    assert "5 held-out distilled pairs" in report.selection
    with pytest.raises(ValueError, match="validation dataset of real pairs"):
        evaluate_tiny(distilled, splits["test"], tiny_encoder, validation=0.01)


def test_validation_on_the_test_set_is_refused(tiny_encoder, splits):
    with pytest.raises(ValueError, match="validation set is the test set"):
        evaluate_tiny(
            distilled_from(splits["train"], tiny_encoder), splits["test"], tiny_encoder, validation=splits["test"]
        )


def test_real_pairs_without_embeddings(tiny_encoder, splits):
    plain = splits["train"]  # image + list of captions, no text_embedding column
    with pytest.raises(KeyError, match="text_embedding_column=None"):
        evaluate_tiny(plain, splits["test"], tiny_encoder)
    report = evaluate_tiny(plain, splits["test"], tiny_encoder, text_embedding_column=None)
    assert report.num_pairs == 40  # 20 images x 2 captions


def test_missing_encoder_and_bad_columns_are_clear_errors(tiny_encoder, splits):
    distilled = distilled_from(splits["train"], tiny_encoder)
    with pytest.raises(ValueError, match="Pass encoder="):
        evaluate_tiny(distilled, splits["test"], None)
    with pytest.raises(KeyError, match="caption_column"):
        evaluate_tiny(distilled, splits["test"].rename_column("caption", "sentences"), tiny_encoder)
    with pytest.raises(KeyError, match="distilled_image_column"):
        evaluate_tiny(distilled.rename_column("image", "picture"), splits["test"], tiny_encoder)
    with pytest.raises(TypeError, match="validation must be"):
        evaluate_tiny(distilled, splits["test"], tiny_encoder, validation="val")


def test_a_caption_the_encoder_cannot_encode_is_named(tiny_encoder, splits):
    class BreaksOnOneCaption(CountingEncoder):
        def encode_texts(self, texts):
            out = np.array(self.inner.encode_texts(texts))
            out[[text == bad for text in texts]] = np.nan
            return out

    captions = list(dict.fromkeys(c for captions in splits["test"]["caption"] for c in captions))  # first seen first
    bad = captions[5]  # in the third batch of two: its index in the whole list, not in the batch, is named
    distilled = distilled_from(splits["train"], tiny_encoder)
    with pytest.raises(
        ValueError, match=r"NaN or inf text embeddings for 1 input\(s\), first at caption row\(s\) \[5\]"
    ):
        evaluate_tiny(distilled, splits["test"], BreaksOnOneCaption(tiny_encoder), text_batch_size=2)


def test_with_pds_distill_output(tiny_encoder, splits, caplog, monkeypatch):
    import pds_hf

    distilled = pds_hf.distill(
        splits["train"], num_pairs=6, clip_model=tiny_encoder, synthesis="retrieve", image_size=32, device="cpu"
    )
    report = evaluate_tiny(
        distilled, splits["test"], tiny_encoder, validation=splits["validation"], train_image_head=True
    )
    assert report.num_pairs == 6 and "text and image heads" in report.to_markdown()
    assert "different spaces" not in caplog.text
    no_images = pds_hf.distill(splits["train"], num_pairs=4, clip_model=tiny_encoder, synthesis="none", device="cpu")
    with pytest.raises(ValueError, match="synthesis='none'"):
        evaluate_tiny(no_images, splits["test"], tiny_encoder)
    # Without encoder=, the encoder recorded by distill is loaded (the tiny one has no Hub id to load from).
    asked = []

    def load_encoder(model_id, **kwargs):
        asked.append(model_id)
        raise OSError(f"{model_id} is not on the Hub")

    monkeypatch.setattr("pds_hf.encode.load_encoder", load_encoder)
    with pytest.raises(ValueError, match="recorded in the distilled set's metadata"):
        evaluate_tiny(distilled, splits["test"], None)
    assert asked == ["pds-hf/tiny-random-clip"]
