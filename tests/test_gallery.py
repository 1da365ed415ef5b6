"""The static gallery in a real headless Chromium: it loads from disk, shows the expected cards, search and
filters narrow them, paging works, the comparison mode shows both runs. A screenshot is kept."""

import os

import pytest

from pipeline.tools.gallery import build_gallery

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):  # .ci/run installs them
        pytest.skip(f"the browser checks need {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--allow-file-access-from-files", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def galleries(two_runs):
    root, _, _ = two_runs
    single = build_gallery([str(root / "run_a")], str(root / "site"), page_size=3, title="Run A")
    both = build_gallery([str(root / "run_a")], str(root / "site_cmp"), compare=[str(root / "run_b")], page_size=10)
    return root, single, both


def open_page(driver, path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("file://" + path)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready"))


def wait_ready_change(driver, before):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") != before)


def cards(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".card")


@pytest.mark.slow
def test_gallery_loads_from_disk_pages_and_searches(browser, galleries):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root, index, _ = galleries
    assert index == {**index, "rows": 5, "pages": 2}
    open_page(browser, str(root / "site" / "index.html"))
    assert len(cards(browser)) == 3  # first page of 3
    shown = cards(browser)
    with_thumbs = [c for c in shown if c.find_elements(By.TAG_NAME, "img")]
    assert all("decode" not in c.text for c in with_thumbs)  # keyframes from the WebDataset shards
    assert len(with_thumbs) == sum("decode" not in c.text for c in shown)
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, "gallery.png"))

    ready = browser.execute_script("return document.body.dataset.ready")
    browser.find_element(By.ID, "next").click()
    wait_ready_change(browser, ready)
    assert len(cards(browser)) == 2

    ready = browser.execute_script("return document.body.dataset.ready")
    Select(browser.find_element(By.ID, "filter")).select_by_value("errors")
    wait_ready_change(browser, ready)
    shown = cards(browser)
    assert len(shown) == 1 and "decode" in shown[0].text

    ready = browser.execute_script("return document.body.dataset.ready")
    Select(browser.find_element(By.ID, "filter")).select_by_value("all")
    wait_ready_change(browser, ready)
    target = cards(browser)[0].get_attribute("data-id")
    ready = browser.execute_script("return document.body.dataset.ready")
    browser.find_element(By.ID, "search").send_keys(target)
    wait_ready_change(browser, ready)
    shown = cards(browser)
    assert [c.get_attribute("data-id") for c in shown] == [target]


@pytest.mark.slow
def test_compare_mode_shows_both_runs(browser, galleries):
    from selenium.webdriver.common.by import By

    root, _, both = galleries
    assert both["compare"] is True
    open_page(browser, str(root / "site_cmp" / "index.html"))
    assert len(cards(browser)) == 5
    pairs = browser.find_elements(By.CSS_SELECTOR, ".card .pair")
    assert len(pairs) == 5 and all(len(p.find_elements(By.TAG_NAME, "h4")) == 2 for p in pairs)
    browser.save_screenshot(os.path.join(ARTIFACTS, "gallery_compare.png"))


XSS = '<img src=x onerror="window.pwned=(window.pwned||0)+1">'
SCRIPT_BREAK = "</script><script>window.pwned=(window.pwned||0)+1</script>"


@pytest.fixture(scope="module")
def hostile_gallery(tmp_path_factory):
    """An output whose ids, URIs, captions, errors and model names carry markup, under a folder whose path
    closes a script element, with a 300-character id; and its gallery with a title that does the same."""
    import numpy as np
    import pyarrow as pa

    from pipeline import schema as S
    from pipeline.config import OutputConfig
    from pipeline.sampler import encode_jpeg
    from pipeline.sinks import ShardWriter

    root = tmp_path_factory.mktemp("hostile_gallery")
    out = str(root / ("run" + SCRIPT_BREAK))  # slashes in the payload become folders: a legal path
    long_id = "L" * 300
    ids = [f"id{XSS}", long_id, "failed"]
    table = pa.table({
        S.VIDEO_ID: ids, S.URI: [f"/videos/{XSS}.mp4", "/videos/long.mp4", f"/videos/{SCRIPT_BREAK}.mp4"],
        S.CAPTION: [f"caption {XSS} {SCRIPT_BREAK}", "a long id", None],
        S.ERROR: [None, None, f"decode: {XSS}"], S.ERROR_STAGE: [None, None, "decode"],
        S.ERROR_REASON: [None, None, "undecodable"], S.MODEL: [f"model{XSS}"] * 3,
        S.KEYFRAME_JPEG: [encode_jpeg(np.full((32, 32, 3), v, np.uint8)) for v in (40, 120, 200)],
    })
    ShardWriter(OutputConfig(output=out, formats=("parquet", "webdataset")), run_id="r1")(table)
    title = f"Title {SCRIPT_BREAK} {XSS}"
    site = str(root / "site")
    build_gallery([out], site, title=title)
    build_gallery([out], site + "_cmp", compare=[out], title=title)
    return site, title, ids


