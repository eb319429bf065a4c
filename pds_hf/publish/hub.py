"""Publishing a distilled set to the Hub: check first, then parquet shards, card and preview in one commit.

:func:`prepare_push` checks the token, the namespace and the license before any expensive work;
:func:`push_to_hub` runs it, stages the files as :func:`pds_hf.publish.save_to_folder` writes them, and
uploads them with a single ``create_commit``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .card import CardSource, evaluation_markdown
from .folder import members_to_publish, write_repo
from .layout import README, PublishError, check_distilled, is_data_shard
from .license import LicenseChoice, resolve_license

logger = logging.getLogger(__name__)


@dataclass
class PushTarget:
    """What :func:`prepare_push` found out: who is pushing where, under which license.

    Attributes:
        repo_id: the full ``namespace/name``.
        token: the token to push with.
        user: the account the token belongs to.
        license: the license the card will declare, with its origin.
        exists: whether the repository exists already.
        private: its visibility, when it exists.
        branch: the branch the commit goes to.
        branch_exists: whether that branch exists already (a new one starts from ``main``).
        head: the commit the upload builds on (None for a new repository).
        files: the files at ``head``.
        card: the ``DatasetCard`` at ``head``, if any.
    """

    repo_id: str
    token: str
    user: str
    license: LicenseChoice
    exists: bool = False
    private: bool | None = None
    branch: str = "main"
    branch_exists: bool = False
    head: str | None = None
    files: list[str] = field(default_factory=list)
    card: object = None


def _http_summary(err) -> str:
    response = getattr(err, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else type(err).__name__
    return f"{status}: {str(err).splitlines()[0]}"


def prepare_push(
    repo_id: str,
    *,
    token: str | None = None,
    license: str | None = None,
    source=None,
    source_revision: str | None = None,
    revision: str | None = None,
) -> PushTarget:
    """Check that a set can be published to ``repo_id``, before anything expensive is done.

    Checks, in order: a token is available, the Hub accepts it (``whoami``) and it may write, the namespace
    is the token's user or one of its organisations, and the license is known (see :func:`resolve_license`)
    and accepted by the Hub. Reads the repository's current card if it exists. Writes nothing.

    Run it before distilling (as ``pds-hf distill --push-to-hub`` does) so that a bad token or an unknown
    license fails in seconds, not after hours of encoding; :func:`push_to_hub` runs it again itself.

    Args:
        repo_id: ``namespace/name`` (a bare ``name`` goes to the token's user).
        token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
        license: a Hub license id; see :func:`resolve_license`.
        source: the source dataset's Hub id or folder.
        source_revision: the revision of a Hub ``source``.
        revision: the branch to commit to (default ``main``).

    Raises:
        PublishError: with what is wrong and how to fix it.
    """
    from huggingface_hub import DatasetCard, HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    token = token or get_token()
    if not token:
        raise PublishError(
            f"No Hugging Face token to publish {repo_id} with: pass token=... (--token), set HF_TOKEN, "
            "or run `hf auth login`. Nothing was uploaded."
        )
    api = HfApi(token=token)
    try:
        who = api.whoami()
    except Exception as err:  # an HTTP error (401) or a connection error: either way nothing can be published
        raise PublishError(
            f"Could not check the token with the Hub ({_http_summary(err)}): check the token and the "
            "network, or log in again with `hf auth login`. Nothing was uploaded."
        ) from err
    user = who["name"]
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(
            f"The token of {user!r} is read-only; publishing needs a token with write access. Nothing was uploaded."
        )
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PublishError(f"{repo_id!r} is not a valid repo id: {err}") from err
    namespace = repo_id.split("/")[0]
    writable = [user] + [org["name"] for org in who.get("orgs", []) if org.get("roleInOrg") != "read"]
    if namespace not in writable:
        raise PublishError(
            f"Cannot publish to {repo_id}: the token belongs to {user!r}, who may write to "
            f"{', '.join(writable)} only. Use e.g. {user}/{repo_id.split('/')[1]}. "
            "Nothing was uploaded."
        )

    branch = revision or "main"
    target = PushTarget(
        repo_id=repo_id, token=token, user=user, license=LicenseChoice(None, "unknown", ""), branch=branch
    )
    try:
        try:
            info = api.dataset_info(repo_id, revision=branch)
            target.branch_exists = True
        except RevisionNotFoundError:
            info = api.dataset_info(repo_id)  # the new branch will start from main
        target.exists, target.private, target.head = True, info.private, info.sha
        target.files = [sibling.rfilename for sibling in info.siblings or []]
        if README in target.files:
            target.card = DatasetCard.load(
                hf_hub_download(repo_id, README, repo_type="dataset", revision=info.sha, token=token)
            )
    except RepositoryNotFoundError:
        target.exists = False
    except HfHubHTTPError as err:
        raise PublishError(
            f"Could not read {repo_id} on the Hub ({_http_summary(err)}). Nothing was uploaded."
        ) from err

    target.license = resolve_license(
        license=license, existing_card=target.card, source=source, source_revision=source_revision, token=token
    )
    if target.license.license is None:
        raise PublishError(
            f"The license of {repo_id} is unknown: {target.license.detail}. Pass license='<Hub license id>', "
            "e.g. the source dataset's license, or 'other' when its terms are custom: the captions "
            "(and any real images) are the source's. Nothing was uploaded."
        )
    if target.license.origin == "given":
        try:
            DatasetCard(f"---\nlicense: {target.license.license}\n---\n").validate(repo_type="dataset")
        except ValueError as err:
            raise PublishError(
                f"The Hub does not accept license {target.license.license!r}: {err}. Use a license id "
                "from https://huggingface.co/docs/hub/repositories-licenses, or 'other'. "
                "Nothing was uploaded."
            ) from err
    return target


def push_to_hub(
    ds,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    license: str | None = None,
    source=None,
    source_revision: str | None = None,
    source_selection: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    evaluation=None,
    preview_pairs: int = 16,
    max_shard_rows: int = 1000,
    members=None,
):
    """Publish a distilled set as a Hub dataset: parquet shards, members, dataset card and preview, in one commit.

    Anyone can then ``load_dataset(repo_id)`` and train on it. The token, the namespace and the license are
    checked first (:func:`prepare_push`), before the shards, preview and card are made; then the repository
    is created if needed and everything is uploaded with a single ``create_commit``, so a failure leaves the
    repository as it was (an empty repository if it was just created), never half-published. Shards of an
    earlier push that the new set does not overwrite are deleted in the same commit.

    Args:
        ds: a distilled ``datasets.Dataset`` (made by :func:`pds_hf.distill`).
        repo_id: ``namespace/name``, e.g. ``"me/flickr30k-pds-100"``.
        private: create the repository private (True) or public (False); for an existing repository,
            change its visibility to that. None: public when created, unchanged otherwise.
        token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
        license: a Hub license id. Default: the license of the card already on the repository, else the
            license declared by ``source``'s card; when neither is known, nothing is uploaded.
        source: the source dataset's Hub id (or folder): named in the card, and its license is the default.
        source_revision: the source revision (commit id) the set was made from, recorded in the card.
        source_selection: which rows of the source were distilled, in words (e.g. "rows with split == 'train'").
        revision: the branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: default ``"Upload <N> distilled pairs with pds-hf"``.
        evaluation: an evaluation report (with ``to_markdown()``), a markdown file or markdown text to include.
        preview_pairs: pairs shown in ``preview.png`` (0: no preview).
        max_shard_rows: rows per parquet shard.
        members: the members to publish as the ``members`` config (``load_dataset(repo_id, "members")``): by
            default those the set carries (:func:`pds_hf.members`); a members ``Dataset``; or False for none.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the commit (``.commit_url``, ``.oid``, ``.repo_url``).

    Raises:
        PublishError: a missing or refused token, a namespace the token cannot write to, an unknown license,
            or a failed upload; the message says what was left on the Hub.

    Example:
        ```py
        >>> import pds_hf
        >>> small = pds_hf.distill(load_dataset("nlphuji/flickr30k", split="test"), num_pairs=100)
        >>> pds_hf.push_to_hub(small, "me/flickr30k-pds-100", license="other", source="nlphuji/flickr30k")
        >>> load_dataset("me/flickr30k-pds-100", split="train")
        ```
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_distilled(ds)
    evaluation_md = evaluation_markdown(evaluation)
    target = prepare_push(
        repo_id, token=token, license=license, source=source, source_revision=source_revision, revision=revision
    )
    api = HfApi(token=target.token)
    try:
        if not target.exists:
            api.create_repo(target.repo_id, repo_type="dataset", private=bool(private), exist_ok=True)
        elif private is not None and private != target.private:
            logger.info("Making %s %s", target.repo_id, "private" if private else "public")
            api.update_repo_settings(target.repo_id, private=private, repo_type="dataset")
        if not target.branch_exists and target.branch != "main":
            api.create_branch(target.repo_id, branch=target.branch, repo_type="dataset", exist_ok=True)
    except HfHubHTTPError as err:
        raise PublishError(
            f"Could not create or configure {target.repo_id} ({_http_summary(err)}). Nothing was uploaded."
        ) from err

    with tempfile.TemporaryDirectory(prefix="pds-hf-push-") as tmp:
        folder = Path(tmp)
        files = write_repo(
            ds,
            folder,
            choice=target.license,
            repo_id=target.repo_id,
            src=CardSource(source, source_revision, source_selection),
            evaluation_md=evaluation_md,
            existing_card=target.card,
            preview_pairs=preview_pairs,
            max_shard_rows=max_shard_rows,
            members=members_to_publish(ds, members),
        )
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
        operations += [
            CommitOperationDelete(path_in_repo=name)
            for name in target.files
            if is_data_shard(name) and name not in files
        ]
        try:
            commit = api.create_commit(
                target.repo_id,
                operations,
                repo_type="dataset",
                revision=target.branch,
                commit_message=commit_message or f"Upload {len(ds)} distilled pairs with pds-hf",
                commit_description=f"{len(ds)} image-text pairs distilled from {source or 'its source'} with "
                "pds-hf: parquet shards, dataset card and preview in one commit.",
                parent_commit=target.head,
            )
        except Exception as err:  # HTTP, connection or file error: the commit did not happen
            left = "it still holds its previous commit" if target.exists else "it exists but is empty"
            hint = (
                " Someone else committed to it meanwhile: run again."
                if "412" in _http_summary(err)
                else " Run again to retry."
            )
            raise PublishError(
                f"Uploading to {target.repo_id} failed ({_http_summary(err)}). Nothing was committed: {left}.{hint}"
            ) from err
    logger.info("Published %d pairs to %s", len(ds), commit.commit_url)
    return commit
