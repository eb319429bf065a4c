"""The hub test server (tests/hub_server.py) against the real huggingface_hub and datasets clients, offline."""

import datasets
import numpy as np
import pytest
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from PIL import Image as PILImage

FEATURES = datasets.Features({"text": datasets.Value("string"), "image": datasets.Image()})


def make_dataset(texts, seed=0):
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)) for _ in texts]
    return datasets.Dataset.from_dict({"text": list(texts), "image": images}, features=FEATURES)


def pixels(ds):
    return [np.asarray(image.convert("RGB")) for image in ds["image"]]


def http_errors(exc: BaseException):
    """HfHubHTTPErrors in an exception chain (clients sometimes wrap them)."""
    while exc is not None:
        if isinstance(exc, HfHubHTTPError):
            yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.fixture(autouse=True)
def _server_stays_healthy(hub):
    yield
    assert hub.server_errors == [], "the hub test server raised:\n" + "\n".join(hub.server_errors)
    assert hub.blocked_requests == [], f"requests left 127.0.0.1: {hub.blocked_requests}"


def test_image_dataset_roundtrips_through_push_to_hub_and_load_dataset(hub):
    ds = make_dataset(["a cat", "a dog", "a bird"])
    ds.push_to_hub("tester/demo", token=hub.token)

    files = hub.repo_files("tester/demo")
    assert set(files) == {".gitattributes", "README.md", "data/train-00000-of-00001.parquet"}
    head = hub.commits("tester/demo")[-1]
    assert head.files["data/train-00000-of-00001.parquet"].lfs  # went through the LFS batch API + PUT
    assert not head.files["README.md"].lfs  # inline in the commit payload
    assert ("POST", "/datasets/tester/demo.git/info/lfs/objects/batch", 200) in hub.requests
    assert ("POST", "/api/datasets/tester/demo/commit/main", 200) in hub.requests

    hub.clear_requests()
    loaded = datasets.load_dataset("tester/demo", split="train")
    assert loaded["text"] == ["a cat", "a dog", "a bird"]
    for got, want in zip(pixels(loaded), pixels(ds), strict=False):
        np.testing.assert_array_equal(got, want)
    # Fresh cache: the data really came from the server, at the pushed commit.
    parquet = f"/datasets/tester/demo/resolve/{head.oid}/data/train-00000-of-00001.parquet"
    assert ("GET", parquet, 200) in hub.requests


def test_dataset_card_push_and_load_keep_yaml(hub):
    HfApi(token=hub.token).create_repo("tester/card", repo_type="dataset")
    card = DatasetCard(
        "---\nlicense: mit\npretty_name: Demo set\ntags:\n- pds\n- test\n---\n\n# Demo set\n\nHand-written body.\n"
    )
    card.push_to_hub("tester/card", token=hub.token)
    assert ("POST", "/api/validate-yaml", 200) in hub.requests

    loaded = DatasetCard.load("tester/card")
    assert loaded.data.license == "mit"
    assert loaded.data.pretty_name == "Demo set"
    assert loaded.data.tags == ["pds", "test"]
    assert "Hand-written body." in loaded.text

    info = HfApi().dataset_info("tester/card")
    assert info.card_data.license == "mit"
    assert "license:mit" in info.tags
    assert info.sha == hub.commits("tester/card")[-1].oid

    # The server validates README metadata like the Hub: broken YAML is refused before anything is committed.
    # (DatasetCard parses YAML itself, so send the raw file.)
    n_commits = len(hub.commits("tester/card"))
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        HfApi(token=hub.token).upload_file(
            path_or_fileobj=b"---\nlicense: [mit\n---\nbody\n",
            path_in_repo="README.md",
            repo_id="tester/card",
            repo_type="dataset",
        )
    assert ("POST", "/api/validate-yaml", 400) in hub.requests
    assert len(hub.commits("tester/card")) == n_commits


