"""The static gallery in a real headless Chromium: it loads from disk, shows the expected cards, search and
filters narrow them, paging works, the comparison mode shows both runs. A screenshot is kept."""

import os
import shutil
import subprocess

import pytest

from pipeline.gallery import build_gallery

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ensure_chromium() -> str | None:
    """Install Debian's chromium + chromium-driver when missing; returns why it cannot, or None."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "chromium/chromium-driver are not installed and this user cannot apt-get install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
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


def test_compare_mode_shows_both_runs(browser, galleries):
    from selenium.webdriver.common.by import By

    root, _, both = galleries
    assert both["compare"] is True
    open_page(browser, str(root / "site_cmp" / "index.html"))
    assert len(cards(browser)) == 5
    pairs = browser.find_elements(By.CSS_SELECTOR, ".card .pair")
    assert len(pairs) == 5 and all(len(p.find_elements(By.TAG_NAME, "h4")) == 2 for p in pairs)
    browser.save_screenshot(os.path.join(ARTIFACTS, "gallery_compare.png"))
