"""The MLflow UI as a user sees it: headless Chromium (Playwright) on ``mlflow server`` with two demo runs.

Opens the runs table, a run page and the compare page, and asserts what they show. Runs only where Chromium is
installed (Debian's ``chromium``; ``SEGPIPE_CHROMIUM`` names another binary); Playwright's own browser download
is not used. ``SEGPIPE_SCREENSHOTS=<folder>`` saves ``mlflow-runs.png`` and ``mlflow-compare.png`` there; the
docs' pictures come from

    SEGPIPE_SCREENSHOTS=docs/img uv run pytest -m slow tests/e2e/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from builders import free_port, wait_for_mlflow

from segpipe.cli import main

# What the pages must show. Update these with the runs' names, metric names and root-level artifacts.
RUNS = {"configs/demo.yaml": "demo-unet-d4w16-2d", "configs/fcn8s.yaml": "demo-fcn8s-w8-2d"}  # config -> run name
EXPERIMENT = "segpipe-demo"
TABLE_METRIC_COLUMNS = ["val/dice_best"]  # ticked under Columns, then headers of the runs table
RUN_PAGE_METRICS = ["val/dice", "val/dice_grey_matter", "val/loss", "train/loss"]
COMPARE_ROWS = ["network", "git.commit"]  # a param and a tag of both runs (the metric table scrolls)
ROOT_FIGURES = ["overlay_best.png", "test_boxplots.png"]  # artifact root: the compare view lists them

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("SEGPIPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHORT_FIT = ["--trainer.max_epochs", "2", "--overlays.every_n_epochs", "1"]
SHORT_FIT += ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "4"]
SHORT_FIT += ["--trainer.limit_test_batches", "4", "--data.init_args.root", str(ROOT / "data" / "demo")]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev dependency)")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite store with one short run per config of ``RUNS`` (the demo data are built on first use)."""
    workdir = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for config in RUNS:
            assert main(["fit", "--config", str(ROOT / config), *SHORT_FIT]) == 0
    yield uri


@pytest.fixture(scope="module")
def ui(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on ``store``; yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", store]
    cwd = tmp_path_factory.mktemp("ui")
    proc = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for_mlflow(address, proc)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def page(ui: str) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 2200, "height": 800})
        browser.close()


def screenshot(page: sync_api.Page, name: str) -> None:
    folder = os.environ.get("SEGPIPE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def wait_for_text(page: sync_api.Page, text: str) -> None:
    page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)


def test_runs_table_run_page_and_compare_view(store: str, ui: str, page: sync_api.Page):
    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = mlflow.search_runs([experiment], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(RUNS.values())

    # MLflow 3 opens experiments in GenAI mode; the classic runs table needs the workflow type.
    page.goto(f"{ui}/#/experiments/{experiment}?workflowType=machine_learning")
    for name in RUNS.values():
        wait_for_text(page, name)
    for metric in TABLE_METRIC_COLUMNS:
        page.get_by_role("button", name="Columns").click()
        page.get_by_placeholder("Search columns").fill(metric)
        # the column picker is a tree without ARIA roles: the node whose title is exactly the metric
        title = page.locator("[class$=tree-title]", has_text=re.compile(f"^{re.escape(metric)}$"))
        page.locator("[class*=tree-treenode]", has=title).locator("[class$=tree-checkbox]").click()
        page.keyboard.press("Escape")
        page.get_by_role("columnheader", name=metric, exact=True).first.wait_for(timeout=30_000)
    screenshot(page, "mlflow-runs.png")

    page.goto(f"{ui}/#/experiments/{experiment}/runs/{runs[0].info.run_id}")
    for metric in RUN_PAGE_METRICS:
        wait_for_text(page, metric)

    query = urllib.parse.urlencode(
        {"runs": json.dumps([r.info.run_id for r in runs]), "experiments": json.dumps([experiment])}
    )
    page.goto(f"{ui}/#/compare-runs?{query}")
    wait_for_text(page, "Artifacts")
    for figure in ROOT_FIGURES:  # the artifact section renders after the tables
        wait_for_text(page, figure)
    text = page.inner_text("body")
    for expected in [*RUNS.values(), *COMPARE_ROWS]:
        assert expected in text, f"the compare view does not show {expected!r}"
    assert ("No common artifacts to display." in text) == (not ROOT_FIGURES)
    # the Artifacts section at the top of the picture: the figures below it, side by side
    page.get_by_text("Artifacts", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    screenshot(page, "mlflow-compare.png")
