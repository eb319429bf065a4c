"""A recipe: the settings of a run, saved, shared and loaded as transformers' processors are.

A recipe is plain JSON (``distill_config.json``): every setting that can change the distilled set, models by
id and revision, never pickled. :class:`RecipeMixin` gives a class holding a :class:`~pds_hf.DistillConfig`
(``self.config``, built back with ``cls(config)``) the methods users know from transformers:
``to_dict`` / ``to_json_string`` / ``from_dict``, ``save_pretrained`` (optionally with ``push_to_hub=True``),
``push_to_hub`` and ``from_pretrained``. :class:`~pds_hf.DistillProcessor` inherits it.

Machine settings (:data:`pds_hf.config.MACHINE_FIELDS`: device, batch sizes, workers, cache) say how one
machine runs, not what comes out: a recipe does not hold them, and loading one never takes them from the file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from .config import MACHINE_FIELDS, DistillConfig
from .publish import metadata_from_card

logger = logging.getLogger(__name__)

CONFIG_NAME = "distill_config.json"
# Settings that may hold a loaded object; a recipe records it by name only.
LOADABLE_FIELDS = ("clip_model", "clip_processor", "unclip_model")


class RecipeMixin:
    """Save, share and load the settings of a class that holds a :class:`~pds_hf.DistillConfig` as ``config``.

    The class must be buildable as ``cls(config)``.
    """

    config: DistillConfig

    def to_dict(self) -> dict:
        """The recipe as JSON-ready values: what :meth:`save_pretrained` writes and :meth:`from_dict` reads.

        Returns:
            ``{"pds_hf_version": ..., "config": {...}, "loaded_objects": [...]}``: ``config`` holds every setting
            but the machine ones (:data:`pds_hf.config.MACHINE_FIELDS`); a model passed as a loaded object is
            recorded by name and listed under ``loaded_objects`` (pass it again when loading).

        Example:
            ```py
            >>> pds_hf.DistillProcessor(num_pairs=50).to_dict()["config"]["num_pairs"]
            50
            ```
        """
        loaded = [
            name
            for name in LOADABLE_FIELDS
            if getattr(self.config, name) is not None and not isinstance(getattr(self.config, name), str)
        ]
        return {"pds_hf_version": _package_version(), "config": self.config.result_dict(), "loaded_objects": loaded}

    def to_json_string(self) -> str:
        """:meth:`to_dict` as indented JSON with sorted keys (the content of ``distill_config.json``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, recipe: dict, **overrides):
        """Build from a recipe dict (:meth:`to_dict`), or from the settings alone (``pds_hf.metadata(ds)["config"]``).

        Machine settings found in ``recipe`` are ignored; settings this version does not know are ignored with a
        warning; a model that was a loaded object falls back to the default, with a warning, unless passed again.

        Args:
            recipe: ``{"config": {...}, "loaded_objects": [...]}`` or a dict of :class:`~pds_hf.DistillConfig` fields.
            **overrides: settings to change, machine settings (``device="cuda:1"``), and loaded models
                (``clip_model=...``).

        Example:
            ```py
            >>> processor = pds_hf.DistillProcessor.from_dict({"num_pairs": 50}, device="cpu")
            ```
        """
        if isinstance(recipe.get("config"), dict):
            values, loaded = recipe["config"], recipe.get("loaded_objects", [])
        else:
            values, loaded = recipe, []
        return cls(_recipe_config(values, loaded, overrides, where="the recipe dict"))

    def save_pretrained(
        self, save_directory, *, push_to_hub: bool = False, repo_id: str | None = None, **hub_kwargs
    ) -> Path:
        """Write the recipe to ``save_directory/distill_config.json``, and upload it with ``push_to_hub=True``.

        A ``distill_config.json`` already in the folder is replaced only if pds-hf wrote it.

        Args:
            save_directory: the folder (created if missing).
            push_to_hub: also upload the file to the Hub repository ``repo_id``.
            repo_id: ``namespace/name`` for ``push_to_hub``; default: the folder's name, as in transformers.
            **hub_kwargs: passed to :meth:`push_to_hub` (``token``, ``private``, ``revision``, ``create_pr``,
                ``commit_message``, ``repo_type``).

        Returns:
            The path of the written file.

        Example:
            ```py
            >>> processor.save_pretrained("./my-recipe")
            >>> processor.save_pretrained("./my-recipe", push_to_hub=True, repo_id="me/my-recipe")
            ```
        """
        folder = Path(save_directory)
        path = folder / CONFIG_NAME
        _refuse_foreign_file(path)
        folder.mkdir(parents=True, exist_ok=True)
        # A new temporary file, renamed over the target: a reader never sees half a recipe.
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=folder, prefix=f".{CONFIG_NAME}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp.write(self.to_json_string())
        os.replace(tmp.name, path)
        if push_to_hub:
            self.push_to_hub(repo_id or folder.resolve().name, **hub_kwargs)
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        repo_type: str = "model",
    ):
        """Upload the recipe as ``distill_config.json`` to a Hub repository (created if missing).

        Args:
            repo_id: ``namespace/name``, e.g. ``"me/flickr30k-pds-100-recipe"``.
            commit_message: default ``"Upload pds-hf recipe"``.
            private: visibility of a repository created here; None: public.
            token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
            revision: the branch to commit to (created from ``main`` if missing).
            create_pr: open a pull request instead of committing.
            repo_type: ``"model"`` (as transformers' processors) or ``"dataset"`` (e.g. beside a published set).

        Returns:
            The ``huggingface_hub.CommitInfo`` of the upload.

        Example:
            ```py
            >>> processor.push_to_hub("me/my-recipe")
            >>> again = pds_hf.DistillProcessor.from_pretrained("me/my-recipe")
            ```
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        if "/" not in repo_id:  # a bare name (e.g. the folder's) goes under the token's user, as create_repo does
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        if not api.repo_exists(repo_id, repo_type=repo_type):
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        return api.upload_file(
            path_or_fileobj=self.to_json_string().encode("utf-8"),
            path_in_repo=CONFIG_NAME,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or "Upload pds-hf recipe",
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained,
        *,
        revision: str | None = None,
        token: str | None = None,
        local_files_only: bool = False,
        **overrides,
    ):
        """Build from a saved recipe: a folder or a Hub repository (model or dataset).

        ``pretrained`` may hold a ``distill_config.json`` (from :meth:`save_pretrained` or :meth:`push_to_hub`),
        or be a published distilled set (a folder from :func:`pds_hf.save_to_folder` or a Hub dataset from
        :func:`pds_hf.push_to_hub`) whose card carries the run record: the recipe is repeated on new data.
        Machine settings are never taken from the file: pass them here.

        Args:
            pretrained: a local folder or a Hub id (``namespace/name``).
            revision: branch, tag or commit of a Hub repository.
            token: for a private Hub repository.
            local_files_only: read a Hub recipe from the local Hub cache only (as with ``HF_HUB_OFFLINE=1``).
            **overrides: settings to change, machine settings, and models to pass as loaded objects
                (``clip_model=...``).

        Raises:
            FileNotFoundError: no folder by that name and not a Hub id, no recipe where it looked (the message
                lists where), or, offline, a Hub recipe that is not in the local cache.

        Example:
            ```py
            >>> processor = pds_hf.DistillProcessor.from_pretrained("me/flickr30k-pds-100")
            >>> coco_small = processor(coco)          # the same recipe on another dataset
            ```
        """
        values, loaded = _find_recipe(pretrained, revision=revision, token=token, local_files_only=local_files_only)
        return cls(_recipe_config(values, loaded, overrides, where=str(pretrained)))


def _package_version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("pds-hf")
    except md.PackageNotFoundError:
        return None


def _recipe_config(values: dict, loaded: list, overrides: dict, *, where: str) -> DistillConfig:
    """The config a recipe's ``values`` make on this machine, with ``overrides`` applied."""
    known = set(DistillConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        logger.warning(
            "Ignoring setting(s) %s from %s: not fields of DistillConfig in this pds-hf version.", unknown, where
        )
    machine = sorted(k for k in values if k in MACHINE_FIELDS and k not in overrides)
    if machine:
        logger.info(
            "Not taking the machine setting(s) %s from %s; pass them to from_pretrained or from_dict to "
            "set them on this machine.",
            machine,
            where,
        )
    kept = {k: v for k, v in values.items() if k in known and k not in MACHINE_FIELDS}
    for name in loaded:
        if name not in overrides:
            logger.warning(
                "%s was a loaded object (%r) when %s was saved; using the default. Pass %s=... to use it again.",
                name,
                kept.get(name),
                where,
                name,
            )
            kept.pop(name, None)
    return DistillConfig(**{**kept, **overrides})


def _refuse_foreign_file(path: Path) -> None:
    """Stop before replacing a ``distill_config.json`` that pds-hf did not write."""
    if not path.exists():
        return
    try:
        ours = "pds_hf_version" in json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, OSError):
        ours = False
    if not ours:
        raise FileExistsError(
            f"{path} exists and was not written by pds-hf's save_pretrained; save the recipe to "
            "another folder, or move that file away."
        )


