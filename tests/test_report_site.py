"""The report site end to end in headless Chromium (Debian's `chromium`, driven by playwright over the
DevTools protocol; playwright never downloads a browser here): links, images, tables, unit pages, no
console error, and a screenshot under the test's tmp directory."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import torch

from test_report import make_curves, make_tables
from universality.moments import TopActivations
from universality.report import write_site

BROWSER = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WORDS = ["The", " cat", " sat", " on", " <mat>", "\n", " &amp;", " dog"]


def _skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: .ci/run must install it (apt-get install -y chromium)")
    pytest.skip(f"{reason}: install Debian's chromium (apt-get install -y chromium) to run the browser test")


def token_text(token: int) -> tuple[list[str], int]:
    """Seven tokens around `token`, the firing one at position 3."""
    return [WORDS[(token + offset) % len(WORDS)] for offset in range(-3, 4)], 3


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("site")
    units, pairs, layers = make_tables()
    layout = {m: {s: 12 for s in pd.unique(units["unit_set"])} for m in pd.unique(units["model"])}
    top = TopActivations(layout, k=6)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, 400, 100):
        batch = {m: {s: torch.randn(100, n, generator=generator) for s, n in sets.items()} for m, sets in layout.items()}
        top.update(batch, torch.arange(start, start + 100))
    facts = units[["model", "unit_set", "unit"]].assign(family="unigram: ' the'", role="prediction")
    write_site(run_dir, units=units, pairs=pairs, layers=layers, settings={"threshold": 0.5, "rotations": 2, "seed": 3},
               curves=make_curves(), title="demo run", config_text="[compare]\nthreshold = 0.5\n",
               facts={"tokens streamed": "400"}, top_activations=top, token_text=token_text, unit_facts=facts)
    return run_dir


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        _skip_or_fail("no Chromium browser installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package (dev extra) is not installed")
    with sync_playwright() as playwright:
        # playwright starts it with a fresh temporary --user-data-dir and --remote-debugging-pipe
        chromium = playwright.chromium.launch(executable_path=BROWSER, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url):
    """A page at `url` and the list its console errors and uncaught exceptions are appended to."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def broken_images(page) -> list[str]:
    return page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")


def test_index_links_to_a_unit_page_with_images_histogram_and_contexts(site, browser, tmp_path):
    page, errors = open_page(browser, (site / "report.html").as_uri())
    assert page.evaluate("document.images.length") == 4 and broken_images(page) == []
    rows = page.locator("#universal ~ .datatable tbody tr")
    assert rows.count() > 0
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    page.locator('a[href^="unit.html#"]').first.click()
    page.wait_for_selector("#unit h1")
    assert page.url.endswith("unit.html#0")
    assert broken_images(page) == []
    assert page.locator("svg.histogram rect").count() > 0
    marks = page.locator(".context mark")
    assert marks.count() > 0 and "&amp;" not in page.locator("#unit").inner_text().replace(" &amp;", "")
    assert "unigram: ' the'" in page.locator("#unit").inner_text()  # unit facts shown
    assert page.locator(".partner").count() == 2  # every other seed's partner, with its own contexts
    page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)
    assert errors == []
    assert (tmp_path / "unit.png").stat().st_size > 10_000


def test_table_sorts_and_filters(site, browser):
    page, errors = open_page(browser, (site / "report.html").as_uri())
    table = page.locator("#universal ~ .datatable")
    total = table.locator("tbody tr").count()
    excess = table.locator("th", has_text="excess corr")
    excess.click()  # numbers sort largest first on the first click
    values = [float(v) for v in table.locator("tbody tr td:nth-child(7)").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    excess.click()
    values = [float(v) for v in table.locator("tbody tr td:nth-child(7)").all_inner_texts()]
    assert values == sorted(values)
    table.locator("input.filter").fill(f"excess>{values[len(values) // 2]}")
    assert 0 < table.locator("tbody tr").count() < total
    table.locator("input.filter").fill("model:seed-2")
    assert set(table.locator("tbody tr td:nth-child(2)").all_inner_texts()) == {"seed-2"}
    assert errors == []


def test_unit_set_page_and_missing_unit_fail_gracefully(site, browser):
    page, errors = open_page(browser, (site / "report.html").as_uri())
    page.locator('a[href^="sets/"]').first.click()
    page.wait_for_selector(".datatable tbody tr")
    assert broken_images(page) == [] and page.evaluate("document.images.length") == 1
    assert page.locator(".datatable tbody tr").count() == 3 * 12  # every unit of the set, every model
    page.goto((site / "unit.html").as_uri() + "#99999")
    assert "No universal unit #99999" in page.locator("#unit").inner_text()
    assert errors == []
