"""``DistillBuilder``: a distilled set as a ``datasets`` builder, built into datasets' own cache.

The builder's config names the source (id or folder, config, split, revision, an optional row filter) and
the distillation settings (ids and values, never loaded models: the config is part of the cache path).
``download_and_prepare()`` runs :class:`~pds_hf.DistillProcessor` once and writes the result as datasets
writes any dataset (Arrow, or parquet with ``file_format="parquet"``); building again with the same config
finds it there and does no work. ``as_dataset("train")`` loads it.

What a build is cached under (its config id) is everything that can change the distilled set, and nothing
else:

- the source's content, as cheaply as it can be told: the fingerprint in a ``save_to_disk`` folder's
  ``state.json``; the names, sizes and modification times of a local data folder's files (as datasets does
  for local data files); for a Hub id, the commit that ``source_revision`` (default ``main``) resolves to. When
  the Hub cannot be asked (``HF_HUB_OFFLINE=1``, no network), the revision as given is used and a warning says
  so: a change on the Hub is then not noticed until the Hub can be asked again;
- ``source_config``, ``source_split``, ``source_filter`` and ``source_columns``;
- the commit each Hub model id resolves to: the encoder, and the unCLIP decoder when it makes the images (a
  local model folder is known by its path, as the stage cache knows it; offline, the revision as given);
- ``DistillConfig(**distill).result_dict()``: every setting with its default filled in, less the machine-only
  settings of :data:`pds_hf.config.MACHINE_FIELDS` (``device``, batch sizes, workers, cache folder), which are
  still used to run;
- :data:`pds_hf.cache.STAGE_VERSIONS`, so that a pds-hf whose steps compute something new builds anew.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from .cache import STAGE_VERSIONS, fingerprint
from .config import DistillConfig
from .processor import DistillProcessor
from .schema import output_features

logger = logging.getLogger(__name__)

SPLIT = "train"
_COMMIT = re.compile(r"[0-9a-f]{40}")
# The setting that pins each Hub repository the config names, for the messages.
_REVISION_OPTION = {"source": "source_revision", "clip_model": "clip_revision", "unclip_model": "unclip_revision"}


def _check_named_columns(option: str, names, ds, source: str) -> None:
    """``KeyError`` naming the columns among ``names`` (given as ``option``) that ``ds``, read from ``source``,
    lacks."""
    missing = sorted(set(names) - set(ds.column_names))
    if missing:
        raise KeyError(f"{option} names the column(s) {missing}, which {source} lacks (columns: {ds.column_names}).")


def _saved_folder(folder: Path, split: str) -> Path | None:
    """The ``save_to_disk`` folder holding ``split`` of ``folder``, or None when ``folder`` is no such folder.

    A saved ``Dataset`` is read whatever ``split`` is; a saved ``DatasetDict`` gives its ``split`` subfolder.
    """
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return folder
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise KeyError(f"{folder} has the splits {splits}, not {split!r}; pass source_split=... to choose one.")
        return folder / split
    return None


def _files_identity(path: Path) -> list:
    """Relative name, size and modification time of every data file under ``path`` (or of ``path`` itself).

    Hidden files and folders (``.cache``, ``.git``) and ``__``-prefixed ones are left out, as datasets leaves
    them out of a folder's data files.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = []
    for file in files:
        name = file.relative_to(path).as_posix() if file != path else file.name
        if any(part.startswith((".", "__")) for part in Path(name).parts):
            continue
        stat = file.stat()
        out.append([name, stat.st_size, stat.st_mtime_ns])
    return out


