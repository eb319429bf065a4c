"""Output folders: only a folder pds-hf wrote is ever replaced, the folder is checked before any work, and it is
made with the permissions the umask gives, from Python (save_to_folder) and from the command line."""

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset

from pds_hf.cli import main
from pds_hf.publish import save_to_folder
from pds_hf.publish.folder import OutputFolderError, check_output_folder


@pytest.fixture(scope="module")
def small():
    """A distilled set of three pairs, with the columns pds_hf.distill gives."""
    from pds_hf.testing import tiny_distilled_set

    return tiny_distilled_set()


@pytest.fixture
def no_distilling(monkeypatch):
    """Any distillation (or model loading) fails the test: the command must stop before it."""
    import pds_hf

    monkeypatch.setattr(pds_hf, "distill", lambda *a, **k: pytest.fail("distilled before checking --output"))


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def users_folder(folder):
    """A folder of the user's: a text file and a file in a subfolder."""
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("four years of work")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return files_of(folder)


def test_overwrite_never_replaces_a_folder_pds_hf_did_not_write(small, tmp_path, capsys, no_distilling):
    mywork = tmp_path / "mywork"
    before = users_folder(mywork)
    listed = r"mywork holds files pds-hf did not write \(thesis.txt, sub/data.csv\)"
    with pytest.raises(OutputFolderError, match=listed):
        save_to_folder(small, mywork, overwrite=True)
    assert main(["distill", "--demo", "--output", str(mywork), "--overwrite"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {mywork} holds files pds-hf did not write") and "thesis.txt" in line, line
    assert files_of(mywork) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mywork"]  # no staging or old folder left behind


def test_a_folder_pds_hf_wrote_is_replaced_only_with_overwrite_and_only_while_it_holds_nothing_else(small, tmp_path):
    out = tmp_path / "out"
    save_to_folder(small, out, license="mit")
    assert sorted(files_of(out)) == ["README.md", "data/train-00000-of-00001.parquet", "preview.png"]
    with pytest.raises(OutputFolderError, match="exists .* overwrite=True"):
        save_to_folder(small, out)
    save_to_folder(small.select(range(2)), out, overwrite=True)
    assert len(load_dataset(str(out), split="train")) == 2

    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"did not write \(notes.txt\)"):
        save_to_folder(small, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and len(load_dataset(str(out), split="train")) == 2

    # A card given as text has no pds-hf block; the shards still show a distilled set.
    save_to_folder(small, tmp_path / "custom", card="---\nlicense: mit\n---\nMy own card.\n")
    save_to_folder(small, tmp_path / "custom", card="---\nlicense: mit\n---\nMy own card.\n", overwrite=True)

    # The same file names, but a dataset of the user's (say, downloaded from the Hub): never replaced.
    lookalike = tmp_path / "lookalike"
    (lookalike / "data").mkdir(parents=True)
    (lookalike / "README.md").write_text("---\nlicense: mit\n---\nMy dataset.\n")
    Dataset.from_dict({"text": ["a", "b"]}).to_parquet(str(lookalike / "data" / "train-00000-of-00001.parquet"))
    before = files_of(lookalike)
    with pytest.raises(OutputFolderError, match="but not from pds-hf"):
        save_to_folder(small, lookalike, overwrite=True)
    assert files_of(lookalike) == before


def test_the_current_folder_and_its_parents_are_never_written(small, tmp_path, monkeypatch, capsys, no_distilling):
    work = tmp_path / "work"
    save_to_folder(small, work)
    before = files_of(work)
    monkeypatch.chdir(work)
    for where in (".", "..", str(work)):
        with pytest.raises(OutputFolderError, match="current folder or one of its parents"):
            save_to_folder(small, where, overwrite=True)
    assert main(["distill", "--demo", "--output", ".", "--overwrite"]) == 2
    assert "is the current folder or one of its parents" in capsys.readouterr().err
    assert files_of(work) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no ..old.* left behind


def test_an_empty_folder_is_used(small, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_folder(empty) == empty
    save_to_folder(small, empty)
    assert len(load_dataset(str(empty), split="train")) == 3


def test_an_output_that_cannot_be_written_fails_before_any_work(tmp_path, capsys, no_distilling):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for output in (a_file, a_file / "out"):
        assert main(["distill", "--demo", "--output", str(output)]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("error: ") and str(output) in line and "is a file" in line, line
    assert a_file.read_text() == "mine"


def _checked_without_root(*folders):
    """What check_output_folder says of each folder, asked by a child process that has given up root's rights
    (root writes into any folder, whatever its permissions)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            said = []
            for folder in folders:
                try:
                    said.append(f"accepted {check_output_folder(folder)}")
                except OutputFolderError as err:
                    said.append(str(err))
            os.write(write, "\n".join(said).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        return answer.read().splitlines()


def test_a_folder_that_cannot_be_written_or_read_is_refused_by_name():
    base = Path(tempfile.mkdtemp(prefix="pds-hf-test-"))  # any user may enter it, unlike pytest's tmp_path
    locked, hidden, shared = base / "locked", base / "hidden", base / "shared"
    try:
        base.chmod(0o755)
        for folder, mode in ((locked, 0o555), (hidden, 0o000), (shared, 0o777)):
            folder.mkdir()
            folder.chmod(mode)
        said = _checked_without_root(locked / "out", hidden / "out", shared / "out")
    finally:
        locked.chmod(0o755)
        hidden.chmod(0o755)
        shutil.rmtree(base)
    assert said == [
        f"Cannot write the folder {locked / 'out'}: {locked} is not writable (Permission denied). Choose a folder "
        "you can write to.",
        f"Cannot use the folder {hidden / 'out'}: Permission denied ({hidden / 'out'}). Choose a folder you can "
        "write to.",
        f"accepted {shared / 'out'}",
    ]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_folders_follow_the_umask(small, tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_to_folder(small, tmp_path / "out")
    finally:
        os.umask(previous)
    expected = 0o777 & ~umask
    for folder in (tmp_path / "out", tmp_path / "out" / "data"):
        assert stat.S_IMODE(folder.stat().st_mode) == expected, oct(folder.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out" / "README.md").stat().st_mode) == 0o666 & ~umask


def test_a_recipe_checks_every_output_folder_before_reading_its_source(small, tmp_path, capsys):
    from pds_hf.recipe import Recipe

    def no_source(folder, source):
        pytest.fail("read the source before checking the output folders")

    recipe = Recipe(
        name="shapes", sources={"me/shapes": "every row"}, source_split="train", write_dry_run_source=no_source
    )
    argv = ["--org", "me", "--dry-run", "--sizes", "4", "8", "--output-dir", str(tmp_path)]
    save_to_folder(small, tmp_path / "shapes-pds-4")
    capsys.readouterr()
    assert recipe.main(argv) == 2  # written by pds-hf: replaced only with --overwrite, which the error names
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'shapes-pds-4'} exists (written by an earlier pds-hf "
        "run); pass --overwrite to replace it, or choose another folder.\n"
    )
    before = users_folder(tmp_path / "shapes-pds-8")
    assert recipe.main([*argv, "--overwrite"]) == 2
    assert "shapes-pds-8 holds files pds-hf did not write (thesis.txt, sub/data.csv)" in capsys.readouterr().err
    assert files_of(tmp_path / "shapes-pds-8") == before
