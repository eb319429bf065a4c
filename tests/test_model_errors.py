"""A model that cannot be loaded: the error names it and its revision, says when the Hub could not be reached, and
fails at once instead of after half a minute of retries."""

import socket
import time

import pytest

from pds_hf.encode import load_encoder
from pds_hf.hub_models import ModelLoadError
from pds_hf.synthesize import load_unclip

try:  # tests/ imported as a package
    from .hub_server import patch_hub_clients
except ImportError:  # rootdir-relative import mode
    from hub_server import patch_hub_clients

LOADERS = [(load_encoder, "clip_model"), (load_unclip, "unclip_model")]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("loader", "option"), LOADERS)
def test_a_silent_hub_fails_at_once_naming_the_model(loader, option, tmp_path):
    import diffusers  # noqa: F401  (imported before the clock starts: a first import takes seconds)
    import transformers  # noqa: F401

    with patch_hub_clients(f"http://127.0.0.1:{_closed_port()}", tmp_path):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError) as caught:
            loader("someone/some-model", revision="v2")
        elapsed = time.perf_counter() - start
    err = caught.value
    assert (err.option, err.model, err.revision, err.hub_unreachable) == (option, "someone/some-model", "v2", True)
    message = str(err)
    assert message.startswith(
        f"Could not load {option}='someone/some-model' (revision 'v2'): the Hugging Face Hub could not be reached"
    )
    assert "HF_HUB_OFFLINE=1" in message and "local folder" in message
    assert elapsed < 10  # huggingface_hub alone retries for ~25 s


@pytest.mark.parametrize(("loader", "option"), LOADERS)
def test_offline_mode_names_the_model_and_the_switch(loader, option, tmp_path, monkeypatch):
    from huggingface_hub import constants

    with patch_hub_clients(f"http://127.0.0.1:{_closed_port()}", tmp_path):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(
            ModelLoadError,
            match=rf"{option}='someone/some-model'.*HF_HUB_OFFLINE=1 is set.*unset "
            "HF_HUB_OFFLINE",
        ) as caught:
            loader("someone/some-model")
    assert caught.value.hub_unreachable and caught.value.revision is None


def test_a_folder_that_holds_no_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"Could not load clip_model='.*empty'") as caught:
        load_encoder(str(tmp_path / "empty"))
    assert caught.value.option == "clip_model" and not caught.value.hub_unreachable
    assert isinstance(caught.value, OSError)  # callers that caught transformers' OSError still catch it
