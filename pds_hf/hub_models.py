"""Loading a model by Hub id or folder: one error that names the model, and no minute of retries offline.

transformers and diffusers raise an ``OSError`` that does not say which model failed, and when the Hub cannot
be reached huggingface_hub retries each file for about half a minute before giving up. :func:`loading_model`
wraps a ``from_pretrained`` call: it asks the Hub once, without retries, whether it answers; when it does not
(or ``HF_HUB_OFFLINE=1`` is set), a model in the local cache is loaded from there at once and any other fails at
once with a :class:`ModelLoadError` saying so. Any other failure of the load becomes a :class:`ModelLoadError`
naming the model, its revision and the fix.

Example:
    ```py
    >>> from pds_hf.hub_models import ModelLoadError, loading_model
    >>> try:
    ...     with loading_model("clip_model", "openai/clip-vit-large-patch14", None, index_file="config.json",
    ...                            library="transformers"):
    ...         model = AutoModel.from_pretrained("openai/clip-vit-large-patch14")
    ... except ModelLoadError as err:
    ...     print(err.option, err.model, err.hub_unreachable)
    clip_model openai/clip-vit-large-patch14 True
    ```
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Seconds to wait for the Hub's first answer; a reachable Hub answers in well under a second.
PROBE_TIMEOUT = 5.0


class ModelLoadError(OSError):
    """A model could not be loaded. The message names it (id or folder, and revision), says why, and the fix.

    An ``OSError``, as transformers' own loading errors are, so code that caught those still catches it.

    Attributes:
        option: the :class:`~pds_hf.DistillConfig` field naming the model: ``"clip_model"`` or ``"unclip_model"``
            (``--clip-model`` / ``--unclip-model`` on the command line).
        model: the id or folder that was given.
        revision: the revision asked for (None: the default branch).
        hub_unreachable: True when the cause is that the Hub could not be reached (offline mode, or no answer).
    """

    def __init__(
        self,
        message: str,
        *,
        option: str | None = None,
        model: str | None = None,
        revision: str | None = None,
        hub_unreachable: bool = False,
    ):
        super().__init__(message)
        self.option, self.model, self.revision, self.hub_unreachable = option, model, revision, hub_unreachable

    def __reduce__(self):  # keeps the attributes across processes (keyword-only arguments do not pickle alone)
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls, message: str, attributes: dict):
    err = cls(message)
    err.__dict__.update(attributes)
    return err


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the Hub answers one request now, asked once without retries; False in offline mode.

    Any answer counts, an HTTP error too: only no answer at all (no network, DNS, refused, timeout) is False.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # the client's connection and timeout errors differ across its versions: any is no answer
        return False
    return True


@contextlib.contextmanager
def _offline_mode():
    """huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``) for the block: files come from the cache, no request."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a valid Hub repository id (``namespace/name`` or ``name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _named(option: str, model: str, revision: str | None) -> str:
    return f"{option}={model!r}" + (f" (revision {revision!r})" if revision else "")


def check_model_source(option: str, model: str, revision: str | None, *, index_file: str, probe: bool = True) -> bool:
    """Refuse a model that cannot load, before any work: not a folder and not a Hub id, or not in the local cache
    while the Hub cannot be reached.

    Args:
        option, model, revision, index_file: as for :func:`loading_model`.
        probe: ask the Hub once whether it answers (:func:`hub_reachable`); with False only offline mode
            (``HF_HUB_OFFLINE=1``) counts as unreachable, and nothing is sent (the CLI's check before loading data).

    Returns:
        Whether ``model`` is a Hub id that must load from the local cache (the Hub did not answer).

    Raises:
        ModelLoadError: naming the model, why, and the fix (``hub_unreachable`` says which case).
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(model).expanduser().exists():
        return False
    named = _named(option, model, revision)
    if not is_repo_id(model):
        raise ModelLoadError(
            f"Could not load {named}: no such folder, and not a Hub model id (namespace/name); pass "
            "a folder written by save_pretrained, or a Hub id.",
            option=option,
            model=model,
            revision=revision,
        )
    unreachable = not hub_reachable() if probe else bool(constants.HF_HUB_OFFLINE)
    if unreachable and not isinstance(try_to_load_from_cache(model, index_file, revision=revision), str):
        why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else f"no answer from {constants.ENDPOINT}"
        fix = (
            "unset HF_HUB_OFFLINE to download it"
            if constants.HF_HUB_OFFLINE
            else f"download it once where the Hub is reachable (hf download {model}), then run with HF_HUB_OFFLINE=1"
        )
        raise ModelLoadError(
            f"Could not load {named}: the Hugging Face Hub could not be reached ({why}) and the "
            f"model is not in the local cache; {fix}, or pass a local folder written by "
            "save_pretrained.",
            option=option,
            model=model,
            revision=revision,
            hub_unreachable=True,
        )
    return unreachable


@contextlib.contextmanager
def loading_model(option: str, model: str, revision: str | None, *, index_file: str, library: str):
    """Run the ``from_pretrained`` call of the block with a fast offline check and an error naming the model.

    Args:
        option: the config field naming the model (``"clip_model"``, ``"unclip_model"``), kept on the error.
        model: a Hub id or a local folder.
        revision: the revision asked for (None: the default branch).
        index_file: a file every copy of the model has (``config.json``, ``model_index.json``): its presence in
            the local cache says whether the model can load without the Hub.
        library: the library that loads it (``"transformers"``, ``"diffusers"``); its progress bars follow
            pds-hf's rule during the load (:func:`pds_hf.progress.library_output`).

    Raises:
        ModelLoadError: the model cannot load; raised before the block runs when the Hub cannot be reached and
            the model is not in the local cache.

    Example:
        ```py
        >>> with loading_model("unclip_model", spec, revision, index_file="model_index.json", library="diffusers"):
        ...     pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(spec, revision=revision)
        ```
    """
    from huggingface_hub import constants

    from .progress import library_output

    named = _named(option, model, revision)
    by_id = not Path(model).expanduser().exists()
    unreachable = check_model_source(option, model, revision, index_file=index_file)
    if unreachable and not constants.HF_HUB_OFFLINE:
        logger.info("The Hugging Face Hub could not be reached: loading %s from the local cache.", named)
    try:
        with library_output():
            # Imported first, so that library_output finds its progress switch (it only touches imported ones).
            importlib.import_module(f"{library}.utils.logging")
        # Offline mode for a cached model when the Hub is silent: otherwise every file retries for ~30 s first.
        with library_output(), _offline_mode() if unreachable else contextlib.nullcontext():
            yield
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:  # transformers: OSError for missing files, ValueError for unknown types
        detail = " ".join(str(err).split()) or type(err).__name__
        fix = (
            "pass a folder written by save_pretrained"
            if not by_id
            else "check the id and the revision (and the token, for a private or gated model), or pass a local "
            "folder written by save_pretrained"
        )
        raise ModelLoadError(
            f"Could not load {named}: {detail} ({type(err).__name__}); {fix}.",
            option=option,
            model=model,
            revision=revision,
            hub_unreachable=unreachable,
        ) from err
