"""The results page (`bench report --format html`): what it holds, and how it behaves in a real
browser (headless Chromium driven by Playwright; those tests skip, saying why, without them)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from markupsafe import escape

from bench.reports.html import render_page
from bench.reports.table import build_report, failed_records
from bench.spec import RunSpec
from bench.store import Store
from bench.suite import load_suite

VTAB = load_suite("vtab1k")
TASKS = [t.name for t in VTAB.tasks]
CHROMIUM = os.environ.get("PEFTBENCH_CHROMIUM", "/usr/bin/chromium")
# as the workplace's probe starts it: no background connections, which a closed network refuses
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = {"host": "node7", "device": "cpu", "packages": {"peftbench": "0.1.0", "torch": "2.14.1"},
       "git_commit": "abc1234"}


def spec(method, task, seed, stage="final", lr=1.0):
    return RunSpec(suite="vtab1k", task=task, method=method, seed=seed, stage=stage,
                   backbone="vit_base_patch16_224.orig_in21k", checkpoint=None, image_size=224,
                   hparams={"lr": lr, "epochs": 3})


def write(store, method, task, seed, top1, params, seconds, status="ok"):
    s = spec(method, task, seed)
    rec = {"run_id": s.run_id, "spec": s.to_dict(), "status": status, "finished_at": "2026-01-01",
           "env": ENV, "selection": {"epoch": "last", "hparams": "given", "selected_on": None}}
    if status == "ok":
        rec["metrics"] = {"top1": top1, "trainable_params": params, "trainable_params_no_head": params - 100,
                          "peak_memory_mib": 100.0 + params / 1000, "train_seconds": seconds,
                          "train_throughput": 1000.0 / seconds}
        rec["curve"] = [{"epoch": e, "train_loss": 2.0 / e} for e in (1, 2, 3)]
    else:
        rec["error"] = "RuntimeError: CUDA out of memory <in attention>"
    store.write(s, rec)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Three methods on all 19 tasks, two seeds; `vpt-deep` has no record for svhn (one failed
    run instead). Accuracy orders the methods lora > vpt-deep > linear, train time the reverse."""
    store = Store(tmp_path_factory.mktemp("page") / "results")
    for i, task in enumerate(TASKS):
        for seed in (1, 2):
            write(store, "linear", task, seed, 50.0 + seed, 38_000, 1.0)
            write(store, "lora", task, seed, 70.0 + i * 0.1 + seed, 300_000, 9.0)
            if task == "svhn":
                write(store, "vpt-deep", task, seed, None, None, None, status="failed")
            else:
                write(store, "vpt-deep", task, seed, 60.0 + seed, 50_000, 5.0)
    return store


def page_of(store, compare_published=False):
    report = build_report(store, VTAB, compare_published=compare_published)
    report.failed = failed_records(store, "vtab1k", "final")
    return report, render_page(report)


def test_the_page_is_self_contained_and_holds_the_protocol_and_the_problems(results):
    report, html = page_of(results, compare_published=True)
    # nothing fetched from anywhere: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script src" not in html and "@import" not in html
    assert str(escape(report.protocol)) in html
    assert "abc1234" in html and "0.1.0" in html
    assert "missing: <strong>vpt-deep</strong> / SVHN" in html
    # an error is text on the page, never markup
    assert "CUDA out of memory &lt;in attention&gt;" in html and "<in attention>" not in html
    # the published VPT rows, with their selection label, marked as published
    assert 'class="published"' in html and "published: " in html


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                                   "(pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PEFTBENCH_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, results, tmp_path):
    """The page loaded from a file, with every console error and every request recorded."""
    _, html = page_of(results, compare_published=True)
    path = tmp_path / "vtab1k_final.html"
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.errors, page.requests = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(path.as_uri())
    yield page
    page.close()


def visible_methods(page):
    return page.eval_on_selector_all("#results tbody tr:not(.hidden)", "rs => rs.map(r => r.dataset.method)")