def test_gallery_json_is_escaped_for_script_elements(hostile_gallery):
    site, _, _ = hostile_gallery
    html = open(os.path.join(site, "index.html"), encoding="utf-8").read()
    assert html.count("</script>") == 1 and html.count("<script") == 1  # only the template's own element
    page = open(os.path.join(site, "data", "page-00000.js"), encoding="utf-8").read()
    assert "<" not in page and ">" not in page.replace("=>", "")
    assert all(len(name) < 40 for name in os.listdir(os.path.join(site, "thumbs")))


@pytest.mark.slow
def test_markup_in_title_path_ids_uris_captions_errors_and_models_stays_text(browser, hostile_gallery):
    from selenium.webdriver.common.by import By

    site, title, ids = hostile_gallery
    for folder, models_shown in ((site, False), (site + "_cmp", True)):
        open_page(browser, os.path.join(folder, "index.html"))
        assert browser.execute_script("return window.pwned === undefined"), "script from the data ran"
        assert browser.find_element(By.ID, "title").text.startswith(title)
        shown = cards(browser)
        assert sorted(c.get_attribute("data-id") for c in shown) == sorted(ids)
        text = " ".join(c.text for c in shown)
        for literal in (f"caption {XSS}", f"decode: {XSS}", f"/videos/{XSS}.mp4", f"id{XSS}",
                        *([f"model{XSS}"] if models_shown else [])):
            assert literal in text, literal
        long_card = next(c for c in shown if c.get_attribute("data-id") == ids[1])
        image = long_card.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 32


@pytest.fixture(scope="module")
def foreign_gallery(tmp_path_factory):
    """A gallery of a foreign Parquet file (not written by this pipeline) with markup in every column, the
    numeric ones (width, height, duration) included, in compare mode against itself."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import schema as S

    root = tmp_path_factory.mktemp("foreign_gallery")
    out = root / "foreign"
    (out / "parquet").mkdir(parents=True)
    pq.write_table(pa.table({
        S.VIDEO_ID: [f"id{XSS}", "second"], S.URI: [f"/v/{XSS}.mp4", "/v/2.mp4"],
        S.CAPTION: [f"caption {SCRIPT_BREAK}", None], S.ERROR: [None, f"error {XSS}"],
        S.ERROR_STAGE: [XSS, "decode"], S.MODEL: [f"model{XSS}", "m"], S.DURATION_S: [XSS, SCRIPT_BREAK],
        S.WIDTH: [f'640"{XSS}', XSS], S.HEIGHT: [SCRIPT_BREAK, "480"],
    }), out / "parquet" / "part-00000.parquet")
    build_gallery([str(out)], str(root / "site"), compare=[str(out)])
    return str(root / "site")


@pytest.mark.slow
def test_markup_in_a_foreign_files_numeric_columns_stays_out_of_the_page(browser, foreign_gallery):
    from selenium.webdriver.common.by import By

    open_page(browser, os.path.join(foreign_gallery, "index.html"))
    assert browser.execute_script("return window.pwned === undefined"), "script from the data ran"
    shown = cards(browser)
    assert sorted(c.get_attribute("data-id") for c in shown) == sorted([f"id{XSS}", "second"])
    assert browser.find_elements(By.CSS_SELECTOR, ".card img, .card script") == []  # no keyframes, no markup
    text = " ".join(c.text for c in shown)
    assert f"caption {SCRIPT_BREAK}" in text and f"error {XSS}" in text and f"model{XSS}" in text