def _read_payload(path) -> tuple[dict, list]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return payload["config"], payload.get("loaded_objects", [])


def _find_recipe(pretrained, *, revision, token, local_files_only) -> tuple[dict, list]:
    """``(settings, names of loaded objects)`` of the recipe at ``pretrained`` (a folder or a Hub id)."""
    folder = Path(pretrained)
    if folder.is_dir():
        return _find_in_folder(folder)
    if folder.exists():
        raise FileNotFoundError(
            f"{pretrained!s} is a file; pass the folder that holds {CONFIG_NAME} (written by "
            "save_pretrained) or a published distilled set."
        )
    if not _is_hub_id(str(pretrained)):
        raise FileNotFoundError(f"No folder {pretrained!s}, and it is not a Hub id (namespace/name); check the path.")
    return _find_on_hub(str(pretrained), revision=revision, token=token, local_files_only=local_files_only)


def _is_hub_id(name: str) -> bool:
    """A valid Hub id with a namespace (``owner/name``): a recipe is always pushed under one."""
    from .hub_models import is_repo_id

    return is_repo_id(name) and name.count("/") == 1


def _find_in_folder(folder: Path) -> tuple[dict, list]:
    path = folder / CONFIG_NAME
    if path.is_file():
        return _read_payload(path)
    looked = [f"{path} (written by save_pretrained)"]
    if (folder / "README.md").is_file():
        try:
            return metadata_from_card(folder)["config"], []
        except (ValueError, KeyError) as err:
            looked.append(f"a pds-hf run record in {folder / 'README.md'} ({err})")
    else:
        looked.append(f"{folder / 'README.md'} with a pds-hf run record (written by pds_hf.save_to_folder)")
    raise FileNotFoundError(f"No pds-hf recipe found in {folder!s}; looked for " + "; ".join(looked) + ".")