def test_in_chromium_the_page_loads_with_no_error_and_no_request_and_the_table_has_its_shape(page):
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith("file:")] == []
    ours = ["linear", "lora", "vpt-deep"]
    methods = visible_methods(page)
    assert methods[:3] == ours
    assert any("published" in m for m in methods[3:])  # VPT-deep's published rows, after ours
    # method, 19 tasks, 3 group means, 2 means, params
    assert page.locator("#results thead tr:last-child th").count() == 1 + 19 + 3 + 2 + 1
    assert page.locator("#results tbody tr").first.locator("td").count() == 1 + 19 + 3 + 2 + 1
    assert page.locator("tr[data-method='lora'] td.best").count() >= 19  # the best everywhere


def sort_values(page, column_index):
    """The current metric's values in column `column_index` (0 = the first task), in row order."""
    return page.eval_on_selector_all(
        "#results tbody tr:not(.hidden)",
        f"rs => rs.map(r => r.cells[{column_index} + 1].getAttribute('data-' + document.querySelector('#metric').value))")


def test_in_chromium_sorting_a_column_reorders_the_rows_both_ways(page):
    groups_mean = 19 + 3 + 1  # the column index of Mean (groups)
    header = page.locator("#results thead tr:last-child th", has_text="Mean (groups)")
    for click, descending in ((1, True), (2, False)):
        header.click()
        ours = [m for m in visible_methods(page) if "published" not in m]
        # vpt-deep has no mean (a missing task), nor has a difference row: last either way
        assert ours == (["lora", "linear", "vpt-deep"] if descending else ["linear", "lora", "vpt-deep"])
        values = sort_values(page, groups_mean)
        known = [float(v) for v in values if v]
        assert known == sorted(known, reverse=descending)
        assert all(not v for v in values[len(known):]) and len(known) >= 4  # ours and published ones
    page.select_option("#metric", "time")
    page.locator("#results thead tr:last-child th", has_text="CIFAR-100").click()  # by train time, descending
    assert [m for m in visible_methods(page) if "published" not in m] == ["lora", "vpt-deep", "linear"]


def test_in_chromium_the_filters_hide_rows_and_columns(page):
    page.fill("#method-filter", "lo")
    shown = visible_methods(page)
    assert shown[0] == "lora" and all(m.startswith("lora") for m in shown)  # and its published rows
    assert page.locator("#shown").inner_text().startswith(f"{len(shown)} of ")
    page.fill("#method-filter", "")
    page.select_option("#group-filter", "natural")
    shown = page.eval_on_selector_all("#results thead tr:last-child th:not(.hidden)", "hs => hs.map(h => h.textContent)")
    assert "Caltech101" in shown and "Natural" in shown and "Mean (groups)" in shown
    assert "EuroSAT" not in shown and "Specialized" not in shown and "Clevr-Count" not in shown


def test_in_chromium_the_metric_toggle_shows_costs(page):
    cell = page.locator("tr[data-method='lora'] td[data-task='cifar']")
    assert cell.inner_text() == "71.5 ± 0.7"  # seeds 71 and 72
    page.select_option("#metric", "params")
    assert cell.inner_text() == "300.0K"
    page.select_option("#metric", "time")
    assert cell.inner_text() == "9.0"
    assert page.locator("tr[data-method='linear'] td[data-task='cifar']").get_attribute("class").split().count("best") == 1


def test_in_chromium_a_cell_opens_its_details(page):
    page.locator("tr[data-method='lora'] td[data-task='dtd']").click()
    dialog = page.locator("#detail")
    assert dialog.is_visible()
    text = dialog.inner_text()
    assert "lora · DTD" in text and "abc1234" in text and "last epoch" in text
    assert page.locator("#detail table.seeds tr").count() == 3  # header and two seeds
    assert page.locator("#detail svg.curve").count() == 1
    assert ".json" in page.locator("#detail table.seeds").inner_text()
    page.click("#detail-close")
    assert not dialog.is_visible()
    assert page.errors == []
