"""Gallery at scale: build time and browser timings for a synthetic 100k-row caption output.

    python bench/gallery_scale.py [--rows 100000]

Times: building the static folder; first page rendered in headless Chromium (from file://); a search that
must scan every page; compared with loading one page. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.tools.gallery import build_gallery
from pipeline.io.output_store import PARQUET_DIR
from pipeline.sinks import conform


def synthetic_output(folder: str, rows: int) -> None:
    words = "a person walks a dog along the street while cars pass by in the evening light".split()
    captions = [" ".join(words[(i % 7):] + words[: (i % 7)]) + f" clip {i}" for i in range(rows)]
    table = pa.table({
        S.VIDEO_ID: [f"v{i:07d}" for i in range(rows)], S.URI: [f"s3://bucket/p{i % 50}/v{i}.mp4" for i in range(rows)],
        S.CAPTION: [None if i % 97 == 0 else c for i, c in enumerate(captions)],
        S.ERROR: ["decode: broken" if i % 97 == 0 else None for i in range(rows)],
        S.DURATION_S: [5.0] * rows, S.WIDTH: [3840] * rows, S.HEIGHT: [2160] * rows,
        S.FLAG_REPETITION: [i % 13 == 0 for i in range(rows)],
    })
    os.makedirs(os.path.join(folder, PARQUET_DIR))
    buffer = io.BytesIO()
    pq.write_table(conform(table, "bench", datetime.now(timezone.utc)), buffer)
    with open(os.path.join(folder, PARQUET_DIR, "part-0.parquet"), "wb") as f:
        f.write(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        synthetic_output(os.path.join(tmp, "out"), args.rows)
        started = time.perf_counter()
        index = build_gallery([os.path.join(tmp, "out")], os.path.join(tmp, "site"))
        built = time.perf_counter() - started
        html_kb = os.path.getsize(os.path.join(tmp, "site", "index.html")) / 1024
        page_kb = os.path.getsize(os.path.join(tmp, "site", "data", "page-00000.js")) / 1024
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            started = time.perf_counter()
            driver.get("file://" + os.path.join(tmp, "site", "index.html"))
            WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready"))
            first = time.perf_counter() - started
            ready = driver.execute_script("return document.body.dataset.ready")
            started = time.perf_counter()
            driver.find_element(By.ID, "search").send_keys(f"clip {args.rows - 1}")
            WebDriverWait(driver, 300).until(lambda d: d.execute_script("return document.body.dataset.ready") != ready)
            search = time.perf_counter() - started - 0.15  # minus the input debounce
            found = len(driver.find_elements(By.CSS_SELECTOR, ".card"))
        finally:
            driver.quit()
    print(f"{args.rows} rows, {index['pages']} pages: build {built:.1f} s; index.html {html_kb:.0f} KiB, "
          f"one page {page_kb:.0f} KiB")
    print(f"first page shown in {first:.2f} s; a search scanning all pages {search:.2f} s "
          f"({search / first:.1f}x the first page; {found} card found)")


if __name__ == "__main__":
    main()
