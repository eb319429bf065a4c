"""``pds-hf explore``: what the page reads (fast), and the page itself in a real headless Chromium (marked browser)."""

import os
import shutil
import socket

import numpy as np
import pytest

import pds_hf
from pds_hf.explore import load_explorer, matching_pairs


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_encoder):
    """The demo shapes (60 images, 120 pairs) distilled to 8 pairs with their real images, saved as a folder."""
    from pds_hf.demo import demo_dataset

    ds = demo_dataset(60)
    config = pds_hf.DistillConfig(
        num_pairs=8, clip_model=tiny_encoder, synthesis="retrieve", image_size=32, device="cpu"
    )
    small = pds_hf.distill(ds, config)
    folder = pds_hf.save_to_folder(small, tmp_path_factory.mktemp("explore") / "shapes-pds-8")
    return folder, ds, small


def test_the_page_reads_each_pairs_members_closest_first(published):
    folder, ds, small = published
    explorer = load_explorer(folder)
    assert explorer.source is not None  # the demo shapes, remade in code, are the source the members index
    members = pds_hf.members(small).to_pandas()
    for pair, support in enumerate(small["support"]):
        found = explorer.pair_members(pair)
        assert len(found) == support
        # By hand: this pair's members, ordered by image + text similarity, highest first.
        mine = members[members["pair"] == pair]
        want = mine.iloc[np.argsort(-(mine["image_similarity"] + mine["text_similarity"]).to_numpy(), kind="stable")]
        assert [m["source_row"] for m in found] == list(want["source_row"])


def test_the_filter_keeps_the_pairs_whose_caption_holds_every_word(published):
    folder, _, small = published
    explorer = load_explorer(folder)
    captions = small["caption"]
    assert matching_pairs(explorer, "") == list(range(len(small)))
    word = captions[0].split()[-1]
    assert matching_pairs(explorer, word.upper()) == [i for i, c in enumerate(captions) if word in c.split()]
    assert matching_pairs(explorer, f"{word} no-such-word") == []


def test_a_source_that_is_not_the_one_the_members_index_shows_no_images(published, caplog):
    folder, ds, _ = published
    shuffled = ds.select(list(range(len(ds)))[::-1])
    assert load_explorer(folder, source=shuffled).source is None
    assert "not the one the members index" in caplog.text
    assert load_explorer(folder, source=ds).source is ds


def test_a_set_published_without_members_shows_its_pairs_only(published, tmp_path):
    _, _, small = published
    folder = pds_hf.save_to_folder(small, tmp_path / "no-members", members=False)
    explorer = load_explorer(folder)
    assert explorer.members is None and explorer.source is None
    assert [explorer.pair_members(pair) for pair in range(len(small))] == [[]] * len(small)
    pytest.importorskip("gradio")
    from pds_hf.explore import build_page

    assert build_page(explorer) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.browser
def test_the_page_in_a_headless_browser_shows_a_pairs_members(published, tmp_path):
    """Open the page in Debian's Chromium, click a pair, see its members; filter by caption. Screenshot kept in
    tmp_path (and copied to $PDS_HF_EXPLORE_SCREENSHOT when set, for the README)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pds_hf.explore import explore

    folder, _, small = published
    support = list(small["support"])
    pair = next(i for i, s in enumerate(support) if s > 1)
    members = pds_hf.members(small).to_pandas()
    mine = members[members["pair"] == pair]
    closest = mine.iloc[int(np.argmax(mine["image_similarity"] + mine["text_similarity"]))]["caption"]

    page = explore(folder, port=free_port(), block=False)
    assert page.local_url.startswith("http://127.0.0.1:")
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    try:
        driver.get(page.local_url)
        wait = WebDriverWait(driver, 60)
        thumbnails = "#pds-pairs button.thumbnail-item"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{thumbnails} img")) == len(small))
        driver.find_elements(By.CSS_SELECTOR, thumbnails)[pair].click()
        wait.until(lambda d: f"Pair #{pair}:" in d.find_element(By.ID, "pds-member-header").text)
        member_items = "#pds-members button.thumbnail-item"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"{member_items} img")) == support[pair])
        labels = [e.get_attribute("alt") for e in driver.find_elements(By.CSS_SELECTOR, f"{member_items} img")]
        assert labels[0] == closest and sorted(labels) == sorted(mine["caption"])
        assert (
            f"support {support[pair]}: {support[pair]} member(s)"
            in driver.find_element(By.ID, "pds-member-header").text
        )
        driver.save_screenshot(str(tmp_path / "explore.png"))

        word = small[pair]["caption"].split()[-1]
        driver.find_element(By.CSS_SELECTOR, "#pds-filter textarea, #pds-filter input").send_keys(word)
        want = len(matching_pairs(load_explorer(folder), word))
        wait.until(lambda d: f"({want} shown)" in d.find_element(By.ID, "pds-pairs").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, thumbnails)) == want)
    finally:
        driver.quit()
        page.close()
    assert (tmp_path / "explore.png").read_bytes().startswith(b"\x89PNG")
    if os.environ.get("PDS_HF_EXPLORE_SCREENSHOT"):
        shutil.copy(tmp_path / "explore.png", os.environ["PDS_HF_EXPLORE_SCREENSHOT"])


def test_the_command_refuses_what_is_neither_a_folder_nor_a_hub_id(tmp_path, capsys):
    from pds_hf.cli import main

    assert main(["explore", str(tmp_path / "missing" / "set")]) == 2
    assert "no such folder, and not a Hub dataset id" in capsys.readouterr().err