def _hub_commit(
    repo_id: str, revision: str | None, token, *, repo_type: str = "dataset", option: str = "source"
) -> tuple[str, bool]:
    """The commit ``revision`` of the Hub repository ``repo_id`` points at, and whether it could be resolved.

    A full commit sha is taken as it is. When the Hub cannot be asked (offline mode, no network, the Hub
    down) the revision as given (``main`` when None) comes back with False, after a warning.

    Args:
        repo_id: a Hub dataset or model id.
        revision: a branch, tag or commit; None for ``main``.
        token: the Hub token, for a private repository.
        repo_type: ``"dataset"`` or ``"model"``.
        option: the setting that named ``repo_id``, for the messages (``source``, ``clip_model``...).
    """
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision, True
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(token=token)
    try:
        return (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, revision=revision).sha, True
    except GatedRepoError:
        raise
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{option}={repo_id!r} is neither a local folder nor a Hub {repo_type} id ({err}); "
            "pass an existing folder or a Hub id."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise FileNotFoundError(
            f"{option}={repo_id!r} at revision {revision or 'main'!r} is not a local folder and "
            f"not found on the Hub ({type(err).__name__}); check the id and "
            f"{_REVISION_OPTION[option]}, or pass token=... for a private {repo_type}."
        ) from None
    except Exception as err:  # no network or offline mode: the exception types depend on the HTTP client
        logger.warning(
            "Could not resolve the Hub %s %r at revision %r to a commit (%s: %s). The build is cached under the "
            "revision name as given, so a change of it on the Hub is not noticed; pass %s=<commit sha> to pin "
            "exactly what is read.",
            repo_type,
            repo_id,
            revision or "main",
            type(err).__name__,
            err,
            _REVISION_OPTION[option],
        )
        return revision or "main", False