def _find_on_hub(repo_id: str, *, revision, token, local_files_only) -> tuple[dict, list]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    looked, missing_locally = [], False
    # A recipe file in a model or dataset repository, else the card of a published distilled set.
    for repo_type, filename in (("dataset", CONFIG_NAME), ("model", CONFIG_NAME), ("dataset", "README.md")):
        try:
            path = hf_hub_download(
                repo_id,
                filename,
                repo_type=repo_type,
                revision=revision,
                token=token,
                local_files_only=local_files_only,
            )
        except LocalEntryNotFoundError:
            missing_locally = True
            continue
        except (EntryNotFoundError, RepositoryNotFoundError) as err:
            looked.append(f"{filename} in the Hub {repo_type} repo {repo_id} ({type(err).__name__})")
            continue
        if filename == CONFIG_NAME:
            return _read_payload(path)
        try:
            return metadata_from_card(Path(path).parent)["config"], []
        except (ValueError, KeyError) as err:
            looked.append(f"a pds-hf run record in the card of the Hub dataset {repo_id} ({err})")
    if missing_locally and not looked:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set or the Hub could not be reached"
        raise FileNotFoundError(
            f"The recipe {repo_id} is not in the local Hub cache and could not be downloaded ({why}): load it once "
            "with the Hub reachable, or pass the folder it was saved to."
        )
    raise FileNotFoundError(f"No pds-hf recipe found for {repo_id}; looked for " + "; ".join(looked) + ".")