def test_second_push_keeps_the_readme_body(hub):
    make_dataset(["one", "two", "three"]).push_to_hub("tester/demo", token=hub.token)

    card = DatasetCard.load("tester/demo")
    card.data.license = "apache-2.0"
    card.text = "\n# Demo\n\nNotes written by hand.\n"
    card.push_to_hub("tester/demo", token=hub.token)

    second = make_dataset(["four", "five"], seed=1)
    second.push_to_hub("tester/demo", token=hub.token)

    readme = hub.repo_files("tester/demo")["README.md"].decode()
    assert "Notes written by hand." in readme
    card = DatasetCard.load("tester/demo")
    assert card.data.license == "apache-2.0"
    assert card.data.dataset_info["splits"][0]["num_examples"] == 2  # dataset_info was rewritten
    assert [f for f in hub.repo_files("tester/demo") if f.endswith(".parquet")] == ["data/train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset("tester/demo", split="train")
    assert loaded["text"] == ["four", "five"]
    for got, want in zip(pixels(loaded), pixels(second), strict=False):
        np.testing.assert_array_equal(got, want)


def test_private_repo_is_hidden_from_anonymous_clients(hub):
    make_dataset(["secret"]).push_to_hub("tester/secret", token=hub.token, private=True)
    assert hub.is_private("tester/secret")
    assert HfApi(token=hub.token).dataset_info("tester/secret").private is True

    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("tester/secret")
    with pytest.raises(DatasetNotFoundError):
        datasets.load_dataset("tester/secret", split="train")

    # ...while the owner can read it (anonymous attempt first: a cached copy would hide the failure).
    assert datasets.load_dataset("tester/secret", split="train", token=hub.token)["text"] == ["secret"]


def test_missing_or_invalid_token_is_refused(hub):
    ds = make_dataset(["x"])
    with pytest.raises(HfHubHTTPError) as info:
        ds.push_to_hub("tester/demo")  # no token anywhere: HF_TOKEN unset, token file in the temp HF_HOME
    assert info.value.response.status_code == 401
    assert "authenticated" in str(info.value)
    assert not hub.repo_exists("tester/demo")

    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token="hf_not_a_valid_token").whoami()
    assert info.value.response.status_code == 401
    assert HfApi(token=hub.token).whoami()["name"] == "tester"


def test_failed_commit_leaves_no_partial_commit(hub):
    make_dataset(["one", "two"]).push_to_hub("tester/demo", token=hub.token)
    commits_before = hub.commits("tester/demo")
    files_before = hub.repo_files("tester/demo")

    hub.fail_next("POST", r"^/api/datasets/tester/demo/commit/", status=500)
    with pytest.raises(HfHubHTTPError) as info:
        make_dataset(["three", "four", "five"], seed=2).push_to_hub("tester/demo", token=hub.token)
    assert info.value.response.status_code == 500
    assert ("POST", "/api/datasets/tester/demo/commit/main", 500) in hub.requests

    assert hub.commits("tester/demo") == commits_before
    assert hub.repo_files("tester/demo") == files_before
    assert datasets.load_dataset("tester/demo", split="train")["text"] == ["one", "two"]

    # The failure was one-shot: pushing again works.
    make_dataset(["three", "four", "five"], seed=2).push_to_hub("tester/demo", token=hub.token)
    assert len(hub.commits("tester/demo")) == len(commits_before) + 1


def test_failed_lfs_upload_creates_no_commit(hub):
    hub.fail_next("PUT", r"^/_lfs/upload/", status=403)  # 4xx: huggingface_hub retries 5xx PUTs with backoff
    with pytest.raises(Exception) as info:
        make_dataset(["x", "y"]).push_to_hub("tester/demo", token=hub.token)
    assert [e.response.status_code for e in http_errors(info.value)] == [403]
    assert [c.title for c in hub.commits("tester/demo")] == ["initial commit"]
    assert set(hub.repo_files("tester/demo")) == {".gitattributes"}


