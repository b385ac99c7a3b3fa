"""The Runs tab in a real browser (`python app.py`, Chromium by Playwright; see test_ui_browser.py): run the toy
default with a small n, filter to changed answers, click one, and the Image tab shows that sample's overlays,
inspector, method comparison and trace (no re-run); open a folder written by lmms-eval's CLI and see the
numbers of its results file; the /runs API endpoint. OCCAM_APP_SCREENSHOT_DIR=docs writes docs/runs_*.png."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from occam import runs
from occam.lmms import toy_task
from tests.conftest import served_app
from tests.test_lmms_eval import harness, run_lmms  # noqa: F401  (the fixture, shared)
from tests.test_ui_browser import ARTIFACTS, browser, shot  # noqa: F401  (the fixture, shared)

N, CALIB = 12, 12


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    root = tmp_path_factory.mktemp("app_runs")
    with served_app(ARTIFACTS / "server_runs.log", OCCAM_APP_RUNS=str(root)) as (url, _):
        yield url, root


@pytest.fixture(scope="module")
def lmms_folder(harness):  # noqa: F811
    root = harness / "both"
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda a: run_lmms(harness, *a), [
            ("both/none", "pretrained=toy,method=none"), ("both/topk", "pretrained=toy,method=topk,target_retention=0.25")]))
    return root, out


def open_runs(browser, url, height=1200):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_selector("#runs-run")
    return page


def wait_summary(page, text: str = "status", timeout=300_000) -> str:
    page.wait_for_function(f"document.querySelector('#runs-summary').innerText.includes({text!r})", timeout=timeout)
    return page.inner_text("#runs-summary")


def cell(page, row: int, col: int) -> str:
    return page.inner_text(f'#runs-table [role=gridcell][data-row="{row}"][data-col="{col}"]').strip()


def test_run_filter_click_opens_the_sample_in_the_image_tab(served, browser):  # noqa: F811
    url, root = served
    page = open_runs(browser, url)
    page.locator("#runs-n input").fill(str(N))
    page.locator("#runs-calib input").fill(str(CALIB))
    page.click("#runs-run")
    summary = wait_summary(page)
    assert "status complete" in summary.replace("\n", " ") and f"{N} samples" in summary
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    run = runs.open_run(folder)
    agg = {k["key"]: k for k in runs.aggregate(run)["keys"]}
    for key in ("none", "occam@0.25", "fastv@0.11"):                     # the page shows the library's numbers
        k = agg[key]
        assert f"{k['accuracy']:.3f} [{k['ci95'][0]:.3f}, {k['ci95'][1]:.3f}]" in summary
    page.wait_for_selector("#runs-plot-retention .js-plotly-plot")
    shot(page, "runs_run", full_page=False)
    for tab, name in (("Per question type", "runs_types"), ("Kept tokens vs scene content", "runs_content")):
        page.get_by_role("tab", name=tab).click()
        time.sleep(1.0)
        shot(page, name, full_page=False)
    # filter to changed answers: every row left is a changed one, as many as the library counts
    page.locator("#runs-f-changed input").check()
    changed = [r for r in runs.sample_table(run) if r["changed"]]
    assert changed, "the small run has no changed answer: pick another n"
    page.wait_for_function("n => document.querySelectorAll('#runs-table [role=row][data-index]').length == n",
                           arg=len(changed), timeout=30_000)
    assert cell(page, 0, 12) == "yes"                                      # the 'changed' column
    page.locator("#runs-table").scroll_into_view_if_needed()
    shot(page, "runs_table", full_page=False)
    sample, key = int(cell(page, 0, 0)), cell(page, 0, 4)
    answer = cell(page, 0, 6)
    # a click opens it in the Image tab, from the saved traces
    page.locator('#runs-table [role=gridcell][data-row="0"][data-col="2"]').click()
    page.wait_for_function("document.querySelector('#image-tab') && "
                           "document.querySelector('#image-tab').offsetParent !== null")
    page.wait_for_function("document.querySelector('#stats').innerText.includes('after Stage I')", timeout=60_000)
    assert page.input_value("#pruned-answer textarea") == answer
    assert page.input_value("#question textarea") == run.samples[sample]["question"]
    assert page.input_value("#reference textarea") == run.samples[sample]["answer"]
    assert "Answer changed" in page.inner_text("#agreement") and "saved run" in page.inner_text("#budget")
    trace = run.trace(sample, key)
    stats = page.inner_text("#stats")
    assert f"{trace['counts']['final']}" in stats and trace["config"]["method"] in stats
    page.wait_for_selector("#plot-final .js-plotly-plot .hm")
    assert f"{trace['counts']['final']} of {trace['counts']['visual']}" in page.inner_text("#plot-final")
    page.get_by_role("tab", name="Token inspector").click()
    page.wait_for_function("document.querySelector('#inspector').innerText.includes('Token ')")
    page.get_by_role("tab", name="Method comparison").click()
    page.wait_for_function("document.querySelectorAll('#method-cards figure').length == 4")   # full + 3 methods
    assert "from its saved traces" in page.inner_text("#runs-message")
    shot(page, "runs_image", full_page=True)
    # CSV export of the filtered table
    page.get_by_role("tab", name="Runs").click()
    page.click("#runs-export")
    page.wait_for_selector("#runs-csv a", timeout=30_000)
    page.close()


def test_open_an_lmms_eval_folder(served, browser, lmms_folder):  # noqa: F811
    url, _ = served
    root, outs = lmms_folder
    page = open_runs(browser, url)
    page.get_by_role("tab", name="Open a run").click()
    box = "#runs-open-path textarea, #runs-open-path input"
    page.wait_for_selector(box, state="visible")          # the tab's content is rendered when first shown
    page.fill(box, str(root))
    page.wait_for_function(f"document.querySelector({box!r}).value === {str(root)!r}")
    page.click("#runs-open")
    summary = wait_summary(page, "lmms-eval")
    rows = {}
    for line in summary.splitlines():            # the first table: one row per run
        if "\t" in line:
            rows.setdefault(line.split("\t")[0].strip(), line.split("\t"))
    for key, out in zip(("none", "topk target=0.25"), outs):   # run | n | accuracy [CI] | reported | retention
        res = out["results"]
        reported = res["results"][toy_task.TASK]["exact_match,none"]
        cells = [c.strip() for c in rows[key]]
        assert len(cells) == 8, (cells, summary)
        assert cells[1] == str(res["n-samples"][toy_task.TASK]["effective"])
        assert cells[2].startswith(f"{reported:.3f} [") and cells[3] == f"{reported:.3f}"
        assert cells[4] == f"{res['throughput'][f'avg_occam_retention@{toy_task.TASK}']:.3f}"
    assert "not per-token traces" in summary
    page.wait_for_selector("#runs-plot-retention .js-plotly-plot")
    shot(page, "runs_open_lmms", full_page=False)
    page.wait_for_function("document.querySelectorAll('#runs-table [role=row][data-index]').length > 0")
    page.locator('#runs-table [role=gridcell][data-row="0"][data-col="2"]').click()     # no trace: question only
    page.wait_for_function("document.querySelector('#runs-message').innerText.includes('re-run')")
    assert page.input_value("#question textarea") == cell_free_question(root)
    page.close()


def cell_free_question(root) -> str:
    return runs.open_run(root).samples[0]["question"]


def test_the_runs_api_endpoint(served):
    from gradio_client import Client

    url, root = served
    out = Client(url, verbose=False).predict("", {"n": 4, "calib": 4, "methods": ["topk"], "retentions": [0.25]},
                                             api_name="/runs")
    assert out["status"] == "complete" and [k["key"] for k in out["keys"]] == ["none", "topk@0.25"]
    assert len(out["table"]) == 4 and out["folder"].startswith(str(root))
    again = Client(url, verbose=False).predict(out["folder"], None, api_name="/runs")
    assert again["keys"] == out["keys"]