def _encoder_dim(model: str, revision: str | None) -> int | None:
    """The embedding size of the transformers model ``model`` (id or folder), read from its config alone.

    CLIP-like configs carry ``projection_dim``; SigLIP's image features are its vision tower's pooled output.
    None when the config cannot be read (e.g. offline and not in the local cache) or names no such size.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as err:
        logger.info(
            "The embedding size of %r is unknown before encoding: its config could not be read (%s).", model, err
        )
        return None
    dim = getattr(config, "projection_dim", None)
    if dim is None and config.model_type.startswith("siglip"):
        dim = config.vision_config.hidden_size
    return dim if isinstance(dim, int) and dim > 0 else None


@dataclass
class DistillBuilderConfig(datasets.BuilderConfig):
    """What :class:`DistillBuilder` distills, and how.

    Attributes:
        source: the source dataset: a Hub id, a folder ``load_dataset`` reads, or a folder written by
            ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.
        source_config: the source's config (subset) name, if it has several.
        source_split: the split to distill.
        source_revision: the source's revision (a commit sha pins exactly what was read); None reads the commit
            ``main`` points at when the builder is made.
        source_filter: keep only the rows whose columns equal these values, e.g. ``{"split": "train"}``.
        source_columns: keep only these columns before distilling (e.g. ``["image", "caption"]``).
        distill: :class:`~pds_hf.DistillConfig` fields, as JSON values (model ids, not loaded models).
    """

    source: str | None = None
    source_config: str | None = None
    source_split: str = "train"
    source_revision: str | None = None
    source_filter: dict | None = None
    source_columns: list | None = None
    distill: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        settings = dict(self.distill or {})
        objects = sorted(k for k, v in settings.items() if v is not None and not isinstance(v, (str, int, float, bool)))
        if objects:
            raise TypeError(
                f"DistillBuilderConfig.distill holds loaded objects in {objects}: the config is part of "
                "the cache path, so models are named by id or local folder, e.g. clip_model="
                "'openai/clip-vit-large-patch14'. Use pds_hf.DistillProcessor for loaded models."
            )
        self.distill_config()  # every setting is checked now, before anything is read or loaded

    def distill_config(self) -> DistillConfig:
        """The :class:`~pds_hf.DistillConfig` these settings make (machine settings included: they run it)."""
        known = {f.name for f in dataclasses.fields(DistillConfig)}
        unknown = sorted(set(self.distill or {}) - known)
        if unknown:
            raise TypeError(
                f"DistillBuilderConfig.distill has unknown setting(s) {unknown}; see "
                "help(pds_hf.DistillConfig) for the fields."
            )
        return DistillConfig(**(self.distill or {}))

    def source_identity(self, token=None) -> dict:
        """What tells this config's source apart from any other content, read without loading the data.

        Args:
            token: the Hub token, to resolve a private dataset's revision.

        Returns:
            ``{"saved": <state.json fingerprint>}`` for a ``save_to_disk`` folder; ``{"files": [[name, size,
            mtime_ns], ...], "split": ...}`` for another local folder; ``{"hub": id, "commit": sha, "split": ...}``
            for a Hub id (``"revision"`` instead of ``"commit"`` when the revision could not be resolved; see
            :class:`DistillBuilder`).

        Example:
            ```py
            >>> DistillBuilderConfig(source="./pairs").source_identity()       # a save_to_disk folder
            {'saved': '5c4b6e0f1b2a9d3e'}
            ```
        """
        if self.source is None:
            raise ValueError("DistillBuilder needs source=... (a Hub dataset id or a local folder).")
        path = Path(self.source)
        if path.exists():
            saved = _saved_folder(path, self.source_split) if path.is_dir() else None
            if saved is not None:
                # save_to_disk writes the dataset's fingerprint, which changes with its content.
                return {"saved": json.loads((saved / "state.json").read_text())["_fingerprint"]}
            return {"files": _files_identity(path), "config": self.source_config, "split": self.source_split}
        commit, resolved = _hub_commit(self.source, self.source_revision, token)
        return {
            "hub": self.source,
            "commit" if resolved else "revision": commit,
            "config": self.source_config,
            "split": self.source_split,
        }

    def model_commits(self, token=None) -> dict:
        """The commit each Hub model of the run resolves to: ``{"clip_model": sha}``, plus ``"unclip_model"`` when
        ``synthesis="unclip"`` makes the images.

        A model given as a local folder is known by its path (as the stage cache knows it), and is left out here.
        Offline, the revision as given stands in for the commit, under ``"<option>_revision"``, after a warning.

        Args:
            token: the Hub token, for a private model.
        """
        settings = self.distill_config()
        models = {"clip_model": settings.clip_revision}
        if settings.synthesis == "unclip" and settings.method == "pds":
            models["unclip_model"] = settings.unclip_revision
        out = {}
        for option, revision in models.items():
            model = getattr(settings, option)
            if not isinstance(model, str) or os.path.exists(model):
                continue
            commit, resolved = _hub_commit(model, revision, token, repo_type="model", option=option)
            out[option if resolved else f"{option}_revision"] = commit
        return out

    def result_key(self, source_identity: dict, model_commits: dict) -> dict:
        """Everything that makes the distilled set, for the config id: never a device, batch size or folder.

        Args:
            source_identity: what :meth:`source_identity` returned.
            model_commits: what :meth:`model_commits` returned.
        """
        return {
            "source": source_identity,
            "models": model_commits,
            "filter": self.source_filter,
            "columns": sorted(self.source_columns) if self.source_columns else None,
            # Defaults filled in, so that spelling one out is the same build.
            "distill": self.distill_config().result_dict(),
            "stages": STAGE_VERSIONS,
        }


class DistillBuilder(datasets.ArrowBasedBuilder):
    """Distill a dataset into datasets' cache, as a builder.

    The output features are declared by :meth:`_info` from the settings, before anything is built: the
    embedding size is read from the encoder's config (``projection_dim``), or from the source's given embedding
    columns when a ``save_to_disk`` source has them. Where it cannot be known before encoding (the encoder's
    config cannot be read, or a Hub or data-folder source without ``source_columns`` may carry its own
    embeddings), ``info.features`` stays None until the build writes them.

    Args:
        cache_dir: datasets' cache folder (the build lands in ``<cache_dir>/<source>-pds/<config id>/<version>``).
        dataset_name: the first folder of that path; default: the source's id or folder name with ``-pds``.
        **config_kwargs: the :class:`DistillBuilderConfig` fields (``source=``, ``distill=``...).

    Example:
        ```py
        >>> import pds_hf
        >>> builder = pds_hf.DistillBuilder(
        ...     source="nlphuji/flickr30k", source_split="test", source_filter={"split": "train"},
        ...     source_columns=["image", "caption"], distill={"num_pairs": 100, "synthesis": "unclip"})
        >>> builder.info.features["text_embedding"].length      # known before building
        768
        >>> builder.download_and_prepare()              # distills once; the same config later does no work
        >>> small = builder.as_dataset("train")
        ```
    """

    BUILDER_CONFIG_CLASS = DistillBuilderConfig
    # The layout of what this builder writes; what the steps compute is versioned by STAGE_VERSIONS, which is
    # part of every config id.
    VERSION = datasets.Version("0.1.0")

    def __init__(self, *args, dataset_name: str | None = None, **kwargs):
        super().__init__(*args, dataset_name=dataset_name or self._name_for(kwargs.get("source")), **kwargs)

    @staticmethod
    def _name_for(source: str | None) -> str:
        """``<source>-pds``: a Hub id with ``/`` as ``--`` (as the Hub cache names repos), or a folder's name."""
        if source is None:
            return "pds"
        name = Path(source).resolve().name if os.path.exists(source) else source.replace("/", "--")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + "-pds"

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        builder_config, given_id = super()._create_builder_config(
            config_name=config_name, custom_features=custom_features, config_id=config_id, **config_kwargs
        )
        # Resolved once, here: the config id and the rows read later name the same commit.
        self._source_identity = builder_config.source_identity(self.token)
        if config_id is not None:
            return builder_config, given_id
        key = builder_config.result_key(self._source_identity, builder_config.model_commits(self.token))
        if custom_features is not None:
            key["features"] = custom_features.to_dict()
        return builder_config, f"{builder_config.name}-{fingerprint(key)}"

    def _info(self):
        dim = self._embedding_dim()
        return datasets.DatasetInfo(
            description="A dataset distilled with pds-hf (PDS).", features=output_features(dim) if dim else None
        )

    def _embedding_dim(self) -> int | None:
        """The size of the output embeddings, where known before encoding (see the class docstring)."""
        settings = self.config.distill_config()
        given = (settings.image_embedding_column, settings.text_embedding_column)
        columns = self._source_features()
        if columns is not None:
            if self.config.source_columns:
                columns = {k: v for k, v in columns.items() if k in self.config.source_columns}
            if all(name in columns for name in given):
                length = getattr(columns[given[0]], "length", -1)
                return length if length > 0 else None
        elif not self.config.source_columns or any(name in self.config.source_columns for name in given):
            return None  # the source may carry embeddings of its own, of a size not known yet
        if not isinstance(settings.clip_model, str):
            return None
        return _encoder_dim(settings.clip_model, settings.clip_revision)

    def _source_features(self) -> dict | None:
        """A ``save_to_disk`` source's features, read from its ``dataset_info.json``; None for other sources."""
        if "saved" not in self._source_identity:
            return None
        folder = _saved_folder(Path(self.config.source), self.config.source_split)
        info = json.loads((folder / "dataset_info.json").read_text())
        return dict(datasets.Features.from_dict(info["features"])) if info.get("features") else None

    def load_source(self):
        """The source split, filtered and reduced to the configured columns.

        A Hub id is read at the commit its config id names (see :meth:`DistillBuilderConfig.source_identity`).
        """
        config = self.config
        saved = "saved" in self._source_identity and _saved_folder(Path(config.source), config.source_split)
        if saved:
            ds = datasets.load_from_disk(str(saved))
        else:
            revision = self._source_identity.get("commit", config.source_revision)
            ds = datasets.load_dataset(
                config.source,
                config.source_config,
                split=config.source_split,
                revision=revision,
                token=self.token,
                cache_dir=self._cache_dir_root,
            )
        if config.source_filter:
            _check_named_columns("source_filter", config.source_filter, ds, config.source)
            wanted = dict(config.source_filter)
            names = list(wanted)
            ds = ds.filter(
                lambda *values: [
                    all(v[i] == wanted[n] for v, n in zip(values, names, strict=False)) for i in range(len(values[0]))
                ],
                input_columns=names,
                batched=True,
                desc="Filtering the source",
            )
        if config.source_columns:
            _check_named_columns("source_columns", config.source_columns, ds, config.source)
            ds = ds.select_columns(list(config.source_columns))
        return ds

    def _split_generators(self, dl_manager):
        # The source plays the part of a packaged builder's data files: read here (a Hub source is downloaded),
        # distilled where the rows are made. One dataset, not a list: datasets would split a list across num_proc
        # jobs, but distillation is global.
        return [datasets.SplitGenerator(name=SPLIT, gen_kwargs={"source": self.load_source()})]

    def _generate_tables(self, source):
        from datasets.builder import Key

        small = DistillProcessor(self.config.distill_config())(source)
        if self.info.features is not None and small.features != self.info.features:
            raise ValueError(
                f"The distilled set has the features {small.features}, not the {self.info.features} declared from "
                f"the encoder's config ({self.config.distill_config().clip_model!r}): its config names another "
                "embedding size than the model outputs. Pass features=pds_hf.schema.output_features(<size>) with "
                "the size the model outputs, and please report the model."
            )
        # The run record (config, source, timings) is saved with the build's info, so metadata() reads it back.
        self.info.description = small.info.description
        yield Key(0, 0), small.data.table