def test_stale_parent_commit_is_rejected(hub):
    # datasets passes parent_commit=<sha it read> to create_commit; the server answers 412 if main moved since.
    api = HfApi(token=hub.token)
    api.create_repo("tester/race", repo_type="dataset")
    stale = hub.commits("tester/race")[-1].oid
    hub.add_commit("tester/race", {"other.txt": "pushed by someone else"})
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            "tester/race",
            [CommitOperationAdd("mine.txt", b"mine")],
            commit_message="racing",
            repo_type="dataset",
            parent_commit=stale,
        )
    assert info.value.response.status_code == 412
    assert "mine.txt" not in hub.repo_files("tester/race")
    api.create_commit(
        "tester/race",
        [CommitOperationAdd("mine.txt", b"mine")],
        commit_message="rebased",
        repo_type="dataset",
        parent_commit=hub.commits("tester/race")[-1].oid[:7],  # short ids work too
    )
    assert hub.repo_files("tester/race")["mine.txt"] == b"mine"


def test_writing_outside_your_namespaces_is_forbidden(hub):
    ds = make_dataset(["x"])
    with pytest.raises(HfHubHTTPError) as info:
        ds.push_to_hub("someone-else/demo", token=hub.token)
    assert info.value.response.status_code == 403
    assert not hub.repo_exists("someone-else/demo")

    hub.create_repo("someone-else/existing")  # exists and is public, but not ours
    with pytest.raises(HfHubHTTPError) as info:
        ds.push_to_hub("someone-else/existing", token=hub.token)
    assert info.value.response.status_code == 403
    assert len(hub.commits("someone-else/existing")) == 1

    ds.push_to_hub("pds-org/demo", token=hub.token)  # an organisation the user belongs to
    assert "README.md" in hub.repo_files("pds-org/demo")


def test_hf_api_files_revisions_and_ranges(hub):
    api = HfApi(token=hub.token)
    api.create_repo("tester/files", repo_type="dataset")
    first = api.upload_file(
        path_or_fileobj=b"version 1", path_in_repo="notes/a.txt", repo_id="tester/files", repo_type="dataset"
    )
    api.upload_file(
        path_or_fileobj=b"version 2", path_in_repo="notes/a.txt", repo_id="tester/files", repo_type="dataset"
    )
    api.upload_file(
        path_or_fileobj=bytes(range(256)) * 4, path_in_repo="blob.bin", repo_id="tester/files", repo_type="dataset"
    )
    assert hub.commits("tester/files")[-1].files["blob.bin"].lfs  # binary sample => LFS

    # Downloads, at a branch and at an older commit id.
    path = hf_hub_download("tester/files", "notes/a.txt", repo_type="dataset")
    assert open(path, "rb").read() == b"version 2"
    path = hf_hub_download("tester/files", "notes/a.txt", repo_type="dataset", revision=first.oid)
    assert open(path, "rb").read() == b"version 1"
    path = hf_hub_download("tester/files", "blob.bin", repo_type="dataset")
    assert open(path, "rb").read() == bytes(range(256)) * 4

    # History, refs, paths-info and a paginated tree listing.
    titles = [c.title for c in api.list_repo_commits("tester/files", repo_type="dataset")]
    assert titles == [c.title for c in reversed(hub.commits("tester/files"))]
    assert api.list_repo_refs("tester/files", repo_type="dataset").branches[0].target_commit == (
        hub.commits("tester/files")[-1].oid
    )
    (info,) = api.get_paths_info("tester/files", ["blob.bin", "missing"], repo_type="dataset")
    assert info.size == 1024 and info.lfs.sha256 == hub.commits("tester/files")[-1].files["blob.bin"].sha256
    hub.tree_page_size = 2
    assert sorted(api.list_repo_files("tester/files", repo_type="dataset")) == [
        ".gitattributes",
        "blob.bin",
        "notes/a.txt",
    ]
    assert sum(r.path.startswith("/api/datasets/tester/files/tree/") for r in hub.requests) >= 2
    assert api.file_exists("tester/files", "blob.bin", repo_type="dataset")
    assert not api.file_exists("tester/files", "nope.bin", repo_type="dataset")

    # HfFileSystem reads a slice with an HTTP Range request.
    with HfFileSystem().open("datasets/tester/files/blob.bin", "rb", block_size=16) as f:
        f.seek(250)
        assert f.read(10) == bytes([250, 251, 252, 253, 254, 255, 0, 1, 2, 3])
    assert any(r.method == "GET" and r.path.endswith("/blob.bin") and r.status == 206 for r in hub.requests)
